"""Issue #13, item 6: files holding secrets are private, and the provisioning key need not be a flag.

A real fleet service and a real gateway process: the gateway is provisioned with the key from a
file (so it is not in ``ps``), and afterwards its database (which holds its key at the fleet), the
database's backup and the fleet's database are readable by their owner only. A database directory
every user may write in stops the gateway with one line.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from picofleet.common.store import Store
from picofleet.fleet.service import load_admin_token
from tests.helpers.fleet import FleetProcess
from tests.helpers.gateway import GatewayProcess, idle_boards, run_gateway_command, wait_for

pytestmark = pytest.mark.timeout(120)


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def test_a_key_file_provisions_and_the_secrets_stay_private(fleet: FleetProcess, tmp_path: Path) -> None:
    key = fleet.create_fleet("lab")["provisioning_key"]
    key_file = tmp_path / "provisioning-key"
    key_file.write_text(f"  {key}\n")
    key_file.chmod(0o600)
    gateway = GatewayProcess(
        tmp_path / "gw", "--simulate", "1", "--fleet", fleet.url, "--provisioning-key-file", str(key_file)
    ).start()
    try:
        idle_boards(gateway, 1)
        gateways = wait_for(
            lambda: fleet.request("GET", "/v1/fleets/lab/gateways").json(), 30, "the gateway provisioned"
        )
        assert len(gateways) == 1
        command_line = Path(f"/proc/{gateway.pid}/cmdline").read_bytes().decode()
        assert key not in command_line  # what `ps` shows
    finally:
        assert gateway.stop() == 0, gateway.output()
    database = tmp_path / "gw" / "database"
    assert (database / "enm.db").exists() and (database / "enm.db.bak").exists()
    assert mode(database / "enm.db") == 0o600
    assert mode(database / "enm.db.bak") == 0o600
    assert mode(database) == 0o700  # created by the gateway, for its owner only
    assert mode(fleet.data / "fleet.db") == 0o600


def test_a_database_found_open_to_others_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "db" / "enm.db"

    async def write_twice() -> None:
        async with Store(path) as store:
            await store.set_value("a", 1)
            await store.set_value("a", 2)

    asyncio.run(write_twice())
    for name in ("enm.db", "enm.db.bak"):  # as an older version left them
        (path.parent / name).chmod(0o644)
    asyncio.run(write_twice())
    assert mode(path) == 0o600 and mode(path.with_name("enm.db.bak")) == 0o600


def test_a_world_writable_database_directory_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "data" / "database"
    database.mkdir(parents=True)
    database.chmod(0o777)
    result = run_gateway_command(tmp_path / "data", "--port", "0", "--host", "127.0.0.1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "writable by every user (mode 0777)" in lines[0], result.stderr
    assert f"chmod o-w {database}" in lines[0]
    assert not list(database.iterdir())  # nothing written


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--provisioning-key-file", "/nonexistent/key"], {}, "cannot read provisioning_key_file"),
        (["--provisioning-key-file", "{empty}"], {}, "must hold the key alone, on one line"),
        (
            ["--provisioning-key-file", "{key}"],
            {"PICOFLEET_PROVISIONING_KEY": "k"},
            "both give the provisioning key",
        ),
    ],
)
def test_key_file_problems_stop_the_gateway_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "key").write_text("k\n")
    args = [arg.format(empty=tmp_path / "empty", key=tmp_path / "key") for arg in args]
    result = run_gateway_command(
        tmp_path / "data", "--fleet", "http://127.0.0.1:9", *args, env={**env, "PYTHONWARNINGS": "ignore"}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "data")  # refused before anything was created


def test_the_fleet_admin_token_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PICOFLEET_ADMIN_TOKEN", raising=False)
    token_file = tmp_path / "admin-token"
    token_file.write_text("")  # an empty file someone left, with the usual 0644
    token_file.chmod(0o644)
    token = load_admin_token(tmp_path)
    assert token_file.read_text() == token + "\n" and mode(token_file) == 0o600
    token_file.chmod(0o644)  # an older token file
    assert load_admin_token(tmp_path) == token and mode(token_file) == 0o600
