"""Target state: what each board of a gateway should run, and the shape of a gateway's report.

Pure functions over the store's records (see :mod:`.store`); the HTTP side is :mod:`.app`.

**Which commit.** A board's target commit is its board pin if it has one, else the fleet's target
(its pin if pinned, else its latest release). The board's ``BoardType`` entry of that release gives
the firmware; a board type the release does not cover gets ``commit: null`` and ``firmware: null``
(and so does every board of a fleet without releases).

**Variables** (environment and config alike; later wins):

1. fleet variables (``PUT /v1/fleets/<f>/env/<KEY>``),
2. the release's values for the board type (``fleet.yml`` ``environment`` / ``config``),
3. board variables (``PUT /v1/fleets/<f>/boards/<LocalUUID>/env/<KEY>``).

This mirrors balena's ``device+service > device > fleet+service > fleet`` with the release entry
in the place of the service: board over release over fleet.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any

__all__ = [
    "ENV_KEY",
    "BoardReportError",
    "asset_url",
    "board_target",
    "encode_target",
    "etag_matches",
    "gateway_target",
    "validate_report",
    "variable_key_error",
]

ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
"""Environment and configuration variable names (``BALENA_*`` / ``RESIN_*`` only for config)."""
RESERVED_PREFIXES = ("BALENA_", "RESIN_")
MAX_KEY = 128
MAX_VALUE = 4096
MAX_BOARDS = 1024

_REPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "LocalUUID": (str,),
    "BoardType": (str,),
    "Name": (str, type(None)),
    "Commit": (str, type(None)),
    "Status": (str, type(None)),
    "FirmwareVersion": (str, type(None)),
    "online": (bool,),
    "Progress": (int, float, type(None)),
}
_REQUIRED = ("LocalUUID", "BoardType")
MAX_REASON = 1024
"""The longest ``FailedRelease.reason`` kept (longer ones are cut)."""


def _optional_fields(board: dict[str, Any], where: str) -> dict[str, Any]:
    """The optional report fields (what the board applied, local mode, a failed release), checked."""
    clean: dict[str, Any] = {}
    for name in ("Environment", "Config"):
        value = board.get(name)
        if value is not None and (
            not isinstance(value, dict)
            or len(value) > MAX_BOARDS
            or not all(
                isinstance(k, str) and len(k) <= MAX_KEY and isinstance(v, str) and len(v) <= MAX_VALUE
                for k, v in value.items()
            )
        ):
            raise BoardReportError(f"{where}.{name}: must be null or an object of string values")
        clean[name] = value
    fpga = board.get("FpgaImage")
    if fpga is not None and (not isinstance(fpga, str) or not re.fullmatch(r"[0-9a-f]{64}", fpga)):
        raise BoardReportError(f"{where}.FpgaImage: must be null or a sha256 (64 lower-case hex digits)")
    clean["FpgaImage"] = fpga
    local = board.get("LocalMode", False)
    if not isinstance(local, bool):
        raise BoardReportError(f"{where}.LocalMode: must be true or false")
    clean["LocalMode"] = local
    failed = board.get("FailedRelease")
    if failed is not None:
        if (
            not isinstance(failed, dict)
            or not isinstance(failed.get("commit"), str)
            or not isinstance(failed.get("reason"), str)
            or not isinstance(failed.get("time"), (str, type(None)))
            or len(failed["commit"]) > MAX_KEY
        ):
            raise BoardReportError(f'{where}.FailedRelease: must be null or {{"commit", "reason", "time"?}}')
        failed = {
            "commit": failed["commit"],
            "reason": failed["reason"][:MAX_REASON],
            "time": str(failed.get("time") or "")[:40] or None,
        }
    clean["FailedRelease"] = failed
    return clean


class BoardReportError(ValueError):
    """A gateway's report does not have the documented shape (the message says where)."""


def variable_key_error(kind: str, key: str) -> str | None:
    """Why ``key`` cannot name a variable of ``kind`` (``"env"`` or ``"config"``), or ``None``."""
    if len(key) > MAX_KEY or not ENV_KEY.fullmatch(key):
        return f"invalid {kind} variable name {key!r}: use [A-Z_][A-Z0-9_]* (at most {MAX_KEY} characters)"
    if kind == "env" and key.startswith(RESERVED_PREFIXES):
        return (
            f"invalid env variable name {key!r}: BALENA_* and RESIN_* are configuration variables"
            " (use config)"
        )
    return None


def validate_report(body: Any) -> list[dict[str, Any]]:
    """The boards of a ``PUT /v1/gateway/state`` body, normalised; raise :class:`BoardReportError`."""
    if not isinstance(body, dict) or not isinstance(body.get("boards"), list):
        raise BoardReportError('the body must be a JSON object {"boards": [...]}')
    boards = body["boards"]
    if len(boards) > MAX_BOARDS:
        raise BoardReportError(f"at most {MAX_BOARDS} boards per gateway")
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, board in enumerate(boards):
        where = f"boards[{index}]"
        if not isinstance(board, dict):
            raise BoardReportError(f"{where}: must be an object")
        for name in _REQUIRED:
            if not isinstance(board.get(name), str) or not board[name] or len(board[name]) > 128:
                raise BoardReportError(f"{where}.{name}: required, a non-empty string (at most 128)")
        clean: dict[str, Any] = {}
        for name, types in _REPORT_FIELDS.items():
            value = board.get(name)
            if name == "online":
                value = board.get(name, False)
            if not isinstance(value, types) or (name != "online" and isinstance(value, bool)):
                kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise BoardReportError(f"{where}.{name}: must be {kinds}")
            clean[name] = value
        clean.update(_optional_fields(board, where))
        if clean["LocalUUID"] in seen:
            raise BoardReportError(f"{where}.LocalUUID: {clean['LocalUUID']!r} is reported twice")
        seen.add(clean["LocalUUID"])
        result.append(clean)
    return result


def asset_url(sha256: str) -> str:
    """The URL path of an asset."""
    return f"/v1/assets/{sha256}"


def board_target(
    board: dict[str, Any],
    fleet: dict[str, Any],
    releases: dict[str, dict[str, Any]],
    settings: dict[str, Any] | None,
) -> dict[str, Any]:
    """The target of one reported board: ``commit``, ``firmware``, ``fpga`` (the release's iCE40 image
    for the board type, ``{"sha256", "size", "url"}``, or ``None``), ``environment``, ``config`` and,
    once the operator asked for one, ``retry`` (how many times a release that failed on the board
    was to be retried, ``POST /v1/fleets/<f>/boards/<uuid>/retry``: the gateway flashes a failed
    release again only when this count rises)."""
    settings = settings or {}
    commit = settings.get("pin") or fleet.get("target")
    release = releases.get(commit) if commit else None
    entry = (release or {}).get("boards", {}).get(board["BoardType"]) if release else None
    environment = dict(fleet.get("env") or {})
    config = dict(fleet.get("config") or {})
    firmware: dict[str, Any] | None = None
    fpga: dict[str, Any] | None = None
    if entry is None:
        commit = None
    else:
        image = entry.get("fpga")
        if isinstance(image, dict):
            fpga = {"sha256": image["sha256"], "size": image["size"], "url": asset_url(image["sha256"])}
        environment.update(entry.get("environment") or {})
        config.update(entry.get("config") or {})
        firmware = {
            "sha256": entry["sha256"],
            "size": entry["size"],
            "url": asset_url(entry["sha256"]),
            "kind": entry["kind"],
        }
    environment.update(settings.get("env") or {})
    config.update(settings.get("config") or {})
    target: dict[str, Any] = {
        "commit": commit,
        "firmware": firmware,
        "fpga": fpga,
        "environment": environment,
        "config": config,
    }
    retry = settings.get("retry")
    if isinstance(retry, int) and retry > 0:
        target["retry"] = retry
    return target


def gateway_target(
    fleet: dict[str, Any],
    releases: dict[str, dict[str, Any]],
    boards: list[dict[str, Any]],
    settings: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The target state document of a gateway that reported ``boards``."""
    return {
        "fleet": fleet["name"],
        "boards": {
            board["LocalUUID"]: board_target(board, fleet, releases, settings.get(board["LocalUUID"]))
            for board in boards
        },
    }


def encode_target(document: dict[str, Any]) -> tuple[bytes, str]:
    """The canonical JSON body of a target state and its (strong, quoted) ETag."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, ``*`` matches)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip().removeprefix("W/")
        if candidate in ("*", etag):
            return True
    return False


def new_key(kind: str) -> str:
    """A new secret key such as ``pk_...`` (provisioning) or ``gk_...`` (gateway).

    The prefix says what a key is when it turns up in a log, and keeps a key from starting with
    ``-`` (keys are passed on command lines: ``--provisioning-key KEY``).
    """
    return f"{kind}_{secrets.token_urlsafe(32)}"
