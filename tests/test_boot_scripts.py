"""User boot scripts (Opentrons' /data/boot.d rules) and feature flags."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from picofleet.common.errors import ConfigError
from picofleet.gateway.boot_scripts import run_all
from picofleet.gateway.config import load_config
from picofleet.gateway.features import Features
from tests.helpers.gateway import GatewayProcess, run_gateway_command, wait_for


def script(directory: Path, name: str, body: str, *, executable: bool = True, shebang: bool = True) -> Path:
    """Write a boot script that appends its name to ``ran`` in the boot directory, then runs ``body``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    head = "#!/bin/sh\n" if shebang else ""
    path.write_text(f'{head}echo "{name}" >> "$(dirname "$0")/ran"\n{body}\n')
    path.chmod(0o755 if executable else 0o644)
    return path


def ran(directory: Path) -> list[str]:
    marker = directory / "ran"
    return marker.read_text().split() if marker.exists() else []


@pytest.fixture
def boot_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="picofleet.boot")
    return caplog


def test_scripts_run_in_name_order_with_output_and_status_logged(
    tmp_path: Path, boot_log: pytest.LogCaptureFixture
) -> None:
    boot = tmp_path / "boot.d"
    for name in ("alpha", "20-second", "Zeta", "10-first"):
        script(boot, name, f"echo hello from {name}; echo to stderr >&2")

    results = run_all(boot, timeout=10)

    assert ran(boot) == ["10-first", "20-second", "Zeta", "alpha"]  # byte order, as run-parts
    assert [(r.name, r.status) for r in results] == [
        ("10-first", 0),
        ("20-second", 0),
        ("Zeta", 0),
        ("alpha", 0),
    ]
    assert "boot.d/10-first: hello from 10-first" in boot_log.text
    assert "boot.d/10-first: to stderr" in boot_log.text
    assert "boot script alpha exited 0" in boot_log.text


def test_each_skip_rule(tmp_path: Path, boot_log: pytest.LogCaptureFixture) -> None:
    boot = tmp_path / "boot.d"
    script(boot, "setup.sh", "")  # a dot in the name
    script(boot, ".hidden", "")
    script(boot, "backup~", "")
    script(boot, "not-executable", "", executable=False)
    script(boot, "no-shebang", "", shebang=False)
    (boot / "a-directory").mkdir()
    script(boot, "runs", "")

    results = {result.name: result for result in run_all(boot, timeout=10)}

    assert ran(boot) == ["runs"]
    name_rule = "its name has characters other than letters, digits, - and _"
    assert results["setup.sh"].skipped == name_rule
    assert results[".hidden"].skipped == name_rule
    assert results["backup~"].skipped == name_rule
    assert results["not-executable"].skipped == "not executable (chmod +x)"
    assert results["no-shebang"].skipped == "does not start with a shebang line (#!)"
    assert results["a-directory"].skipped == "not a regular file"
    assert results["runs"].skipped is None and results["runs"].status == 0
    assert "boot script setup.sh skipped: its name has characters other than" in boot_log.text


def test_a_failing_and_a_hanging_script_do_not_stop_the_others(
    tmp_path: Path, boot_log: pytest.LogCaptureFixture
) -> None:
    boot = tmp_path / "boot.d"
    script(boot, "10-fails", "echo boom >&2; exit 3")
    # the hanging script's own child is stopped with it (its process group)
    script(boot, "20-hangs", 'sleep 60 & echo $! > "$(dirname "$0")/child"; echo started; wait')
    script(boot, "30-after", "echo still here")

    results = {result.name: result for result in run_all(boot, timeout=1)}

    assert ran(boot) == ["10-fails", "20-hangs", "30-after"]
    assert results["10-fails"].status == 3
    assert results["20-hangs"].timed_out
    assert results["30-after"].status == 0
    child = int((boot / "child").read_text())
    wait_for(lambda: not _running(child), 5, "the hanging script's child to be stopped")
    text = boot_log.text
    assert "boot.d/10-fails: boom" in text
    assert "boot script 10-fails failed with exit status 3" in text
    assert "boot.d/20-hangs: started" in text
    assert "boot script 20-hangs did not finish within 1 s: stopped; the gateway starts anyway" in text
    assert "boot.d/30-after: still here" in text


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_missing_directory_is_no_error(tmp_path: Path, boot_log: pytest.LogCaptureFixture) -> None:
    assert run_all(tmp_path / "nothing", timeout=1) == []
    assert "no boot scripts" in boot_log.text


def test_the_gateway_runs_them_at_start_and_starts_whatever_they_do(tmp_path: Path) -> None:
    data = tmp_path / "data"
    boot = tmp_path / "elsewhere"
    script(boot, "00-fails", "exit 1")
    script(boot, "10-hangs", "sleep 60")
    script(boot, "20-works", "echo configured")
    env = {"PICOFLEET_BOOT_DIR": str(boot), "PICOFLEET_BOOT_SCRIPT_TIMEOUT": "1"}
    gateway = GatewayProcess(data, env=env).start()
    try:
        assert gateway.get("/v1/enm/status").status_code == 200
        log = gateway.output()
        assert ran(boot) == ["00-fails", "10-hangs", "20-works"]
        assert "boot script 00-fails failed with exit status 1" in log
        assert "boot script 10-hangs did not finish within 1 s" in log
        assert "boot.d/20-works: configured" in log
        # the scripts ran before the gateway listened
        assert log.index("boot.d/20-works: configured") < log.index("listening on")
    finally:
        gateway.stop()


def test_boot_dir_defaults_to_the_data_directory(tmp_path: Path) -> None:
    config = load_config({"data": str(tmp_path)}, {})
    assert config.boot_dir == tmp_path / "boot.d"
    assert config.boot_script_timeout == 30
    assert load_config({}, {"PICOFLEET_BOOT_DIR": "/srv/boot"}).boot_dir == Path("/srv/boot")
    with pytest.raises(ConfigError, match="invalid boot_script_timeout"):
        load_config({}, {"PICOFLEET_BOOT_SCRIPT_TIMEOUT": "0"})


# -- feature flags ----------------------------------------------------------------------------------


def test_feature_flags_are_off_unless_switched_on(caplog: pytest.LogCaptureFixture) -> None:
    assert "IDENTIFY_BOARDS" not in Features.from_environ({})
    for word in ("1", "true", "YES", "on"):
        assert "IDENTIFY_BOARDS" in Features.from_environ({"PICOFLEET_FEATURE_IDENTIFY_BOARDS": word})
    for word in ("0", "false", "no", "off", ""):
        assert "IDENTIFY_BOARDS" not in Features.from_environ({"PICOFLEET_FEATURE_IDENTIFY_BOARDS": word})
    with pytest.raises(ConfigError, match="invalid PICOFLEET_FEATURE_IDENTIFY_BOARDS 'maybe'"):
        Features.from_environ({"PICOFLEET_FEATURE_IDENTIFY_BOARDS": "maybe"})
    with caplog.at_level(logging.WARNING):
        assert not Features.from_environ({"PICOFLEET_FEATURE_TYPO": "1"}).on
    assert "unknown feature flag PICOFLEET_FEATURE_TYPO ignored" in caplog.text


def test_an_invalid_flag_value_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    result = run_gateway_command(tmp_path, "--port", "0", env={"PICOFLEET_FEATURE_IDENTIFY_BOARDS": "maybe"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "picofleet gateway: invalid PICOFLEET_FEATURE_IDENTIFY_BOARDS 'maybe': "
        "must be 1/true/yes/on or 0/false/no/off"
    ]
