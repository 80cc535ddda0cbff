"""balena's update lock: held while a board is flashed or evaluates, released after (and when
paused), stale locks reported.

The "supervisor" here is the test itself, taking the lock the way balena's supervisor does:
``O_CREAT|O_EXCL`` on the lock file. ENM_LOCK_FILE_LOCATION points the gateway at a lock in the
test's directory (the default paths exist only in a balena container).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from picofleet.gateway.config import load_config
from picofleet.gateway.models import BoardError
from picofleet.supervisor_bridge import update_lock
from picofleet.supervisor_bridge.update_lock import BalenaUpdateLock, inspect, lock_paths
from tests.helpers.boards import app_uf2
from tests.helpers.fpga import session_counter
from tests.helpers.gateway import GatewayProcess, idle_boards, wait_for
from tests.test_evaluations import reserve, stream_evaluation, upload, variant

OCTETS = {"Content-Type": "application/octet-stream"}


def supervisor_takes(lock: Path) -> bool:
    """Take the lock as balena's supervisor does; ``False`` if someone holds it."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def device(gateway: GatewayProcess, serial: str) -> dict:
    return gateway.get(f"/v1/devices/{serial}").json()


def first_board(gateway: GatewayProcess) -> str:
    devices = idle_boards(gateway, 1)
    return devices[0]["LocalUUID"]


def flash(gateway: GatewayProcess, serial: str, version: str, commit: str) -> None:
    image = app_uf2(version, size=256 * 1024)
    url = f"{gateway.url}/v1/devices/{serial}/flash?commit={commit}"
    assert httpx.post(url, content=image, headers=OCTETS, timeout=30).status_code == 202


def flashing(gateway: GatewayProcess, serial: str) -> bool:
    return device(gateway, serial)["Status"] in ("Installing", "Flashing", "Starting")


def flashed(gateway: GatewayProcess, serial: str, commit: str) -> dict | None:
    record = device(gateway, serial)
    return record if record["Commit"] == commit and record["Status"] == "Idle" else None


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    """Where the gateway under test takes its lock (the directory does not exist yet)."""
    return tmp_path / "balena" / "updates.lock"


def evaluating_gateway(
    gateway_factory: Any, lock: Path, tmp_path_factory: pytest.TempPathFactory, bitstreams: int
) -> tuple[GatewayProcess, str, dict[str, Any]]:
    """A timing-model gateway whose one board is reserved by alice and ready (the lock free), and
    the body of an evaluation of ``bitstreams`` stored bitstreams: gateway, alice's token, body.

    The reservation's window is 2 s: an evaluation counts long enough to be caught at it."""
    gateway = gateway_factory(
        "--simulate", "1", env={"ENM_LOCK_FILE_LOCATION": str(lock), "PICOFLEET_SIM_FPGA": "timing"}
    )
    first_board(gateway)
    packed = session_counter(tmp_path_factory, 16).bin.read_bytes()
    token, _ = reserve(gateway, "alice", 1, {"clock_hz": 1_000_000, "window_ms": 2000})
    shas = [upload(gateway, variant(packed, index)) for index in range(bitstreams)]
    # the flash of the evaluation firmware took the lock and gave it back: from now on only
    # an evaluation takes it
    wait_for(lambda: not lock.exists(), 10, "the lock released after the evaluation firmware's flash")
    return gateway, token, {"name": "alice", "bitstreams": [{"sha256": sha} for sha in shas]}


@contextlib.contextmanager
def streaming(
    gateway: GatewayProcess, token: str, body: dict[str, Any], on_line: Callable[[dict], None] | None = None
) -> Iterator[Future[list[dict]]]:
    """The evaluation's NDJSON lines, streamed in a thread; a failure meanwhile stops the gateway
    (which ends the stream) rather than wait for the stream's own timeout."""
    with ThreadPoolExecutor(1) as pool:
        lines = pool.submit(stream_evaluation, gateway, token, body, on_line)
        try:
            yield lines
        except BaseException:
            gateway.stop()
            raise


def held_by_the_gateway(gateway: GatewayProcess, lock: Path) -> None:
    assert not supervisor_takes(lock)  # the supervisor cannot kill the gateway now
    holder = json.loads(lock.read_text())
    assert (holder["holder"], holder["pid"]) == ("picofleet-gateway", gateway.pid)


@pytest.mark.timeout(300)
def test_the_supervisor_cannot_take_the_lock_while_a_board_evaluates(
    gateway_factory, lock: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    gateway, token, body = evaluating_gateway(gateway_factory, lock, tmp_path_factory, bitstreams=1)
    with streaming(gateway, token, body) as lines:
        wait_for(lock.exists, 15, "the lock taken for the evaluation", interval=0.005)
        held_by_the_gateway(gateway, lock)
        assert not lines.done()  # still counting its 2 s window: the lock is the evaluation's
        *results, summary = lines.result(timeout=60)
    assert summary["done"] and summary["failed"] == 0 and isinstance(results[0]["pulses"], int), results
    wait_for(lambda: not lock.exists(), 5, "the lock released once the evaluation ended")
    assert supervisor_takes(lock)


def test_the_supervisor_cannot_take_the_lock_during_a_flash_and_can_right_after(
    gateway_factory, lock: Path
) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"ENM_LOCK_FILE_LOCATION": str(lock)})
    serial = first_board(gateway)
    assert not lock.exists()  # not held while nothing is flashed

    flash(gateway, serial, "2.0.0", "c1")
    wait_for(lambda: flashing(gateway, serial), 10, "the flash to start", interval=0.005)
    held_by_the_gateway(gateway, lock)

    wait_for(lambda: flashed(gateway, serial, "c1"), 30, "the flash to finish")
    wait_for(lambda: supervisor_takes(lock), 5, "the lock to be free right after the flash")
    lock.unlink()  # the supervisor updates, then releases it
    assert "took the balena update lock" in gateway.output()
    assert "released the balena update lock" in gateway.output()


def test_a_lock_the_supervisor_holds_keeps_the_flash_back(gateway_factory, lock: Path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"ENM_LOCK_FILE_LOCATION": str(lock)})
    serial = first_board(gateway)
    lock.parent.mkdir(parents=True, exist_ok=True)
    assert supervisor_takes(lock)  # the supervisor is about to update the service

    flash(gateway, serial, "2.0.0", "held")
    broken = wait_for(
        lambda: (d := device(gateway, serial))["Status"] == "Broken" and d, 20, "the flash to be refused"
    )
    assert "is held by another process" in broken["StatusReason"]
    assert broken["FirmwareVersion"] == "picofleet-app 1.0.0"  # never touched
    assert lock.exists() and lock.read_text() == ""  # the supervisor's lock is left alone

    lock.unlink()  # the supervisor is done
    flash(gateway, serial, "2.0.0", "free")
    wait_for(lambda: flashed(gateway, serial, "free"), 30, "the flash once the lock is free")
    wait_for(lambda: not lock.exists(), 5, "the lock released")


def test_the_lock_is_a_plugin_and_disabling_it_takes_no_lock(gateway_factory, lock: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"ENM_LOCK_FILE_LOCATION": str(lock), "PICOFLEET_DISABLE_PLUGINS": "balena_update_lock"}
    gateway = gateway_factory("--simulate", "1", env=env)
    serial = first_board(gateway)
    lock.parent.mkdir(parents=True, exist_ok=True)
    assert supervisor_takes(lock)  # the supervisor's lock: a flash would wait for it, were it taken

    flash(gateway, serial, "2.0.0", "unlocked")
    wait_for(lambda: flashed(gateway, serial, "unlocked"), 30, "the flash without the update lock")
    assert lock.read_text() == ""  # still the supervisor's, never looked at
    assert gateway.get("/v1/enm/supervisor").json()["updateLock"]["enabled"] is False
    output = gateway.output()
    assert "plugin balena_update_lock is disabled by PICOFLEET_DISABLE_PLUGINS" in output
    assert "balena update lock" not in output


@pytest.mark.timeout(300)
def test_pause_releases_the_lock_an_evaluation_holds(
    gateway_factory, lock: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:  # type: ignore[no-untyped-def]
    gateway, token, body = evaluating_gateway(gateway_factory, lock, tmp_path_factory, bitstreams=3)
    arrived: list[dict[str, Any]] = []
    with streaming(gateway, token, body, arrived.append) as lines:
        wait_for(lock.exists, 15, "the lock taken for the evaluation", interval=0.005)
        held_by_the_gateway(gateway, lock)
        assert gateway.put("/v1/enm/status", json={"targetStatus": "Paused"}).status_code == 200
        wait_for(lambda: gateway.get("/v1/enm/status").json()["currentStatus"] == "Paused", 30, "Paused")
        assert not lock.exists()  # paused: the supervisor may update the gateway now
        # though the evaluation is not over: the bitstream counting finished, the others wait
        evaluation = wait_for(lambda: arrived, 5, "the first result")[0]["evaluation"]
        auth = {"Authorization": f"Bearer {token}"}
        state = gateway.get(f"/v1/evaluations/{evaluation}", headers=auth).json()
        assert not state["done"] and len(state["results"]) == 1, state
        assert supervisor_takes(lock)
        lock.unlink()  # the supervisor is done

        assert gateway.put("/v1/enm/status", json={"targetStatus": "Running"}).status_code == 200
        *results, summary = lines.result(timeout=120)
    assert summary == {**summary, "done": True, "results": 3, "failed": 0}, results
    wait_for(lambda: not lock.exists(), 5, "the lock released once the evaluation ended")


def test_shutdown_mid_flash_releases_the_lock(gateway_factory, lock: Path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_factory("--simulate", "1", env={"ENM_LOCK_FILE_LOCATION": str(lock)})
    serial = first_board(gateway)

    flash(gateway, serial, "3.0.0", "p2")
    wait_for(lambda: flashing(gateway, serial), 10, "the flash to start", interval=0.005)
    assert lock.exists()
    assert gateway.stop() == 0  # SIGTERM mid-flash
    assert not lock.exists()


def test_kill_9_while_holding_the_lock_and_the_next_start_reports_it(tmp_path: Path, lock: Path) -> None:
    data = tmp_path / "data"
    env = {"ENM_LOCK_FILE_LOCATION": str(lock)}
    first = GatewayProcess(data, "--simulate", "1", env=env).start()
    try:
        serial = first_board(first)
        flash(first, serial, "2.0.0", "k1")
        wait_for(lambda: flashing(first, serial), 10, "the flash to start", interval=0.005)
        dead_pid = first.pid
    finally:
        first.kill()
    assert json.loads(lock.read_text())["pid"] == dead_pid  # left behind

    second = GatewayProcess(data, "--simulate", "1", env=env).start()
    try:
        log = second.output()
        assert f"stale balena update lock {lock}: left by picofleet gateway pid {dead_pid}" in log
        assert "remove it, or set BALENA_SUPERVISOR_OVERRIDE_LOCK=1" in log
        state = second.get("/v1/enm/supervisor").json()["updateLock"]
        assert state["files"] == [{"path": str(lock), "state": "stale", "pid": dead_pid}]
        # the flash pending at the kill resumes, and refuses to run under the stale lock
        broken = wait_for(
            lambda: (d := device(second, serial))["Status"] == "Broken" and d, 30, "the resumed flash"
        )
        assert "stale balena update lock" in broken["StatusReason"]
        assert json.loads(lock.read_text())["pid"] == dead_pid  # reported, not deleted
    finally:
        second.stop()

    third = GatewayProcess(
        data, "--simulate", "1", env={**env, "BALENA_SUPERVISOR_OVERRIDE_LOCK": "1"}
    ).start()
    try:
        assert "removed (BALENA_SUPERVISOR_OVERRIDE_LOCK=1)" in third.output()
        assert not lock.exists()
        flash(third, serial, "2.0.0", "k2")
        wait_for(lambda: flashed(third, serial, "k2"), 30, "a flash after the override")
        wait_for(lambda: not lock.exists(), 5, "the lock released")
    finally:
        third.stop()


STOP_FAILS = """\
import os, sys
from pathlib import Path
from picofleet.cli import main
from picofleet.gateway.boards.manager import DeviceManager
from picofleet.supervisor_bridge import update_lock

async def stop_failing(self):
    lock = Path(os.environ["ENM_LOCK_FILE_LOCATION"])
    update_lock.BalenaUpdateLock([(lock, True)], override=False).__enter__()  # a flash cut off: still held
    raise RuntimeError("stopping the boards failed")

DeviceManager.stop = stop_failing
sys.exit(main(sys.argv[sys.argv.index("picofleet.cli") + 1 :]))
"""


def test_the_lock_is_released_at_shutdown_even_when_stopping_the_boards_fails(
    tmp_path: Path, lock: Path
) -> None:
    script = tmp_path / "stop_fails.py"
    script.write_text(STOP_FAILS)
    gateway = GatewayProcess(
        tmp_path / "data", env={"ENM_LOCK_FILE_LOCATION": str(lock)}, wrapper=[sys.executable, str(script)]
    ).start()
    assert gateway.stop() != 0
    assert "stopping the boards failed" in gateway.output()
    assert not lock.exists()  # the supervisor may update the device
    assert supervisor_takes(lock)


KILLED_WHILE_TAKING = """\
import os, sys
from pathlib import Path
from picofleet.supervisor_bridge import update_lock

def killed(*args, **kwargs):
    os._exit(9)  # the gateway dies between creating a file and writing into it

os.fdopen = killed
update_lock.BalenaUpdateLock([(Path(sys.argv[1]), True)], override=False).__enter__()
"""


def test_a_gateway_killed_while_taking_the_lock_leaves_no_lock(tmp_path: Path, lock: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_TAKING, str(lock)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 9, done.stderr
    assert not lock.exists()  # never an empty lock file that blocks the device
    assert supervisor_takes(lock)


def test_an_empty_lock_is_the_supervisors_however_old(tmp_path: Path, lock: Path) -> None:
    lock.parent.mkdir(parents=True)
    lock.touch()  # the supervisor's lock: empty, held for as long as its update takes
    long_ago = time.time() - 3600
    os.utime(lock, (long_ago, long_ago))
    assert inspect(lock).state == "held"
    config = load_config({"data": str(tmp_path / "data"), "lock_file_location": str(lock)}, environ={})
    assert update_lock.check_at_start(config, environ={"BALENA_SUPERVISOR_OVERRIDE_LOCK": "1"}) == []
    assert lock.exists()  # never removed by the gateway, not even with the override


# -- the lock on its own ---------------------------------------------------------------------------


def test_default_paths_are_taken_where_their_directories_exist(tmp_path: Path) -> None:
    default, legacy = tmp_path / "balena" / "updates.lock", tmp_path / "resin" / "resin-updates.lock"
    assert lock_paths(default, default=default, legacy=legacy) == []  # not on balena: no lock
    default.parent.mkdir()
    assert lock_paths(default, default=default, legacy=legacy) == [(default, False)]
    legacy.parent.mkdir()
    assert lock_paths(default, default=default, legacy=legacy) == [(default, False), (legacy, False)]
    elsewhere = tmp_path / "mine" / "x.lock"
    assert lock_paths(elsewhere, default=default, legacy=legacy) == [(elsewhere, True)]


def test_both_locks_are_held_and_a_failure_leaves_none(tmp_path: Path) -> None:
    first, second = tmp_path / "a.lock", tmp_path / "b.lock"
    with BalenaUpdateLock([(first, False), (second, False)], override=False):
        assert first.exists() and second.exists()
        assert not supervisor_takes(first) and not supervisor_takes(second)
    assert not first.exists() and not second.exists()

    assert supervisor_takes(second)
    with (
        pytest.raises(BoardError, match="is held by another process"),
        BalenaUpdateLock([(first, False), (second, False)], override=False, wait=0.2),
    ):
        pass
    assert not first.exists()  # the first was given back when the second could not be taken


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_locks_are_told_from_live_ones(tmp_path: Path) -> None:
    path = tmp_path / "updates.lock"
    base = {"holder": "picofleet-gateway", "boot": None, "since": "then", "token": "t"}

    path.write_text(json.dumps({**base, "pid": _dead_pid(), "started": None}))
    assert inspect(path).state == "stale"
    path.write_text(json.dumps({**base, "pid": os.getpid(), "started": 1}))  # a reused pid
    assert inspect(path).state == "stale"
    path.write_text(json.dumps({**base, "pid": os.getpid(), "started": None, "boot": "another-boot"}))
    assert inspect(path).state == "stale"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        started = update_lock._process(live.pid)
        assert started is not None
        path.write_text(json.dumps({**base, "pid": live.pid, "started": started[1]}))
        assert inspect(path).state == "held"
        live.kill()
    path.write_text("")
    assert inspect(path).state == "held"  # the supervisor's own lock: nobody to check
    path.unlink()
    assert inspect(path).state == "free"


def test_a_stale_lock_is_refused_unless_overridden(tmp_path: Path) -> None:
    path = tmp_path / "updates.lock"
    stale = {"holder": "picofleet-gateway", "pid": _dead_pid(), "since": "then", "token": "t"}
    path.write_text(json.dumps(stale))
    refused = pytest.raises(
        BoardError, match=r"stale balena update lock .* BALENA_SUPERVISOR_OVERRIDE_LOCK=1"
    )
    with refused, BalenaUpdateLock([(path, False)], override=False):
        pass
    assert json.loads(path.read_text())["pid"] == stale["pid"]
    with BalenaUpdateLock([(path, False)], override=True):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_a_lock_replaced_while_held_is_left_in_place(tmp_path: Path) -> None:
    path = tmp_path / "updates.lock"
    with BalenaUpdateLock([(path, False)], override=False):
        path.unlink()
        assert supervisor_takes(path)  # someone overrode us and took it
    assert path.exists() and path.read_text() == ""
