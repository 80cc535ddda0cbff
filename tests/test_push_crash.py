"""A push cut off by a crash of the fleet service (issue #13, item 1).

Real fleet service processes, the real git client and the real ``git http-backend``. The first test
kills the service (``kill -9``) while the pre-receive hook of a push runs -- the hook is held
deterministically: the test rewrites the repository's hook file (the service re-installs it at its
next start) so that the shell stops itself before it runs the real check -- and asserts that no git
child outlives the service, that the push fails at the client, that the ref did not move, and that
after a restart the same push deploys.

The second covers the instants nothing can close (git moving the ref as the service dies): a release
staged by the real hook whose ref moved while no service ran is ingested at the next start; one
whose ref moves after that start is ingested within a second, or at the next push at the latest
(which then says "Everything up-to-date" and finds it recorded); one whose push failed is dropped
only after a grace, never while its push may still move the ref.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from picofleet.fleet.git.http_backend import STAGED_GRACE, FleetRepos
from picofleet.fleet.git.pre_receive import ENV_DATA, ENV_FLEET, release_path
from picofleet.fleet.store import FleetStore
from tests.helpers.fleet import GIT_IDENTITY, FleetProcess, git
from tests.helpers.fleet_repo import fleet_with_a_release, next_release, work_tree
from tests.helpers.wait import wait_for

T = TypeVar("T")

pytestmark = pytest.mark.timeout(120)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    status = _stat(pid)
    return status is not None and status[0] != "Z"


def descendants(pid: int) -> dict[int, str]:
    """The running processes under ``pid``: {pid: command line}."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (status := _stat(int(entry.name))) is not None and status[0] != "Z":
            children.setdefault(status[1], []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        with contextlib.suppress(OSError):
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        todo.extend(children.get(child, []))
    return found


def _wait(check: Callable[[], T], timeout: float, what: str, left: Callable[[], object] | None = None) -> T:
    """:func:`wait_for`; on a timeout, also says what ``left()`` returns (what is still there)."""
    try:
        return wait_for(check, timeout, what)
    except AssertionError as error:
        if left is None:
            raise
        raise AssertionError(f"{error}: {left()}") from None


def bare_ref(repo: Path, ref: str = "refs/heads/main") -> str:
    return git(repo, f"--git-dir={repo}", "rev-parse", ref).stdout.strip()


def test_a_push_cut_off_by_a_crash_leaves_no_git_child_and_moves_nothing(tmp_path: Path) -> None:
    service = FleetProcess(tmp_path / "data").start()
    leftovers: dict[int, str] = {}
    reaper: list[int] = []
    try:
        url, work, first = fleet_with_a_release(service, "crash", tmp_path / "work")
        assert service.fleet("crash")["target"] == first
        second = next_release(work, "2.1.0")

        repo = service.data / "git" / "crash.git"
        hook = repo / "hooks" / "pre-receive"
        shebang, _, rest = hook.read_text().partition("\n")
        hook.write_text(f"{shebang}\nkill -STOP $$\n{rest}")  # held until SIGCONT: never, here
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
        push = subprocess.Popen(
            ["git", *GIT_IDENTITY, "push", url, "main"],
            cwd=work,
            env={**env, "GIT_CONFIG_GLOBAL": os.devnull},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def stopped_hook() -> int | None:
            for pid, command in descendants(service.pid).items():
                if "pre-receive" in command and (_stat(pid) or ("", 0))[0] == "T":
                    return pid
            return None

        hook_pid = _wait(stopped_hook, 30, "the pre-receive hook of the push to run")
        leftovers = descendants(service.pid)
        commands = " | ".join(leftovers.values())
        assert "http-backend" in commands and "receive-pack" in commands, commands
        assert hook_pid in leftovers

        service.kill()
        _wait(
            lambda: not [pid for pid in leftovers if running(pid)],
            10,
            "every child of the killed service to be gone",
            left=lambda: f"still running: {[c for p, c in leftovers.items() if running(p)]}",
        )
        _, stderr = push.communicate(timeout=30)
        assert push.returncode != 0, stderr  # the push failed at the client, it did not half-succeed
        assert bare_ref(repo) == first  # and the ref did not move

        service.start()
        assert service.fleet("crash")["target"] == first
        assert [r["commit"] for r in service.releases("crash")] == [first]
        url = service.push_url("crash")  # a new port
        again = git(work, "push", url, "main")  # the service re-installed the real hook
        assert f"release {second[:12]} accepted and deployed" in again.stderr
        assert service.fleet("crash")["target"] == second
        assert bare_ref(repo) == second
        reaper = [pid for pid, command in descendants(service.pid).items() if "git.reaper" in command]
        assert len(reaper) == 1, "the service runs one reaper"
    finally:
        for pid in leftovers:  # without the fix they outlive the service: do not leak them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped = service.stop()
    assert stopped == 0
    _wait(lambda: not running(reaper[0]), 10, "the reaper to exit with the service")


def stage(data: Path, fleet: str, work: Path, commit_: str, scratch: Path) -> Path:
    """Run the real pre-receive hook for ``commit_`` on ``main`` -- in a scratch copy of the fleet's
    repository, so that the real ref does not move -- as an orphaned push of a crashed service
    would; the release file it staged."""
    if not scratch.exists():
        git(work, "clone", "-q", "--bare", str(data / "git" / f"{fleet}.git"), str(scratch))
        shutil.copy(
            data / "git" / f"{fleet}.git" / "hooks" / "pre-receive", scratch / "hooks" / "pre-receive"
        )
    git(
        work,
        "push",
        "-q",
        "--force",
        str(scratch),
        f"{commit_}:refs/heads/main",
        env={ENV_DATA: str(data), ENV_FLEET: fleet},
    )
    staged = data / "releases" / fleet / f"{commit_}.json"
    assert staged.is_file()
    return staged


def move_ref(data: Path, fleet: str, work: Path, commit_: str) -> None:
    """Move the fleet's ``main`` to ``commit_`` as git does after the hook (no hook runs here)."""
    repo = data / "git" / f"{fleet}.git"
    git(
        work, f"--git-dir={repo}", "fetch", "-q", "--update-head-ok", str(work), f"+{commit_}:refs/heads/main"
    )


def test_releases_staged_around_a_crash_are_ingested_by_whichever_service_is_up(tmp_path: Path) -> None:
    service = FleetProcess(tmp_path / "data").start()
    data = service.data
    try:
        url, work, first = fleet_with_a_release(service, "staged", tmp_path / "work")
        service.kill()

        scratch = tmp_path / "scratch.git"
        # the ref moved in the instant the service died: staged, and the ref points at it
        moved = next_release(work, "2.1.0")
        moved_file = stage(data, "staged", work, moved, scratch)
        move_ref(data, "staged", work, moved)
        # a push still in flight: staged, its ref not moved yet
        pending = next_release(work, "2.2.0")
        pending_file = stage(data, "staged", work, pending, scratch)
        # a push that failed after its hook, long ago
        failed_file = data / "releases" / "staged" / f"{'ab' * 20}.json"
        failed_file.write_text(json.dumps({**json.loads(pending_file.read_text()), "commit": "ab" * 20}))
        old = time.time() - 2 * STAGED_GRACE
        os.utime(failed_file, (old, old))

        service.start()
        url = service.push_url("staged")  # a new port
        assert service.fleet("staged")["target"] == moved  # at once: ingested before it listens
        assert not moved_file.exists()
        assert not failed_file.exists()  # stale: dropped
        assert pending_file.exists()  # its push may still move the ref: kept

        move_ref(data, "staged", work, pending)  # ... and so it does, with the service up
        _wait(lambda: service.fleet("staged")["target"] == pending, 10, "the pending release to deploy")
        assert not pending_file.exists()

        # staged and moved with no one to tell the service: the next push finds it recorded
        late = next_release(work, "2.3.0")
        stage(data, "staged", work, late, scratch)
        move_ref(data, "staged", work, late)
        again = git(work, "push", url, "main")
        assert "Everything up-to-date" in again.stderr
        assert service.fleet("staged")["target"] == late
        assert [r["commit"] for r in service.releases("staged")] == [first, moved, pending, late]
    finally:
        service.stop()


def test_an_ingest_while_a_push_promotes_a_commit_of_another_branch_keeps_its_deploy(tmp_path: Path) -> None:
    """A commit already on ``dev`` pushed to ``main``: an ingest run between the hook staging it and
    git moving ``main`` (another push, the settle loop) must not record it without the target."""

    async def scenario() -> tuple[list[str], dict[str, object]]:
        data = tmp_path / "data"
        data.mkdir()
        store = FleetStore(data / "fleet.db")
        await store.open()
        await store.create_fleet("f", "key")
        repos = FleetRepos(data, store)
        await repos.create("f", "main")
        bare = repos.path_of("f")
        work, promoted = work_tree(tmp_path / "work")
        # on dev already, a recorded release (fetched into the bare repository: no hook runs)
        subprocess.run(
            ["git", f"--git-dir={bare}", "fetch", "-q", str(work), "main:refs/heads/dev"], check=True
        )
        dev_release = {"commit": promoted, "ref": "refs/heads/dev", "boards": {}}
        await store.record_release("f", dev_release, make_target=False)
        staged = release_path(data, "f", promoted)  # what the hook of `git push URL dev:main` stages
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(json.dumps({**dev_release, "fleet": "f", "ref": "refs/heads/main"}))
        in_flight = await repos.ingest("f")  # before git moves main
        subprocess.run(["git", f"--git-dir={bare}", "update-ref", "refs/heads/main", promoted], check=True)
        await repos.ingest("f")  # the push's own ingest
        fleet = await store.fleet("f")
        await repos.close()
        await store.close()
        return in_flight, {"target": fleet["target"], "staged_left": staged.exists(), "promoted": promoted}

    in_flight, seen = asyncio.run(scenario())
    assert in_flight == []  # kept while its push may still move the ref
    assert seen["target"] == seen["promoted"] and not seen["staged_left"]
