"""A fleet's git repository as an operator keeps it: a work tree released with the real git client."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.fleet import FleetProcess, git
from tests.test_fleet_git import MANIFEST, app_uf2, commit, write


def work_tree(path: Path, version: str = "2.0.0") -> tuple[Path, str]:
    """A new work tree at ``path`` whose one commit is a valid release of picofleet-app ``version``:
    (work tree, commit)."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    write(path, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2(version)})
    return path, commit(path, f"v{version}")


def next_release(work: Path, version: str) -> str:
    """Commit picofleet-app ``version`` in ``work``; its commit."""
    write(work, {"build/app.uf2": app_uf2(version)})
    return commit(work, f"v{version}")


def push_first_release(fleet: FleetProcess, work: Path, version: str = "2.0.0", name: str = "lab") -> str:
    """A new work tree at ``work`` with fleet.yml and picofleet-app ``version``, pushed to fleet ``name``.

    Returns the commit pushed.
    """
    _, head = work_tree(work, version)
    git(work, "push", "-q", fleet.push_url(name), "main")
    return head


def fleet_with_a_release(fleet: FleetProcess, name: str, work: Path) -> tuple[str, Path, str]:
    """A new fleet ``name`` on ``fleet`` to which a new work tree at ``work`` pushed its first release
    (picofleet-app 2.0.0): (push url, work tree, commit)."""
    fleet.create_fleet(name)
    return fleet.push_url(name), work, push_first_release(fleet, work, name=name)
