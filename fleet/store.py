"""The fleet service's records (fleets, releases) in one TinyDB file, over the gateway's :class:`Store`.

Only the fleet service process opens ``DATA/fleet.db`` (the Store holds an ``flock``); the
``pre-receive`` hook never writes it (see :mod:`.git_http` for how releases reach it).

Tables:

* ``fleets``: ``name``, ``created``, ``deploy_branch`` (the branch whose pushes deploy; ``main``
  when absent), ``target`` (the commit the fleet's boards should run, or ``None``), ``pinned`` (a
  commit or ``None``), ``latest`` (the newest release pushed to the tip of the deploy branch,
  whatever the pin), ``provisioning_key_sha256``, ``env`` and ``config`` (fleet variables).
* ``releases``: ``id`` = ``fleet/commit``, ``fleet``, ``commit``, ``ref`` (the ref it was first
  pushed to, or the deploy branch once it was pushed there), ``created``, ``boards``.
* ``gateways``: ``id`` (uuid hex), ``fleet``, ``name``, ``key_sha256``, ``created``, ``last_seen``,
  ``boards`` (the last full list the gateway reported).
* ``board_settings``: ``id`` = ``fleet/LocalUUID``, ``fleet``, ``uuid``, ``pin``, ``env``, ``config``,
  ``retry`` (the operator's retries of a failed release, absent until the first).

Keys (the provisioning key, the gateway keys) are stored only as their sha256.

Board log lines are not in the database: :class:`BoardLogs` keeps the last
:data:`BOARD_LOG_LINES` lines of each board in memory. They are diagnostics, not state: a fleet
restart forgets them (gateways send what they log from then on).
"""

from __future__ import annotations

import collections
import hashlib
import re
import time
from pathlib import Path
from typing import Any

from tinydb import TinyDB

from picofleet.common.store import FieldEquals, Store
from picofleet.common.tinydb_file import detached

__all__ = [
    "BOARD_LOG_LINES",
    "DEFAULT_DEPLOY_BRANCH",
    "BoardLogs",
    "FleetExistsError",
    "FleetStore",
    "branch_name_error",
    "deploy_branch",
    "key_hash",
    "now_iso",
]

BOARD_LOG_LINES = 1000
"""Log lines kept per board (the oldest are dropped)."""

FLEETS, RELEASES, GATEWAYS, BOARD_SETTINGS = "fleets", "releases", "gateways", "board_settings"
DEFAULT_DEPLOY_BRANCH = "main"
"""The branch whose pushes deploy, for a fleet created without another."""
_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,99}")


class FleetExistsError(Exception):
    """A fleet of that name exists already."""


def now_iso() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def key_hash(key: str) -> str:
    """The sha256 (hex) under which a secret key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def deploy_branch(fleet: dict[str, Any]) -> str:
    """The fleet's deploy branch (a branch name, not a ref)."""
    return str(fleet.get("deploy_branch") or DEFAULT_DEPLOY_BRANCH)


def branch_name_error(name: object) -> str | None:
    """Why ``name`` cannot be a deploy branch, or ``None``: ``[A-Za-z0-9_][A-Za-z0-9._/-]*``, at
    most 100 characters, and a name git takes (no ``..``, ``//``, ``/.``, no ``/`` or ``.`` or
    ``.lock`` at the end of any of its ``/``-separated parts)."""
    if (
        not isinstance(name, str)
        or not _BRANCH.fullmatch(name)
        or any(part in name for part in ("..", "//", "/."))
        or name.endswith(("/", "."))
        or any(part.endswith(".lock") for part in name.split("/"))
    ):
        return (
            "invalid deploy branch: a git branch name of letters, digits and . _ / -"
            " (at most 100, not starting with '.', '-' or '/')"
        )
    return None


def _find(db: TinyDB, table: str, field: str, value: Any) -> Any:
    """The first document of ``table`` whose ``field`` is ``value``, or ``None``."""
    return db.table(table).get(FieldEquals(field, value))


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

    async def create_fleet(
        self, name: str, provisioning_key: str = "", branch: str = DEFAULT_DEPLOY_BRANCH
    ) -> dict[str, Any]:
        """Create fleet ``name`` (its provisioning key stored hashed) whose pushes to ``branch``
        deploy; raise :class:`FleetExistsError` if it exists."""
        record: dict[str, Any] = {
            "name": name,
            "created": now_iso(),
            "deploy_branch": branch,
            "target": None,
            "pinned": None,
            "latest": None,
            "provisioning_key_sha256": key_hash(provisioning_key) if provisioning_key else None,
            "env": {},
            "config": {},
        }

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
        """Record ``release`` (``commit``, ``ref``, ``boards``) of ``fleet``; with ``make_target`` (the
        ref points at the commit) and the ref the fleet's deploy branch, the fleet's ``latest``
        becomes its commit, and its target too unless the fleet is pinned. A release of any other
        ref is only recorded (it can be pinned). Returns the fleet record.

        Recording a commit again keeps its first ``created`` time and its first ``ref`` (unless the
        new one is the deploy branch) and updates the rest.
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
                "message": release.get("message"),  # the commit's subject line
            }
        )

        def job(db: TinyDB) -> dict[str, Any]:
            fleets = db.table(FLEETS)
            record = _find(db, FLEETS, "name", fleet)
            if record is None:
                raise KeyError(f"no fleet {fleet!r}")
            table = db.table(RELEASES)
            existing = _find(db, RELEASES, "id", key)
            deploys = fresh["ref"] == f"refs/heads/{deploy_branch(record)}"
            if existing is None:
                table.insert(fresh)
            else:
                ref = fresh["ref"] if deploys else existing.get("ref")
                table.update({**fresh, "ref": ref, "created": existing["created"]}, doc_ids=[existing.doc_id])
            if make_target and deploys:
                change: dict[str, Any] = {"latest": commit}
                if not record.get("pinned"):
                    change["target"] = commit
                fleets.update(change, doc_ids=[record.doc_id])
            return detached(dict(_find(db, FLEETS, "name", fleet)))

        return await self.store.transact(job)

    async def update_fleet(self, name: str, **fields: Any) -> dict[str, Any] | None:
        """Set top-level ``fields`` of fleet ``name``; the updated record, or ``None`` if unknown."""
        change = detached(fields)

        def job(db: TinyDB) -> dict[str, Any] | None:
            record = _find(db, FLEETS, "name", name)
            if record is None:
                return None
            db.table(FLEETS).update(dict(change), doc_ids=[record.doc_id])
            return detached(dict(_find(db, FLEETS, "name", name)))

        return await self.store.transact(job)

    async def fleet_by_provisioning_key(self, key: str) -> dict[str, Any] | None:
        """The fleet whose provisioning key is ``key``, or ``None``."""
        digest = key_hash(key)
        return await self.store.read(
            lambda db: detached(dict(_find(db, FLEETS, "provisioning_key_sha256", digest) or {})) or None
        )

    async def add_gateway(self, record: dict[str, Any]) -> None:
        """Insert a new gateway record (``id``, ``fleet``, ``name``, ``key_sha256`` ...)."""
        fresh = detached(record)
        await self.store.transact(lambda db: db.table(GATEWAYS).insert(dict(fresh)) and None)

    async def gateway_by_key_hash(self, digest: str) -> dict[str, Any] | None:
        """The gateway whose key hashes to ``digest``, or ``None``."""
        return await self.store.read(
            lambda db: detached(dict(_find(db, GATEWAYS, "key_sha256", digest) or {})) or None
        )

    async def gateway(self, gateway_id: str) -> dict[str, Any] | None:
        """The gateway's record, or ``None``."""
        return await self.store.read(
            lambda db: detached(dict(_find(db, GATEWAYS, "id", gateway_id) or {})) or None
        )

    async def gateways(self, fleet: str) -> list[dict[str, Any]]:
        """The fleet's gateways, oldest first."""
        return [g for g in await self.store.all(GATEWAYS) if g.get("fleet") == fleet]

    async def report_boards(self, gateway_id: str, boards: list[dict[str, Any]], seen: str) -> None:
        """Replace the gateway's board list and set its ``last_seen``."""
        change = detached({"boards": boards, "last_seen": seen})

        def job(db: TinyDB) -> None:
            record = _find(db, GATEWAYS, "id", gateway_id)
            if record is None:
                raise KeyError(f"no gateway {gateway_id!r}")
            db.table(GATEWAYS).update(dict(change), doc_ids=[record.doc_id])

        await self.store.transact(job)

    async def board_settings(self, fleet: str) -> dict[str, dict[str, Any]]:
        """The fleet's per-board settings (``pin``, ``env``, ``config``) by LocalUUID."""
        return {s["uuid"]: s for s in await self.store.all(BOARD_SETTINGS) if s.get("fleet") == fleet}

    async def update_board_settings(self, fleet: str, uuid: str, **fields: Any) -> dict[str, Any]:
        """Set top-level ``fields`` (``pin``, ``env``, ``config``, ``retry``) of the board's settings."""
        key = f"{fleet}/{uuid}"
        change = detached(fields)

        def job(db: TinyDB) -> dict[str, Any]:
            record = _find(db, BOARD_SETTINGS, "id", key)
            table = db.table(BOARD_SETTINGS)
            if record is None:
                fresh: dict[str, Any] = {
                    "id": key,
                    "fleet": fleet,
                    "uuid": uuid,
                    "pin": None,
                    "env": {},
                    "config": {},
                }
                table.insert({**fresh, **change})
            else:
                table.update(dict(change), doc_ids=[record.doc_id])
            return detached(dict(_find(db, BOARD_SETTINGS, "id", key)))

        return await self.store.transact(job)


class BoardLogs:
    """The last ``per_board`` log lines of every board, in memory, by ``(fleet, LocalUUID)``."""

    def __init__(self, per_board: int = BOARD_LOG_LINES) -> None:
        self.per_board = per_board
        self._lines: dict[tuple[str, str], collections.deque[dict[str, Any]]] = {}

    def add(self, fleet: str, uuid: str, line: dict[str, Any]) -> None:
        """Append ``line`` (``time``, ``level``, ``text``, ``gateway``) to the board's ring."""
        ring = self._lines.get((fleet, uuid))
        if ring is None:
            ring = self._lines[(fleet, uuid)] = collections.deque(maxlen=self.per_board)
        ring.append(line)  # the oldest line goes once the ring is full

    def last(self, fleet: str, uuid: str, limit: int) -> list[dict[str, Any]]:
        """The board's last ``limit`` lines, oldest first."""
        ring = self._lines.get((fleet, uuid))
        if not ring or limit <= 0:
            return []
        return list(ring)[-limit:]
