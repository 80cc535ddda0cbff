"""A flash job: a UF2 image queued for a board, and what its record keeps of it (``PendingFlash``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from picofleet.firmware.asset_cache import AssetCache, AssetError, sha256_of
from picofleet.firmware.formats import uf2


@dataclass
class FlashJob:
    """A UF2 image to put on a board; ``commit`` is recorded as the board's Commit on success.

    ``evaluation``: the evaluation firmware of the board's reservation, the one flash a reserved
    board takes (``manager.request_flash`` refuses others). ``retry``: the fleet's retry count of
    the board (its target's ``retry``) the job was queued under; a release that fails records it in
    ``FailedRelease`` so that only a higher count (``picofleet fleet retry``) flashes it again.
    """

    uf2: bytes
    families: frozenset[int]
    version: str | None
    commit: str | None = None
    sha256: str = ""
    evaluation: bool = False
    retry: int = 0

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or sha256_of(self.uf2)

    def stored(self) -> dict[str, Any]:
        """The record's ``PendingFlash``: what to flash again after a power cut (the UF2 is an asset)."""
        stored: dict[str, Any] = {"sha256": self.sha256, "commit": self.commit, "version": self.version}
        if self.retry:
            stored["retry"] = self.retry
        return stored

    @classmethod
    def from_stored(cls, assets: AssetCache, stored: object) -> FlashJob:
        """The job a record's ``PendingFlash`` (or ``RunningImage``) names, its image read back from
        the asset cache, which verifies its sha256. Blocking I/O and parsing: call it in a worker
        thread. Raises AssetError (also for a record that is not such an object) or UF2Error."""
        if not isinstance(stored, dict) or not isinstance(stored.get("sha256"), str):
            raise AssetError(f"not a stored flash: {stored!r:.80}")
        image = assets.get(stored["sha256"])
        parsed = uf2.read_uf2(image)
        return cls(
            image,
            parsed.families,
            stored.get("version"),
            stored.get("commit"),
            stored["sha256"],  # verified by assets.get: not hashed again
            retry=int(stored.get("retry") or 0),
        )
