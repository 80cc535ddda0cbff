"""balena's update lock, held while boards are flashed (and while evaluations run).

While the lock file exists the supervisor neither kills nor restarts the service, so an update
never cuts a flash short. balena's rules (docs: "Application update locks"): create the file with
``O_CREAT|O_EXCL`` (the supervisor takes the same file the same way before it kills a service, so
whoever creates it first holds it), remove it to release.

**How.** The gateway writes its record (below) to a temporary file in the lock's directory and
hard-links that onto the lock path, then removes the temporary name. ``link(2)`` creates the new
name atomically and fails with ``EEXIST`` when it exists, exactly as ``open(O_CREAT|O_EXCL)``
does, so the exclusivity balena requires is kept; and the lock file never exists empty or half
written, even if the gateway dies while taking it (it may then leave a ``.updates.lock.*.tmp``
file, which locks nothing).

**Where.** ``ENM_LOCK_FILE_LOCATION`` (``lock_file_location``) names the lock. At its default,
``/tmp/balena/updates.lock``, the gateway takes balena's current lock *and* the legacy
``/tmp/resin/resin-updates.lock``, each only where its directory exists: the supervisor mounts
those directories into the container, so outside balena neither exists and no lock is taken.
Any other location is always taken, its directory created: that is how an operator asks for a
lock outside balena, and how the tests watch it.

**Who holds it.** The gateway writes a JSON record into the file: its pid, the start time of the
process (so a reused pid is not mistaken for it) and the boot id. A file naming a gateway that is
no longer running is *stale* (a ``kill -9`` or a power cut mid-flash): it still blocks every
update of the device, so it is reported at start and a flash refuses to run under it with a
reason saying what to do; it is removed only when ``BALENA_SUPERVISOR_OVERRIDE_LOCK=1`` (balena's
own switch for ignoring locks). The gateway's record is written before the file appears (a temp
file linked into place), so a lock of ours is never empty. A file with any other content, or an
empty one (the supervisor's own; it may hold it for as long as an update of the app takes), is
held by someone else: the gateway waits up to :data:`WAIT_FOR_LOCK` seconds for it, then the flash
fails with that reason. Such a lock is never called stale nor removed by the gateway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picofleet.gateway.config import SETTINGS_BY_NAME, GatewayConfig
from picofleet.gateway.models import BoardError
from picofleet.supervisor_bridge.environment import BalenaEnvironment

log = logging.getLogger("picofleet.supervisor")

DEFAULT_PATH = Path(SETTINGS_BY_NAME["lock_file_location"].default)
"""balena's lock path in a container (supervisor v7.22.0 and later)."""
LEGACY_PATH = Path("/tmp/resin/resin-updates.lock")
"""The legacy path, still honoured by current supervisors."""
HOLDER = "picofleet-gateway"
WAIT_FOR_LOCK = 5.0
"""Seconds to wait for a lock someone else holds before the flash fails."""
POLL_INTERVAL = 0.1

FREE = "free"
OURS = "ours"
HELD = "held"
STALE = "stale"

_held: dict[Path, str] = {}  # lock path -> token of this process's record in it
_guard = threading.Lock()


def lock_paths(
    configured: Path, *, default: Path = DEFAULT_PATH, legacy: Path = LEGACY_PATH
) -> list[tuple[Path, bool]]:
    """The lock files to take, each with whether to create its directory (module docstring)."""
    if configured != default:
        return [(configured, True)]
    return [(path, False) for path in (default, legacy) if path.parent.is_dir()]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _process(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks)`` of a process from /proc, ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state is field 3, start 22
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _own_record(token: str) -> dict[str, Any]:
    process = _process(os.getpid())
    return {
        "holder": HOLDER,
        "pid": os.getpid(),
        "started": process[1] if process else None,
        "boot": _boot_id(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": token,
    }


@dataclass(frozen=True)
class LockFile:
    """What a lock file says, and whether its holder still runs."""

    path: Path
    state: str
    record: dict[str, Any]

    @property
    def holder(self) -> str:
        """The holder, in words."""
        if not self.record:
            return "another process (the supervisor takes it while it updates or restarts this service)"
        return f"picofleet gateway pid {self.record.get('pid')} (since {self.record.get('since')})"

    def describe(self) -> str:
        """One line for an operator."""
        if self.state == STALE:
            return (
                f"stale balena update lock {self.path}: left by {self.holder}, which is no longer running; "
                "the supervisor will not update this device while it exists"
            )
        return f"the balena update lock {self.path} is held by {self.holder}"

    def public(self) -> dict[str, Any]:
        """The API's view (no token)."""
        return {"path": str(self.path), "state": self.state, "pid": self.record.get("pid")}


def inspect(path: Path) -> LockFile:
    """Read a lock file and tell whether it is free, ours, held by a live process, or stale."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(4096)
    except FileNotFoundError:
        return LockFile(path, FREE, {})
    except OSError:
        return LockFile(path, HELD, {})
    if not text:
        return LockFile(path, HELD, {})  # the supervisor's (a gateway's record is never empty)
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("holder") != HOLDER:
        return LockFile(path, HELD, {})
    with _guard:
        if _held.get(path) is not None and _held.get(path) == record.get("token"):
            return LockFile(path, OURS, record)
    return LockFile(path, HELD if _running(record) else STALE, record)


def _running(record: dict[str, Any]) -> bool:
    """Whether the gateway a lock record names still runs (same boot, same pid, same start)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    boot = _boot_id()
    if record.get("boot") and boot and record["boot"] != boot:
        return False
    process = _process(pid)
    if process is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # no /proc to compare start times: a live pid counts as the holder
    state, started = process
    if state in ("Z", "X"):
        return False
    return record.get("started") in (None, started)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _release(path: Path) -> None:
    """Remove a lock this process holds; leave it if someone replaced it meanwhile."""
    with _guard:
        token = _held.pop(path, None)
    if token is None:
        return
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("the balena update lock %s was removed by someone else while held", path)
        return
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or record.get("token") != token:
        log.warning("the balena update lock %s was replaced by another holder; left in place", path)
        return
    _remove(path)
    log.debug("released the balena update lock %s", path)


def release_all() -> None:
    """Release every lock this process still holds (at shutdown, whatever happened before)."""
    with _guard:
        paths = list(_held)
    for path in paths:
        _release(path)


class BalenaUpdateLock(AbstractContextManager["BalenaUpdateLock"]):
    """Holds every lock file of :func:`lock_paths` while entered (the ``picofleet_update_lock`` hook).

    Entering blocks (in a worker thread) for at most ``wait`` seconds per file and raises
    :class:`BoardError` with the reason when a lock cannot be taken; nothing is left taken then.
    """

    def __init__(self, paths: list[tuple[Path, bool]], *, override: bool, wait: float = WAIT_FOR_LOCK):
        self.paths = paths
        self.override = override
        self.wait = wait
        self.taken: list[Path] = []

    def __enter__(self) -> BalenaUpdateLock:
        taken: list[Path] = []
        try:
            for path, create_directory in self.paths:
                self._take(path, create_directory)
                taken.append(path)
        except BaseException:
            for path in reversed(taken):
                _release(path)
            raise
        self.taken = taken
        log.info("took the balena update lock %s", ", ".join(str(path) for path in taken))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for path in reversed(self.taken):
            _release(path)
        if self.taken:
            log.info("released the balena update lock %s", ", ".join(str(path) for path in self.taken))
        self.taken = []

    def _take(self, path: Path, create_directory: bool) -> None:
        if create_directory:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise BoardError(
                    f"cannot create the directory of the update lock {path}: {error.strerror}"
                ) from None
        deadline = time.monotonic() + self.wait
        token = secrets.token_hex(8)
        while True:
            try:
                _create_exclusive(path, json.dumps(_own_record(token)) + "\n")
            except FileExistsError:
                found = inspect(path)
                if found.state == FREE:
                    continue  # released between our open and our read: try again at once
                if found.state == STALE and self.override:
                    log.warning("%s: removed (BALENA_SUPERVISOR_OVERRIDE_LOCK=1)", found.describe())
                    _remove(path)
                    continue
                if found.state == STALE:
                    raise BoardError(
                        f"{found.describe()} (remove it, or set BALENA_SUPERVISOR_OVERRIDE_LOCK=1)"
                    ) from None
                if time.monotonic() >= deadline:
                    raise BoardError(f"{found.describe()} (waited {self.wait:g} s)") from None
                time.sleep(POLL_INTERVAL)
                continue
            except OSError as error:
                raise BoardError(f"cannot take the balena update lock {path}: {error.strerror}") from None
            with _guard:
                _held[path] = token
            return


def _create_exclusive(path: Path, content: str) -> None:
    """Create ``path`` holding ``content``, failing with FileExistsError when it exists.

    As ``open(O_CREAT|O_EXCL)``, but the file appears complete: ``content`` goes to a temporary
    file in the same directory, which ``link(2)`` (atomic, ``EEXIST`` if the name exists) puts at
    ``path``; the temporary name is removed whatever happens.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(content)
        os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def update_lock_for(
    config: GatewayConfig, environ: Mapping[str, str] | None = None
) -> AbstractContextManager[object]:
    """The update lock for ``config``: balena's, or a no-op where there is none (module docstring)."""
    paths = lock_paths(config.lock_file_location)
    if not paths:
        return contextlib.nullcontext()
    return BalenaUpdateLock(paths, override=BalenaEnvironment.from_environ(environ).override_lock)


def check_at_start(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> list[LockFile]:
    """Say where the lock is taken, and report (or, with the override, remove) stale locks.

    Returns the stale locks left in place. Blocking file I/O: call it in a worker thread.
    """
    paths = lock_paths(config.lock_file_location)
    if not paths:
        log.info(
            "no balena update lock: neither %s nor %s exists (not on balena; set ENM_LOCK_FILE_LOCATION "
            "to take a lock anyway)",
            DEFAULT_PATH.parent,
            LEGACY_PATH.parent,
        )
        return []
    log.info("balena update lock: %s, taken while boards are flashed", ", ".join(str(p) for p, _ in paths))
    override = BalenaEnvironment.from_environ(environ).override_lock
    stale: list[LockFile] = []
    for path, _ in paths:
        found = inspect(path)
        if found.state == STALE and override:
            log.warning("%s: removed (BALENA_SUPERVISOR_OVERRIDE_LOCK=1)", found.describe())
            _remove(path)
        elif found.state == STALE:
            log.error("%s; remove it, or set BALENA_SUPERVISOR_OVERRIDE_LOCK=1", found.describe())
            stale.append(found)
        elif found.state == HELD:
            log.warning("%s at start", found.describe())
    return stale


def lock_status(config: GatewayConfig) -> dict[str, Any]:
    """The lock files and their state, for ``GET /v1/enm/supervisor`` (blocking: use a thread)."""
    files = [inspect(path).public() for path, _ in lock_paths(config.lock_file_location)]
    return {"enabled": bool(files), "files": files}
