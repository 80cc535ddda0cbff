"""User boot scripts: what an operator wants done on the device each time the gateway starts.

The rules are Opentrons' for ``/data/boot.d`` on their resinOS robots. The directory is
``PICOFLEET_BOOT_DIR`` (default ``<data>/boot.d``, so ``/data/boot.d`` on balena, where ``/data``
survives updates). A file there runs when

* its name has only letters, digits, ``-`` and ``_`` (no dots: ``foo.sh``, ``.hidden``, ``x~`` and
  editor leftovers are skipped),
* it is a regular file and executable, and
* it starts with a shebang line (``#!``).

Scripts run one at a time, in the order of their names (byte order, as ``run-parts`` and
``ls`` in the C locale: ``00-wifi`` before ``10-certs`` before ``Zeta`` before ``alpha``), before
the gateway opens its API or touches a board, so that a script can prepare what the gateway and
the boards need. Each script gets ``PICOFLEET_BOOT_SCRIPT_TIMEOUT`` seconds; one still running
then is stopped (SIGTERM to its process group, SIGKILL 2 s later), so the API starts at the
latest after ``scripts × (timeout + 2 s)``. Every line a script prints
(stdout and stderr) is logged with its name, then how it ended. A script that fails, hangs or
cannot start never stops the gateway. Output of a process a script leaves running in the
background keeps being logged under the script's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("picofleet.boot")

NAME = re.compile(r"[A-Za-z0-9_-]+")
KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL for a script past its timeout."""
DRAIN = 0.5
"""Seconds to wait, once a script ended, for the rest of its output."""
LINE_MAX = 2000


@dataclass(frozen=True)
class Result:
    """How one boot script ended: its exit status (negative: killed by that signal), or why not run."""

    name: str
    status: int | None
    seconds: float
    timed_out: bool = False
    skipped: str | None = None


def why_skipped(path: Path) -> str | None:
    """The reason a file in the boot directory is not run, or ``None`` if it is run."""
    if not NAME.fullmatch(path.name):
        return "its name has characters other than letters, digits, - and _"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.X_OK):
        return "not executable (chmod +x)"
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"#!":
                return "does not start with a shebang line (#!)"
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    return None


def _log_output(name: str, stream: IO[bytes]) -> None:
    """Log every line of a script's output with its name (a worker thread; ends at EOF)."""
    with stream:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                log.info("boot.d/%s: %s", name, line[:LINE_MAX])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the script's process group, SIGKILL it after KILL_GRACE, reap the script."""
    for signum, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_script(path: Path, timeout: float) -> Result:
    """Run one boot script to its end or its timeout, logging its output (blocking)."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [str(path)],
            cwd=path.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops its children too
        )
    except OSError as error:
        log.error("boot script %s could not start: %s", path.name, error.strerror or error)
        return Result(path.name, None, 0.0, skipped=f"could not start: {error.strerror or error}")
    assert process.stdout is not None
    reader = threading.Thread(
        target=_log_output, args=(path.name, process.stdout), name=f"boot:{path.name}", daemon=True
    )
    reader.start()
    timed_out = False
    try:
        status = process.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(process)
        status = process.returncode
    reader.join(DRAIN)
    seconds = time.monotonic() - started
    if timed_out:
        log.error(
            "boot script %s did not finish within %g s: stopped; the gateway starts anyway",
            path.name,
            timeout,
        )
    elif status == 0:
        log.info("boot script %s exited 0 (%.1f s)", path.name, seconds)
    elif status is not None and status < 0:
        log.warning(
            "boot script %s was killed by signal %d (%.1f s); the gateway starts anyway",
            path.name,
            -status,
            seconds,
        )
    else:
        log.warning(
            "boot script %s failed with exit status %s (%.1f s); the gateway starts anyway",
            path.name,
            status,
            seconds,
        )
    return Result(path.name, status, seconds, timed_out=timed_out)


def run_all(directory: Path, timeout: float) -> list[Result]:
    """Run the boot scripts of ``directory`` in order; skipped files are logged and listed (blocking)."""
    if not directory.exists():
        log.info("no boot scripts (%s does not exist)", directory)
        return []
    if not directory.is_dir():
        log.warning("boot scripts: %s is not a directory; none run", directory)
        return []
    try:
        entries = sorted(directory.iterdir(), key=lambda path: path.name.encode("utf-8", "surrogateescape"))
    except OSError as error:
        log.warning("boot scripts: cannot list %s: %s; none run", directory, error.strerror)
        return []
    results: list[Result] = []
    for path in entries:
        reason = why_skipped(path)
        if reason is not None:
            log.warning("boot script %s skipped: %s", path.name, reason)
            results.append(Result(path.name, None, 0.0, skipped=reason))
            continue
        log.info("boot script %s: running (timeout %g s)", path.name, timeout)
        results.append(run_script(path, timeout))
    return results


async def run_boot_scripts(directory: Path, timeout: float) -> list[Result]:
    """Run the boot scripts in a worker thread (the event loop keeps running meanwhile)."""
    return await asyncio.to_thread(run_all, directory, timeout)
