"""Git children die with the fleet service, even when it is killed with ``kill -9``.

Every ``git http-backend`` runs in its own session, so its process group holds the whole tree it
starts (``git receive-pack``, ``index-pack``, the ``pre-receive`` hook and what the hook runs; git
never moves a child to another group). ``PR_SET_PDEATHSIG`` would not do: it reaches a child of
the service, not the grandchildren, and a hook that outlived the service could still let
``receive-pack`` move a ref that nobody ingests.

So the service starts one *reaper* (``python -m picofleet.fleet.git.reaper``, in a session of its
own, so a terminal's Ctrl-C does not stop it first) whose stdin is a pipe only the service holds.
The service writes ``+PGID`` when it starts a group and ``-PGID`` once it has reaped its leader.
When the pipe reaches end of file -- the service exited, crashed or was killed, the kernel closes
its end in every case -- the reaper sends ``SIGKILL`` to every group still open and exits. A push
whose service died is thus cut off before its ref moves (or, in the instants where git was already
moving it, its staged release is ingested at the next start: see :mod:`.http_backend`); the client's
``git push`` fails, its connection having gone with the service.

A group started in the instant before the service could write its ``+PGID`` is not known to the
reaper; it ends by itself: its stdin is the service's pipe, which is closed, so ``receive-pack``
sees a truncated pack and moves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import IO

__all__ = ["GitGroups", "main"]

log = logging.getLogger("picofleet.fleet.git")


class GitGroups:
    """The service's end of the reaper: announce and retire the process groups of git children."""

    def __init__(self) -> None:
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def reaper_pid(self) -> int | None:
        """The reaper's process id while it runs."""
        return self._reaper.pid if self._reaper is not None and self._reaper.poll() is None else None

    def _pipe(self) -> IO[bytes] | None:
        if self._reaper is None or self._reaper.poll() is not None:
            if self._reaper is not None:
                log.warning("the git reaper exited (%s); starting another", self._reaper.returncode)
            try:
                self._reaper = subprocess.Popen(
                    [sys.executable, "-m", "picofleet.fleet.git.reaper"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as error:
                log.error("cannot start the git reaper (%s): git children may outlive a crash", error)
                self._reaper = None
                return None
        return self._reaper.stdin

    def _say(self, line: str) -> None:
        pipe = self._pipe()
        if pipe is None:
            return
        try:
            pipe.write(line.encode() + b"\n")
            pipe.flush()
        except (BrokenPipeError, ValueError) as error:
            log.error("the git reaper is gone (%s): git children may outlive a crash", error)

    def start(self) -> None:
        """Start the reaper now (at service start) rather than at the first git request."""
        self._pipe()

    def track(self, pgid: int) -> None:
        """The group ``pgid`` (a new session's leader) is killed if the service dies."""
        self._say(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        """The leader of ``pgid`` was reaped: the reaper no longer kills that group."""
        self._say(f"-{pgid}")

    def close(self) -> None:
        """At a clean stop: close the pipe (the reaper kills what is left and exits) and reap it."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if reaper.stdin is not None:
                reaper.stdin.close()
        try:
            reaper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reaper.kill()
            reaper.wait()


def _kill(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def main() -> int:
    """The reaper: read ``+PGID``/``-PGID`` lines until end of file, then kill the groups left."""
    for ignored in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for the service
        signal.signal(ignored, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip()
        try:
            pgid = int(text[1:])
        except ValueError:
            continue
        if text.startswith(b"+") and pgid > 1:
            groups.add(pgid)
        elif text.startswith(b"-"):
            groups.discard(pgid)
    _kill(groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
