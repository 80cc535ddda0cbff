"""`picofleet evaluate` on its own: usage errors, bad files and an unreachable gateway.

Each of these ends before any board is touched; the runs against a real gateway are in
tests/test_evaluation_e2e.py.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from picofleet import cli
from picofleet.client import EvaluationResult, PulseCountClient
from picofleet.commands import evaluate as evaluate_command
from picofleet.commands.evaluate import ResultView
from tests.helpers.boards import app_uf2
from tests.helpers.fpga import FpgaBuild

CLOSED_PORT_URL = "http://127.0.0.1:9"  # discard port: nothing listens


def evaluate_cli(*args: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `picofleet evaluate ARGS` as a user would, remembering tokens under ``tmp_path``."""
    env = {"PICOFLEET_TOKENS": str(tmp_path / "tokens.json"), "PICOFLEET_NAME": "tester"}
    return subprocess.run(
        [sys.executable, "-m", "picofleet.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("picofleet evaluate: ")
    return lines[0].removeprefix("picofleet evaluate: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--boards", "0"], "argument --boards: must be at least 1, not 0"),
        (["--boards", "two"], "argument --boards: 'two' is not a whole number"),
        (["--arg", "clock_hz"], "argument --arg: 'clock_hz' is not KEY=VALUE"),
        (["--arg", "clock_hz=fast"], "argument --arg: clock_hz: 'fast' is not a whole number"),
        (["--arg", "window_ms=0"], "argument --arg: window_ms must be a whole number from 1 to 60000, not 0"),
        (["--arg", "clock_hz=50000001"], "clock_hz must be a whole number from 1 to 50000000"),
        (["--arg", "voltage=3"], "argument --arg: unknown argument 'voltage' (known: clock_hz, window_ms)"),
        (["--mode", "all"], "argument --mode: invalid choice: 'all'"),
        (["--ready-timeout", "0"], "argument --ready-timeout: must be positive, not 0"),
    ],
)
def test_usage_errors_exit_2_naming_the_argument(args: list[str], message: str, tmp_path: Path) -> None:
    done = evaluate_cli("--gateway", CLOSED_PORT_URL, *args, "a.asc", tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.splitlines()[-1]


def test_no_file_is_a_usage_error(tmp_path: Path) -> None:
    done = evaluate_cli("--gateway", CLOSED_PORT_URL, tmp_path=tmp_path)
    assert done.returncode == 2
    assert "the following arguments are required: FILE" in done.stderr


def test_a_missing_file_is_named_before_the_gateway_is_asked(tmp_path: Path) -> None:
    reason = one_line_error(evaluate_cli("--gateway", CLOSED_PORT_URL, "missing.asc", tmp_path=tmp_path))
    assert reason == "missing.asc: No such file or directory"


def test_files_that_are_not_bitstreams_are_refused_locally(tmp_path: Path) -> None:
    firmware, text = tmp_path / "app.uf2", tmp_path / "notes.txt"
    firmware.write_bytes(app_uf2("1.0.0"))
    text.write_text("hello\n")
    reason = one_line_error(evaluate_cli("--gateway", CLOSED_PORT_URL, str(firmware), tmp_path=tmp_path))
    assert reason == f"{firmware} is a UF2 firmware image, not an iCE40 bitstream"
    reason = one_line_error(evaluate_cli("--gateway", CLOSED_PORT_URL, str(text), tmp_path=tmp_path))
    assert reason.startswith(f"{text} is not a valid iCE40 bitstream: ")


def test_a_truncated_bitstream_is_refused_naming_the_problem(counter: FpgaBuild, tmp_path: Path) -> None:
    cut = tmp_path / "cut.bin"
    cut.write_bytes(counter.bin.read_bytes()[:50_000])
    good = str(counter.asc)
    reason = one_line_error(evaluate_cli("--gateway", CLOSED_PORT_URL, good, str(cut), tmp_path=tmp_path))
    assert reason.startswith(f"{cut} is not a valid iCE40 bitstream: ")


def test_an_unreachable_gateway_is_one_line_and_exit_1(counter: FpgaBuild, tmp_path: Path) -> None:
    reason = one_line_error(evaluate_cli("--gateway", CLOSED_PORT_URL, str(counter.asc), tmp_path=tmp_path))
    assert reason.startswith(f"cannot reach the gateway at {CLOSED_PORT_URL}: ")


def test_ctrl_c_exits_130_even_when_the_gateway_is_gone_by_then(
    counter: FpgaBuild, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.url.path == "/v1/reservations":
            raise KeyboardInterrupt  # Ctrl-C while reserving
        raise httpx.ConnectError("connection refused", request=request)  # and the gateway went away

    transport = httpx.MockTransport(gateway)
    monkeypatch.setattr(
        evaluate_command,
        "PulseCountClient",
        functools.partial(PulseCountClient, token_store=None, transport=transport),
    )
    options = ["--gateway", "http://gateway.test", "--name", "tester", "--token", "rt"]
    status = cli.main(["evaluate", *options, str(counter.bin)])
    assert status == 130
    assert asked == ["POST /v1/reservations", "POST /v1/reservations/end"]  # it tried to end them
    assert "the reservations were not ended: cannot reach the gateway" in capsys.readouterr().err


def result(serial: str, label: str, pulses: int | None, error: str | None = None) -> EvaluationResult:
    return EvaluationResult(serial, "ab" * 32, label, pulses, error)


def test_json_lines_are_written_as_results_arrive() -> None:
    out = io.StringIO()
    view = ResultView(out, json_lines=True, tty=True, expected=2)
    view.say("not shown with --json")
    view.add(result("S1", "a.asc", 625))
    assert json.loads(out.getvalue()) == {"serial": "S1", "file": "a.asc", "sha256": "ab" * 32, "pulses": 625}
    view.add(result("S2", "a.asc", None, "board lost"))
    view.finish(["a.asc"])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[1] == {"serial": "S2", "file": "a.asc", "sha256": "ab" * 32, "error": "board lost"}
    assert len(lines) == 2


def test_the_table_groups_results_by_file_in_command_line_order() -> None:
    out = io.StringIO()
    view = ResultView(out, json_lines=False, tty=False, expected=4)
    for item in (
        result("S2", "b.asc", 2500),
        result("S1", "a.asc", 625),
        result("S1", "b.asc", None, "did not settle"),
        result("S2", "a.asc", 625),
    ):
        view.add(item)
    assert out.getvalue() == ""  # not a terminal: nothing until the table
    view.finish(["a.asc", "b.asc"])
    assert out.getvalue().splitlines() == [
        "FILE   BOARD  PULSES",
        "a.asc  S1     625",
        "a.asc  S2     625",
        "b.asc  S1     error: did not settle",
        "b.asc  S2     2500",
    ]


def test_a_terminal_sees_a_progress_bar_then_the_table() -> None:
    out = io.StringIO()
    view = ResultView(out, json_lines=False, tty=True, expected=2)
    view.add(result("S1", "a.asc", 625))
    assert out.getvalue().endswith("] 1/2 results")
    view.add(result("S2", "a.asc", None, "lost"))
    assert out.getvalue().endswith("] 2/2 results, 1 failed")
    view.finish(["a.asc"])
    assert out.getvalue().splitlines()[-1] == "a.asc  S2     error: lost"
