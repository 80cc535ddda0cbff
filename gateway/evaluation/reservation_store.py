"""Where reservations and their clients are kept: the TinyDB tables ``reservations`` and
``reservationClients`` of the gateway's store (written atomically: they survive a ``kill -9``),
and the id of the store the clients' tokens are valid in (the setting ``gateway_id``)."""

from __future__ import annotations

import secrets
from typing import Any

from tinydb import TinyDB

from picofleet.common.store import Store
from picofleet.gateway.evaluation.reservation import Reservation

RESERVATIONS = "reservations"
CLIENTS = "reservationClients"
GATEWAY_ID = "gateway_id"


class ReservationStore:
    """The stored reservations and clients (the book writes them before a change shows)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def clients(self) -> list[tuple[str, str]]:
        """Every stored client: ``(name, token digest)``."""
        stored = await self.store.all(CLIENTS)
        return [(str(client["name"]), str(client["token_sha256"])) for client in stored]

    async def gateway_id(self) -> str:
        """This gateway's id: random, stored at the first start, kept as long as its database.

        Clients key the tokens they remember by it (``GET /v1/gateway``): a token is valid
        exactly where this id is the same, whatever URL reaches the gateway.
        """
        stored = await self.store.get_value(GATEWAY_ID)
        if isinstance(stored, str) and stored:
            return stored
        minted = "gw_" + secrets.token_hex(16)
        await self.store.set_value(GATEWAY_ID, minted)
        return minted

    async def reservations(self) -> list[Reservation]:
        """Every stored reservation."""
        return [Reservation.from_stored(doc) for doc in await self.store.all(RESERVATIONS)]

    async def write(self, reservations: list[Reservation], client: dict[str, Any] | None = None) -> None:
        """Write reservations (and a new client) in one atomic store transaction."""
        docs = [reservation.public() for reservation in reservations]
        if not docs and client is None:
            return

        def job(db: TinyDB) -> None:
            table = db.table(RESERVATIONS)
            for doc in docs:
                table.remove(lambda stored, serial=doc["serial"]: stored.get("serial") == serial)
                table.insert(doc)
            if client is not None:
                db.table(CLIENTS).insert(client)

        await self.store.transact(job)

    async def remove(self, serials: list[str]) -> None:
        """Remove the stored reservations of boards ``serials``."""
        wanted = set(serials)

        def job(db: TinyDB) -> None:
            db.table(RESERVATIONS).remove(lambda stored: stored.get("serial") in wanted)

        await self.store.transact(job)
