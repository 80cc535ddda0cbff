"""The fleet service's records (fleets, releases) in one TinyDB file, over the gateway's :class:`Store`.

Only the fleet service process opens ``DATA/fleet.db`` (the Store holds an ``flock``); the
``pre-receive`` hook never writes it (see :mod:`.git_http` for how releases reach it).

Tables: ``fleets`` (``name``, ``created``, ``target``: the commit the fleet's boards should run or
``None``, ``pinned``: a commit or ``None``) and ``releases`` (``id`` = ``fleet/commit``, ``fleet``,
``commit``, ``ref``, ``created``, ``boards``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tinydb import TinyDB

from ..gateway.storage import detached
from ..gateway.store import Store

__all__ = ["FleetExistsError", "FleetStore", "now_iso"]

FLEETS, RELEASES = "fleets", "releases"


class FleetExistsError(Exception):
    """A fleet of that name exists already."""


def now_iso() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _find(db: TinyDB, table: str, field: str, value: Any) -> Any:
    for doc in db.table(table).all():
        if doc.get(field) == value:
            return doc
    return None


class FleetStore:
    """Fleets and releases, durably: every method returns once its change is on disk."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)

    async def open(self) -> None:
        """Open the database (refusing if another process has it open)."""
        await self.store.open()

    async def close(self) -> None:
        """Write what is pending and close the database."""
        await self.store.close()

    async def create_fleet(self, name: str) -> dict[str, Any]:
        """Create fleet ``name``; raise :class:`FleetExistsError` if it exists."""
        record = {"name": name, "created": now_iso(), "target": None, "pinned": None}

        def job(db: TinyDB) -> dict[str, Any]:
            if _find(db, FLEETS, "name", name) is not None:
                raise FleetExistsError(name)
            db.table(FLEETS).insert(dict(record))
            return detached(record)

        return await self.store.transact(job)

    async def fleet(self, name: str) -> dict[str, Any] | None:
        """The fleet's record, or ``None``."""
        return await self.store.read(lambda db: detached(dict(_find(db, FLEETS, "name", name) or {})) or None)

    async def fleets(self) -> list[dict[str, Any]]:
        """Every fleet."""
        return await self.store.all(FLEETS)

    async def releases(self, fleet: str) -> list[dict[str, Any]]:
        """The fleet's releases, oldest first."""
        return [r for r in await self.store.all(RELEASES) if r.get("fleet") == fleet]

    async def record_release(self, fleet: str, release: dict[str, Any], make_target: bool) -> dict[str, Any]:
        """Record ``release`` (``commit``, ``ref``, ``boards``) of ``fleet``; with ``make_target`` the
        fleet's target becomes its commit unless the fleet is pinned. Returns the fleet record.

        Recording a commit again keeps its first ``created`` time and updates the rest.
        """
        commit = release["commit"]
        key = f"{fleet}/{commit}"
        fresh = detached(
            {
                "id": key,
                "fleet": fleet,
                "commit": commit,
                "ref": release.get("ref"),
                "created": release.get("created") or now_iso(),
                "boards": release["boards"],
            }
        )

        def job(db: TinyDB) -> dict[str, Any]:
            fleets = db.table(FLEETS)
            record = _find(db, FLEETS, "name", fleet)
            if record is None:
                raise KeyError(f"no fleet {fleet!r}")
            table = db.table(RELEASES)
            existing = _find(db, RELEASES, "id", key)
            if existing is None:
                table.insert(fresh)
            else:
                table.update({**fresh, "created": existing["created"]}, doc_ids=[existing.doc_id])
            if make_target and not record.get("pinned"):
                fleets.update({"target": commit}, doc_ids=[record.doc_id])
            return detached(dict(_find(db, FLEETS, "name", fleet)))

        return await self.store.transact(job)
