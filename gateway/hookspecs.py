"""The plugin contract: every hook a board plugin can implement.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` and named after
the specifications below, registered under the ``picofleet`` entry-point group::

    [project.entry-points.picofleet]
    myboard = "myboard_plugin"

Rules every hook follows:

* Hooks marked *firstresult* are asked in turn (newest plugin first, ``tryfirst``/``trylast``
  respected) until one returns something other than ``None``. Return ``None`` for a board that
  is not yours (check ``board.board_type`` or ``board.firmware``); the gateway's built-in
  implementations (``gateway.core_hooks``) answer last.
* Hooks that take a ``board`` may do blocking I/O: the gateway calls them in a worker thread,
  one call at a time per board, never on the event loop. They must return within the time
  stated (:data:`HOOK_TIME_LIMITS`; the gateway gives up on a call after twice that), and
  raise :class:`~picofleet.gateway.models.BoardError` with an operator-readable reason when the
  board does not do what was asked.
* ``port`` arguments are the :class:`serial.Serial` the gateway opened with
  ``picofleet_open_port``; do not close it (the gateway does, with ``picofleet_close_port``).

docs/plugins.md documents each hook again with a worked third-party plugin;
tests/test_plugin_contract.py fails when a hook here is missing from that page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import serial

    from picofleet.gateway.config import GatewayConfig
    from picofleet.gateway.models import (
        BoardIdentity,
        BoardRef,
        BoardType,
        DiscoverySource,
        EvaluationFirmware,
        FpgaState,
        ProgressCallback,
    )

PROJECT = "picofleet"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

HOOK_TIME_LIMITS: dict[str, float] = {
    "picofleet_open_port": 2.5,
    "picofleet_close_port": 2.5,
    "picofleet_identify": 2.5,
    "picofleet_enter_bootloader": 5.0,
    "picofleet_write_uf2": 15.0,  # plus 1 s per UF2_WRITE_RATE bytes of the image
    "picofleet_update_lock": 5.0,
    "picofleet_restart": 5.0,
    "picofleet_blink": 2.5,
    "picofleet_evaluation_firmware": 5.0,
    "picofleet_install_files": 30.0,
    "picofleet_apply_settings": 2.5,
    "picofleet_write_fpga_image": 30.0,
}
"""Seconds each board hook must return within: what a plugin must meet, stated once.

Each hook's docstring below and its section of docs/plugins.md say the same number
(tests/test_plugin_contract.py checks). The gateway enforces twice the limit, for slow boards
(``gateway/boards/manager.py`` ``HOOK_TIMEOUTS``); a call past that is reported as a BoardError.
"""
UF2_WRITE_RATE = 100_000
"""Bytes per second ``picofleet_write_uf2`` must write: its limit grows by 1 s per this many bytes."""


@hookspec
def picofleet_board_types() -> list[BoardType]:
    """Declare the board types this plugin provides.

    Called once, when the plugin is loaded (also by ``picofleet plugins``). Return a list of
    :class:`BoardType` (name, chip, USB rules, accepted UF2 families, bootloader Board-ID);
    return an empty list if the plugin only adds behaviour to other plugins' boards. A board
    type name already declared by an earlier plugin is refused with a log line.
    """


@hookspec
def picofleet_discovery_sources(config: GatewayConfig) -> list[DiscoverySource]:
    """Contribute sources of USB device events.

    Called once when the gateway starts, before the HTTP API serves. Return a list of
    :class:`DiscoverySource` objects (possibly empty). Each source's ``run(emit)`` coroutine
    reports ``add``/``remove`` :class:`DeviceEvent` for tty and block devices; the core
    classifies them with every board type's USB rules, so a source need not know board types.
    ``close()`` is awaited at shutdown and must release what the source started (threads,
    child processes).
    """


@hookspec
def picofleet_startup(config: GatewayConfig) -> None:
    """Prepare what the plugin needs for the gateway's run (checks, reports at start).

    Called once (in a worker thread) when the gateway starts, after the ``/data/boot.d`` scripts
    and before any board is managed or the API serves; not called by ``picofleet plugins``. An
    exception is logged and the gateway starts anyway. The built-in ``balena_update_lock`` plugin
    reports stale update locks here.
    """


@hookspec
def picofleet_shutdown(config: GatewayConfig) -> None:
    """Release what the plugin still holds when the gateway stops.

    Called once (in a worker thread) at shutdown, after every board task stopped, also when
    stopping them failed. An exception is logged and the others are still called. The built-in
    ``balena_update_lock`` plugin releases a lock a flash cut short left held.
    """


@hookspec(firstresult=True)
def picofleet_open_port(board: BoardRef) -> serial.Serial | None:
    """Open the serial port of a board running application firmware.

    Called (in a worker thread) when the gateway starts managing a board, after a reboot and
    when it resumes from Paused. ``board.port`` is the device path. Return an open
    :class:`serial.Serial`, or ``None`` to let the next plugin (finally the built-in
    pyserial default: 115200 baud, 8N1, exclusive) open it. Must return within 2.5 s.
    """


@hookspec(firstresult=True)
def picofleet_close_port(board: BoardRef, port: serial.Serial) -> bool | None:
    """Close a port the gateway opened.

    Called when the gateway pauses, before a flash or restart, when the board disappears and
    at shutdown. Return ``True`` once closed, or ``None`` to let the built-in default close it.
    Must not raise for a port whose device is already gone. Must return within 2.5 s.
    """


@hookspec(firstresult=True)
def picofleet_identify(board: BoardRef, port: serial.Serial) -> BoardIdentity | None:
    """Ask the firmware which board it runs on and what it is.

    Called after the port is opened and after every flash or restart. Return a
    :class:`BoardIdentity` (board type, serial, firmware name and version), or ``None`` if this
    plugin does not speak the board's firmware protocol or the firmware does not answer in time.
    When every plugin returns ``None`` the board keeps the type its USB identity gave it and its
    firmware version is shown as unknown. This is how board types that USB alone cannot tell
    apart (same VID:PID) are told apart. Must return within 2.5 s.
    """


@hookspec(firstresult=True)
def picofleet_enter_bootloader(board: BoardRef, port: serial.Serial) -> bool | None:
    """Make a board running application firmware reboot into its UF2 bootloader.

    Called before a flash, with the board's open port. Return ``True`` once the request was
    sent (the gateway then waits for a bootloader drive with the same serial), or ``None`` to
    let the next plugin try (the built-in default sends picofleet's ``bootloader`` command; when
    no picofleet firmware answers, MicroPython's ``machine.bootloader()`` over the raw REPL for a
    board whose USB identity may be MicroPython; else, or if no raw REPL answers, the 1200-baud
    touch). Must return within 5 s.
    """


@hookspec(firstresult=True)
def picofleet_write_uf2(board: BoardRef, drive: str, uf2: bytes, progress: ProgressCallback) -> bool | None:
    """Write a validated UF2 image to a board's bootloader drive.

    Called with ``board.mode == "bootloader"`` after the gateway checked INFO_UF2.TXT and the
    image's families against the board type. ``drive`` is a block device or a directory (a
    mounted or virtual drive). Call ``progress(done, total)`` as bytes are written. Return
    ``True`` when every block is written (the board reboots by itself), or ``None`` to let the
    built-in default write it. Raise :class:`BoardError` if the drive went away. Must return
    within 15 s plus 1 s per :data:`UF2_WRITE_RATE` (100,000) bytes of the image.
    """


@hookspec(firstresult=True)
def picofleet_update_lock(config: GatewayConfig) -> AbstractContextManager[object] | None:
    """Return a context manager holding the platform's update lock while it is entered.

    Called (in a worker thread) when the first board starts flashing; the gateway enters the
    returned context manager and exits it when the last flash in progress ends (one lock for
    all boards, also after errors, on pause and at shutdown). Entering may raise BoardError when
    the lock cannot be taken (the flash then fails with that reason). Return ``None`` to let the
    next plugin answer; the built-in default answers with a lock that holds nothing. Balena's
    update lock is the built-in plugin ``balena_update_lock``
    (``supervisor_bridge/lock_plugin.py``). Must return within 5 s (entering the lock may take
    longer: it waits for a lock someone else holds).
    """


@hookspec(firstresult=True)
def picofleet_restart(board: BoardRef, port: serial.Serial) -> bool | None:
    """Reboot a board into its application firmware (the ENM restart hook).

    Called when ``PUT /v1/devices/{uuid}/restart`` is processed. Return ``True`` once the
    reboot was requested (the gateway then waits for the port to come back), or ``None`` if
    this plugin cannot restart the board. Must return within 5 s.
    """


@hookspec(firstresult=True)
def picofleet_blink(board: BoardRef, port: serial.Serial, seconds: float) -> bool | None:
    """Blink the board's LED so that a person can find it on the rack.

    Called when ``PUT /v1/devices/{uuid}/identify`` is processed. Return ``True`` once the
    board acknowledged, or ``None`` if this plugin cannot blink the board. Must return
    within 2.5 s (the blinking itself goes on for ``seconds`` on the board).
    """


@hookspec(firstresult=True)
def picofleet_evaluation_firmware(
    board: BoardRef, kind: str, config: GatewayConfig
) -> EvaluationFirmware | None:
    """Say which firmware a board needs to run evaluations of ``kind`` (``"pulsecount"``).

    Called (in a worker thread) when boards are reserved, to pick the boards that can run the
    kind, and before a reserved board is prepared. Return an :class:`EvaluationFirmware` (the
    firmware's name and version as ``identify`` reports them, a UF2 image to flash or ``None``,
    files to copy onto the board afterwards), or ``None`` when this plugin does not know the
    board or the board cannot run the kind (it is then never reserved for it). The built-in
    default returns ``None``. Must return within 5 s; raise BoardError when the firmware is
    configured but cannot be read.
    """


@hookspec(firstresult=True)
def picofleet_install_files(board: BoardRef, port: serial.Serial, files: dict[str, bytes]) -> bool | None:
    """Copy files onto a board running MicroPython, then restart it so that they run.

    Called (in a worker thread) while a reserved board is prepared, after the evaluation
    firmware's UF2 was flashed, when its ``files`` are not empty; ``files`` maps paths on the
    board (``main.py``) to their content. Return ``True`` once every file is written and the
    board was reset, ``None`` to let the next plugin answer; the built-in default copies them
    over MicroPython's raw REPL (mpremote). Raise BoardError when the board refuses. Must
    return within 30 s.
    """


@hookspec(firstresult=True)
def picofleet_apply_settings(
    board: BoardRef, port: serial.Serial, environment: dict[str, str], config: dict[str, str]
) -> dict[str, dict[str, str]] | None:
    """Store a board's environment and config on the board, where they survive reboots and power cycles.

    Called (in a worker thread) on a board running its application firmware, when the
    ``Environment``/``Config`` it reported (``identify``) differ from its ``TargetEnvironment``/
    ``TargetConfig`` — not in local mode, while paused or reserved; asked again only when the
    target or the firmware changes. Return what the board now holds,
    ``{"environment": {...}, "config": {...}}`` (the gateway records it as ``Environment``/``Config``),
    or ``None`` when this plugin cannot store settings on this board (the built-in default sends
    picofleet's ``settings`` op and answers ``None`` when the firmware does not know it). Raise
    BoardError with the reason when the board refuses the values. Must return within 2.5 s.
    """


@hookspec(firstresult=True)
def picofleet_write_fpga_image(
    board: BoardRef, port: serial.Serial, image: bytes | None, progress: ProgressCallback
) -> FpgaState | None:
    """Write an iCE40 image (a ``.bin``) to a board's flash, which configures its FPGA from it at every boot.

    Called (in a worker thread) on a board of a type with an FPGA running its application firmware,
    when the image it reported (``identify``) is not its ``TargetFpgaImage`` — not in local mode,
    while paused or reserved; asked again only when the target or the firmware changes. ``image``
    is ``None`` when the board should hold none. Call ``progress(done, total)`` as bytes are sent.
    Return the board's :class:`FpgaState` once it stored the image and tried it (``configured``
    False with ``error`` when the iCE40 refused it), or ``None`` when this plugin cannot write FPGA
    images to this board (the built-in default sends picofleet's ``fpga_begin``/``fpga_chunk``/
    ``fpga_end`` ops and answers ``None`` when the firmware does not know them). Raise BoardError
    with the reason when the board refuses the transfer. Must return within 30 s.
    """
