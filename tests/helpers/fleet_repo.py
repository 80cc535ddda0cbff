"""A fleet's git repository as an operator keeps it: a work tree released with the real git client."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.fleet import FleetProcess, git
from tests.test_fleet_git import MANIFEST, app_uf2, commit, write


def push_first_release(fleet: FleetProcess, work: Path, version: str = "2.0.0", name: str = "lab") -> str:
    """A new work tree at ``work`` with fleet.yml and picofleet-app ``version``, pushed to fleet ``name``.

    Returns the commit pushed.
    """
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    write(work, {"fleet.yml": MANIFEST, "build/app.uf2": app_uf2(version)})
    head = commit(work, f"v{version}")
    git(work, "push", "-q", fleet.push_url(name), "main")
    return head
