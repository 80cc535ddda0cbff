"""Bring a running board's settings and FPGA image to its target.

A board's firmware reports in ``identify`` what it holds: its ``environment`` and ``config`` and, on
a board with an iCE40, the sha256 of its FPGA image and whether the FPGA configured from it
(:func:`identity_fields` turns that into the record's ``Environment``, ``Config`` and
``FpgaImage``, so a restarted gateway shows what the boards hold, not what it remembers).

:func:`bring_to_target` runs in the board's task once its port is open and it identified, before it
shows Idle (never for a reserved board, never in local mode; a paused gateway does not get here):

* ``Environment``/``Config`` differ from ``TargetEnvironment``/``TargetConfig`` →
  ``picofleet_apply_settings``; what the board answers is recorded.
* The image the board holds is not ``TargetFpgaImage`` → ``picofleet_write_fpga_image`` with the
  image from the asset cache (the fleet sync downloaded it), or ``None`` when the target has none;
  Status ``Installing`` with progress meanwhile. ``FpgaImage`` is the sha256 once the FPGA
  configured from it.

What cannot be done is said in ``StatusReason`` while the board is Idle: a firmware that cannot
take settings or FPGA images (every plugin answered ``None``), values or an image the board
refused, an FPGA that did not configure. Nothing is asked again and again: an attempt that could
not be done is repeated only when the target or the firmware changes (and, for a failure rather
than a firmware that cannot, when the board's port was reopened: a reboot or a replug). The board
is never left Broken by this.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from picofleet.firmware.asset_cache import AssetError
from picofleet.gateway.boards.record import Status
from picofleet.gateway.models import BoardError, BoardIdentity, FpgaState

if TYPE_CHECKING:
    from picofleet.gateway.boards.board import Board

__all__ = ["TargetMemo", "bring_to_target", "identity_fields"]

log = logging.getLogger("picofleet.board")


@dataclass
class TargetMemo:
    """What the gateway knows of one board beyond its record (``Board.target_memo``, kept while the
    gateway runs)."""

    fpga: FpgaState | None = None  # what the board said it holds (identify, or the last write)
    settings_key: tuple[Any, ...] | None = None  # the attempt that could not be done, not repeated
    settings_note: str | None = None
    fpga_key: tuple[Any, ...] | None = None
    fpga_note: str | None = None
    shown: str | None = None  # the StatusReason this module last showed


def identity_fields(board: Board, identity: BoardIdentity | None) -> dict[str, Any]:
    """The record fields a board's ``identify`` answer sets: ``Environment``, ``Config`` (what the
    board holds, ``None`` when its firmware does not say) and ``FpgaImage`` (the sha256 of the image
    its FPGA configured from, else ``None``)."""
    fpga = identity.fpga_image if identity is not None else None
    board.target_memo.fpga = fpga
    return {
        "Environment": identity.environment if identity is not None else None,
        "Config": identity.config if identity is not None else None,
        "FpgaImage": fpga.sha256 if fpga is not None and fpga.configured else None,
    }


async def bring_to_target(board: Board) -> None:
    """Bring the board's settings and FPGA image to its target, then show it Idle, with a
    ``StatusReason`` saying what could not be done (see the module docstring)."""
    notes: list[str] = []
    if not board.record.get("LocalMode") and board.port is not None:
        for step in (_settings, _fpga):
            note = await step(board)
            if note:
                notes.append(note)
    await _show_idle(board, "; ".join(notes) or None)


async def _show_idle(board: Board, reason: str | None) -> None:
    """Idle, with ``reason`` as StatusReason; a reason someone else set is left alone."""
    memo = board.target_memo
    if board.record["Status"] != Status.IDLE.value:
        await board.update(Status=Status.IDLE.value, **({"StatusReason": reason} if reason else {}))
    elif board.record.get("StatusReason") != reason and (
        reason is not None or board.record.get("StatusReason") == memo.shown
    ):
        await board.update(StatusReason=reason)
    memo.shown = reason


def _running(board: Board) -> str:
    return str(board.record.get("FirmwareVersion") or "a firmware that does not identify itself")


async def _settings(board: Board) -> str | None:
    """Apply the target environment/config when the board holds others; a note when it cannot."""
    memo = board.target_memo
    environment = dict(board.record.get("TargetEnvironment") or {})
    config = dict(board.record.get("TargetConfig") or {})
    held = (board.record.get("Environment"), board.record.get("Config"))
    if held == (environment, config) or (held == (None, None) and not environment and not config):
        memo.settings_key = memo.settings_note = None  # (a firmware that does not say, and nothing asked)
        return None
    target = (board.record.get("FirmwareVersion"), json.dumps([environment, config], sort_keys=True))
    if memo.settings_key in (target, (*target, board.port)):
        return memo.settings_note
    try:
        applied = await board.call(
            "picofleet_apply_settings",
            board=board.ref(),
            port=board.port,
            environment=environment,
            config=config,
        )
    except BoardError as error:
        memo.settings_key = (*target, board.port)  # tried again after a reboot or replug
        memo.settings_note = f"its environment and config were not applied: {error}"
        log.warning("%s: %s", board.label, memo.settings_note)
        return memo.settings_note
    if applied is None:
        memo.settings_key = target
        memo.settings_note = f"its firmware cannot take environment and config (it runs {_running(board)})"
        log.warning("%s: %s", board.label, memo.settings_note)
        return memo.settings_note
    if not (
        isinstance(applied, dict)
        and isinstance(applied.get("environment"), dict)
        and isinstance(applied.get("config"), dict)
    ):
        memo.settings_key = target
        memo.settings_note = (
            "a plugin's picofleet_apply_settings answered something else than what the board holds"
        )
        log.warning("%s: %s: %r", board.label, memo.settings_note, applied)
        return memo.settings_note
    await board.update(Environment=dict(applied["environment"]), Config=dict(applied["config"]))
    log.info("%s: environment and config applied", board.label)
    if applied["environment"] != environment or applied["config"] != config:
        memo.settings_key = target
        memo.settings_note = "the board stored other environment and config than its target"
        return memo.settings_note
    memo.settings_key = memo.settings_note = None
    return None


async def _fpga(board: Board) -> str | None:
    """Write the target FPGA image when the board holds another; a note when it cannot or it failed."""
    memo = board.target_memo
    target = board.record.get("TargetFpgaImage")
    held = memo.fpga
    held_sha = held.sha256 if held is not None else None
    if held_sha == target and (held is not None or target is None):
        if target is not None and held is not None and not held.configured:
            return f"its FPGA image {target[:12]} did not configure: {held.error or 'CDONE stayed low'}"
        memo.fpga_key = memo.fpga_note = None
        return None
    if held is None and target is None:
        return None  # the firmware reports no FPGA image, and none is asked for
    key = (board.record.get("FirmwareVersion"), target)
    if memo.fpga_key in (key, (*key, board.port)):
        return memo.fpga_note
    image: bytes | None = None
    if target is not None:
        try:
            image = await asyncio.to_thread(board.manager.assets.get, str(target))
        except AssetError as error:
            return f"its FPGA image {str(target)[:12]} is not downloaded yet ({error})"
    what = f"FPGA image {str(target)[:12]}" if target else "no FPGA image"
    await board.update(Status=Status.INSTALLING.value, StatusReason=f"writing {what} to the board")
    loop = asyncio.get_running_loop()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(board.set_progress, done, total)

    try:
        state = await board.call(
            "picofleet_write_fpga_image", board=board.ref(), port=board.port, image=image, progress=progress
        )
    except BoardError as error:
        memo.fpga_key = (*key, board.port)  # tried again after a reboot or replug
        memo.fpga_note = f"its FPGA image was not written: {error}"
        log.warning("%s: %s", board.label, memo.fpga_note)
        return memo.fpga_note
    finally:
        board.clear_progress()
    if state is None or not isinstance(state, FpgaState):
        memo.fpga_key = key
        memo.fpga_note = (
            f"its firmware cannot take FPGA images (it runs {_running(board)})"
            if state is None
            else "a plugin's picofleet_write_fpga_image answered something else than an FpgaState"
        )
        log.warning("%s: %s", board.label, memo.fpga_note)
        return memo.fpga_note
    memo.fpga = state
    await board.update(FpgaImage=state.sha256 if state.configured else None)
    if state.sha256 != target:
        memo.fpga_key = key
        memo.fpga_note = f"the board holds FPGA image {state.sha256 or 'none'}, not its target"
        return memo.fpga_note
    if target is not None and not state.configured:
        note = f"its FPGA image {target[:12]} did not configure: {state.error or 'CDONE stayed low'}"
        log.warning("%s: %s", board.label, note)
        return note
    log.info(
        "%s: %s", board.label, f"FPGA configured from image {target}" if target else "FPGA image removed"
    )
    memo.fpga_key = memo.fpga_note = None
    return None
