"""`picofleet flash`: a one-off flash of a UF2 onto one board through a gateway, with progress.

    picofleet flash --gateway URL --device UUID FILE [--commit C] [--local-mode] [--timeout SECONDS]

The file is checked locally first (a valid UF2, else one line and exit 1 before any request),
then POSTed to ``URL/v1/devices/UUID/flash[?commit=C][&local_mode=true]``. A board that follows a
fleet is refused unless ``--local-mode`` puts it in local mode (the fleet leaves it alone until
``picofleet local-mode --device UUID off``; docs/api.md, "Local mode"). The device record is then followed
(``GET /v1/devices/UUID`` every 0.1 s): a progress bar on a terminal (bytes written from
``Progress``, then the steps Queued → Installing → Flashing → Starting → Idle), plain lines
otherwise.

Exit 0 when the flash is over (the record's ``PendingFlash`` no longer holds this image) and the
board is Idle with the new firmware: ``Commit == C`` with ``--commit``, and the version the image
carries (its picofleet descriptor) in ``FirmwareVersion`` when it carries one. Exit 1 with the
gateway's reason when it refuses the image (4xx ``error``), when the board ends Broken
(``StatusReason``), when the image did not run and the board was rolled back to its previous one
(``FailedRelease``, with ``--commit``), when another flash replaces this one, or after ``--timeout``
seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from picofleet.client import device_record, error_of
from picofleet.commands.console import StatusLine, add_gateway_flag, bar, positive_seconds
from picofleet.firmware.formats import bitstream, image, uf2

POLL_INTERVAL = 0.1
MAX_FLASH_IMAGE = image.MAX_FLASH_IMAGE


class FlashFailed(Exception):
    """Ends the command with exit status 1 and this one-line reason."""


def _fail(reason: str) -> int:
    print(f"picofleet flash: {' '.join(reason.split())}", file=sys.stderr)
    return 1


def check_uf2(data: bytes, name: str) -> str | None:
    """Validate a UF2 locally; return the firmware version it carries (picofleet descriptor) or None.

    Raises :class:`FlashFailed` naming the problem (the bad block) for anything that is not a UF2.
    """
    try:
        parsed = uf2.read_uf2(data)
    except uf2.UF2Error as error:
        kind = bitstream.detect_kind(data)
        hint = " (it is an iCE40 bitstream)" if kind in ("ice40-asc", "ice40-bin") else ""
        raise FlashFailed(f"{name} is not a valid UF2 file{hint}: {error}") from None
    try:
        return image.uf2_version(parsed)
    except uf2.UF2Error:
        return None  # several families at one address: the gateway picks the board's


class ProgressView:
    """Shows the flash's steps: a ``\\r``-updated bar on a terminal, else one line per change."""

    def __init__(self, out: TextIO, tty: bool):
        self.out = out
        self.tty = tty
        self.status: str | None = None
        self.reason: str | None = None
        self.quarter = -1  # the last 25 % step printed (plain lines)
        self.line = StatusLine(out)

    def say(self, text: str) -> None:
        """A whole line (above the bar on a terminal)."""
        self.line.print(text)

    def update(self, record: dict[str, Any]) -> None:
        """Show what changed in the device record."""
        status = str(record.get("Status"))
        reason = record.get("StatusReason")
        progress = record.get("Progress") or {}
        done, total = progress.get("done"), progress.get("total")
        if reason and reason != self.reason and status != "Broken":
            self.say(f"  {status}: {reason}")
        self.reason = reason
        if self.tty:
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                percent = 100 * done // total
                self.line.show(f"{status:<10} {bar(done, total)} {percent:3d}%  {done}/{total} bytes")
            elif status != self.status:
                full = status in ("Starting", "Idle")
                self.line.show(f"{status:<10} {bar(1 if full else 0, 1)}")
        else:
            if status != self.status:
                self.say(status)
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                quarter = 4 * done // total
                if quarter > self.quarter:
                    self.quarter = quarter
                    self.say(f"  {done}/{total} bytes ({100 * done // total}%)")
        self.status = status

    def finish(self) -> None:
        """End the bar's line, if any."""
        self.line.end()


def _device(client: httpx.Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    if response.status_code != 200:
        raise FlashFailed(error_of(response))
    try:
        return device_record(response)
    except ValueError as error:
        raise FlashFailed(str(error)) from None


def _finished(
    record: dict[str, Any],
    sha256: str,
    commit: str | None,
    version: str | None,
    failed_before: Any = None,
) -> bool:
    """Whether the flash is over: True on success; raises :class:`FlashFailed` on failure.

    ``failed_before``: the record's ``FailedRelease`` before the flash; a new one for ``commit`` says
    the image did not run and the board was rolled back.
    """
    pending = record.get("PendingFlash")
    if isinstance(pending, dict):
        if pending.get("sha256") == sha256:
            return False  # queued or under way
        raise FlashFailed(f"another flash (sha256 {str(pending.get('sha256'))[:12]}…) replaced this one")
    status = record.get("Status")
    if status == "Broken":
        raise FlashFailed(f"the flash failed: {record.get('StatusReason') or 'Broken, no reason given'}")
    if status != "Idle":
        return False
    failed = record.get("FailedRelease")
    if (
        commit is not None
        and isinstance(failed, dict)
        and failed != failed_before
        and failed.get("commit") == commit
    ):
        back = record.get("FirmwareVersion") or "its previous image"
        raise FlashFailed(f"the image did not run ({failed.get('reason')}); rolled back to {back}")
    if commit is not None and record.get("Commit") != commit:
        raise FlashFailed(f"the board is Idle with Commit {record.get('Commit')!r}, not {commit!r}")
    running = record.get("FirmwareVersion") or ""
    if version is not None and not running.endswith(f" {version}"):
        raise FlashFailed(f"the board is Idle running {running or 'unknown firmware'}, not version {version}")
    return True


def flash(
    gateway: str,
    device: str,
    data: bytes,
    *,
    commit: str | None,
    version: str | None,
    timeout: float,
    view: ProgressView,
    local_mode: bool = False,
) -> dict[str, Any]:
    """POST ``data`` and follow the device until it is Idle with it; the final record.

    Raises :class:`FlashFailed` (refused, Broken, replaced, timed out) or ``httpx.HTTPError``.
    """
    deadline = time.monotonic() + timeout
    sha256 = hashlib.sha256(data).hexdigest()
    path = f"/v1/devices/{quote(device, safe='')}"
    with httpx.Client(base_url=gateway.rstrip("/"), timeout=min(timeout, 30.0)) as client:
        before = _device(client, path)
        params = {"commit": commit} if commit is not None else {}
        if local_mode:
            params["local_mode"] = "true"
        response = client.post(
            path + "/flash",
            content=data,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
            timeout=max(deadline - time.monotonic(), 1.0),
        )
        if response.status_code != 202:
            raise FlashFailed(f"the gateway refused the image ({response.status_code}): {error_of(response)}")
        name = before.get("Name") or device
        view.say(
            f"flashing {len(data)} bytes onto {name} ({before.get('LocalUUID', device)}), "
            f"running {before.get('FirmwareVersion') or 'unknown firmware'}"
        )
        record = before
        last_error: Exception | None = None
        started = False  # the board left the status it had before: the flash is under way
        while True:
            try:
                record = _device(client, path)
                last_error = None
            except httpx.TransportError as error:  # a gateway restart: keep following until the limit
                last_error = error
            else:
                pending = record.get("PendingFlash")
                queued = isinstance(pending, dict) and pending.get("sha256") == sha256
                started = started or not queued or record.get("Status") != before.get("Status")
                view.update(record if started else {**record, "Status": "Queued", "StatusReason": None})
                if _finished(record, sha256, commit, version, before.get("FailedRelease")):
                    return record
            if time.monotonic() >= deadline:
                where = f"{record.get('Status')}" + (
                    f" ({record['StatusReason']})" if record.get("StatusReason") else ""
                )
                extra = f"; last error: {last_error}" if last_error else ""
                raise FlashFailed(f"timed out after {timeout:g} s; the device is {where}{extra}")
            time.sleep(min(POLL_INTERVAL, max(deadline - time.monotonic(), 0.0)))


def run(args: argparse.Namespace) -> int:
    """Flash a UF2 onto one board through a gateway and wait until it runs the new firmware."""
    try:
        with open(args.file, "rb") as handle:
            data = handle.read(MAX_FLASH_IMAGE * 2 + 1)
    except OSError as error:
        return _fail(f"{args.file}: {error.strerror or error}")
    if len(data) > MAX_FLASH_IMAGE * 2:
        return _fail(f"{args.file} is larger than a UF2 for {MAX_FLASH_IMAGE >> 20} MiB of flash")
    view = ProgressView(sys.stdout, sys.stdout.isatty())
    started = time.monotonic()
    try:
        version = check_uf2(data, args.file)
        record = flash(
            args.gateway,
            args.device,
            data,
            commit=args.commit,
            version=version,
            timeout=args.timeout,
            view=view,
            local_mode=args.local_mode,
        )
    except FlashFailed as error:
        view.finish()
        return _fail(str(error))
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        view.finish()
        return _fail(f"cannot talk to the gateway at {args.gateway}: {error or type(error).__name__}")
    view.finish()
    commit = f", Commit {record.get('Commit')}" if record.get("Commit") else ""
    running = record.get("FirmwareVersion") or "unknown firmware"
    name = record.get("Name") or args.device
    local = ", in local mode" if record.get("LocalMode") else ""
    print(f"{name}: Idle, running {running}{commit}{local} ({time.monotonic() - started:.1f} s)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `picofleet flash`."""
    parser = subparsers.add_parser(
        "flash", help="flash a UF2 onto one board through a gateway", description=run.__doc__
    )
    add_gateway_flag(parser)
    parser.add_argument(
        "--device", required=True, metavar="UUID", help="the board's LocalUUID (USB serial) or ResinUUID"
    )
    parser.add_argument("file", metavar="FILE", help="the UF2 file")
    parser.add_argument(
        "--commit", default=None, metavar="C", help="record C as the device's Commit on success"
    )
    parser.add_argument(
        "--local-mode",
        action="store_true",
        help="flash a board that follows a fleet: it enters local mode, and the fleet leaves it alone"
        " until `picofleet local-mode --device UUID off`",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=120.0,
        metavar="SECONDS",
        help="give up after this long (default 120)",
    )
    parser.set_defaults(run=run)
