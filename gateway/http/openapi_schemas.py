"""The schemas of the gateway's OpenAPI document (:mod:`.openapi`): its bodies (a device, the status,
a reservation, a bitstream, an evaluation result...); the helpers that write them, and the error
body, are :mod:`picofleet.common.http.openapi`'s."""

from __future__ import annotations

from typing import Any

from picofleet.common.http.openapi import object_schema
from picofleet.gateway.boards.record import ENM_FIELDS, Status
from picofleet.gateway.evaluation.clients import NAME
from picofleet.gateway.evaluation.jobs import ARG_RANGES

NULLABLE_OBJECT = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}

DEVICE = object_schema(
    {
        "ApplicationUUID": {"type": ["integer", "string", "null"]},
        "BoardType": {"type": "string", "examples": ["pico2-ice", "rp2040", "rp2350"]},
        "Name": {"type": "string", "examples": ["holy-sunset"]},
        "LocalUUID": {"type": "string", "description": "the board's USB serial number"},
        "ResinUUID": {"type": "string", "description": "stable random UUID given at provisioning"},
        "Commit": {"type": ["string", "null"]},
        "TargetCommit": {"type": ["string", "null"]},
        "Status": {"type": "string", "enum": [status.value for status in Status]},
        "Config": NULLABLE_OBJECT,
        "TargetConfig": NULLABLE_OBJECT,
        "Environment": NULLABLE_OBJECT,
        "TargetEnvironment": NULLABLE_OBJECT,
        "RestartFlag": {"type": "boolean"},
        "DeleteFlag": {"type": "boolean"},
        "Port": {"type": ["string", "null"], "description": "serial device path, null when not held"},
        "UsbPort": {"type": ["string", "null"], "description": "the USB port the board was last seen on"},
        "FirmwareVersion": {"type": ["string", "null"], "description": "what the firmware said it is"},
        "StatusReason": {"type": ["string", "null"], "description": "why the board is Broken or waiting"},
        "Progress": object_schema(
            {"done": {"type": "integer"}, "total": {"type": "integer"}, "percent": {"type": "number"}},
            nullable=True,
        ),
        "PendingFlash": object_schema(
            {
                "sha256": {"type": "string"},
                "commit": {"type": ["string", "null"]},
                "version": {"type": ["string", "null"]},
                "retry": {"type": "integer", "description": "the fleet's retry count (only when above 0)"},
            },
            nullable=True,
            description="the flash queued or under way; resumed after a power cut",
        ),
        "LocalMode": {
            "type": "boolean",
            "description": "in local mode the fleet sync leaves the board alone (docs/api.md, Local mode)",
        },
        "FailedRelease": object_schema(
            {
                "commit": {"type": "string"},
                "reason": {"type": "string"},
                "time": {"type": "string", "description": "UTC, ISO 8601"},
                "retry": {"type": "integer", "description": "the fleet's retry count it failed under"},
            },
            nullable=True,
            description="a release that did not run on the board and was rolled back (docs/api.md, Rollback)",
        ),
        "RunningImage": object_schema(
            {
                "sha256": {"type": "string"},
                "commit": {"type": ["string", "null"]},
                "version": {"type": ["string", "null"]},
            },
            nullable=True,
            description="the last image the gateway flashed that booted: what a rollback returns to",
        ),
    },
    required=[*ENM_FIELDS, "Port"],
)
STATUS = object_schema(
    {
        "currentStatus": {"type": "string", "enum": ["Running", "Paused"]},
        "targetStatus": {"type": "string", "enum": ["Running", "Paused"]},
    }
)


IDENTIFY = object_schema(
    {
        "blinking": {"type": "boolean"},
        "seconds": {"type": "integer", "description": "how long the supervisor blinks the LED"},
        "boards": {
            "type": "array",
            "items": {"type": "string"},
            "description": "boards asked to blink too (feature flag IDENTIFY_BOARDS), by LocalUUID",
        },
    }
)
SUPERVISOR = object_schema(
    {
        "enabled": {"type": "boolean", "description": "false outside balena"},
        "state": {"type": "string", "enum": ["off", "waiting", "ready"]},
        "address": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"], "description": "why it is off or waiting"},
        "attempts": {"type": "integer"},
        "device": {"type": "object", "description": "uuid, name, appId, deviceType from balena"},
        "supervisor": {"type": ["object", "null"], "description": "the supervisor's GET /v1/device"},
        "applications": {"type": ["object", "null"], "description": "GET /v2/applications/state"},
        "dependent": {
            "type": ["object", "null"],
            "description": "serving a balena dependent app: appId, app (GET /v1/dependent-apps), "
            "registered ({LocalUUID: {uuid, name, appId}}), reason; null otherwise",
        },
        "updateLock": object_schema(
            {
                "enabled": {"type": "boolean"},
                "files": {
                    "type": "array",
                    "items": object_schema(
                        {
                            "path": {"type": "string"},
                            "state": {"type": "string", "enum": ["free", "ours", "held", "stale"]},
                            "pid": {"type": ["integer", "null"]},
                        }
                    ),
                },
            }
        ),
    }
)


HOOK_ANSWER = object_schema(
    {
        "device": {"type": ["string", "null"], "description": "the device's ResinUUID"},
        "commit": {"type": ["string", "null"]},
        "state": {"type": "string", "enum": ["applied", "downloading", "flashing", "waiting"]},
        "reason": {"type": "string"},
        "error": {"type": "string"},
    },
    description="serving a balena dependent app (docs/balena.md): where the board stands",
)
DELETED = object_schema(
    {"deleted": {"type": "boolean"}, "device": {"type": ["string", "null"]}, "reason": {"type": "string"}},
    required=["deleted"],
)


RESERVATION = object_schema(
    {
        "serial": {"type": "string", "description": "the board's LocalUUID"},
        "name": {"type": "string", "description": "the client holding it"},
        "kind": {"type": "string", "enum": ["pulsecount"]},
        "args": {"type": "object", "description": "default evaluation arguments (clock_hz, window_ms)"},
        "created_at": {"type": "number", "description": "epoch seconds"},
        "expires_at": {"type": "number", "description": "epoch seconds"},
        "state": {"type": "string", "enum": ["preparing", "ready"]},
    }
)
RESERVATIONS = {"type": "array", "items": RESERVATION}
SERIALS = {
    "type": ["array", "null"],
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "uniqueItems": True,
    "description": "board serials (LocalUUID); null or absent: any",
}
NOT_COUNT_AND_SERIALS: dict[str, Any] = {
    "not": {
        "properties": {"count": {"type": "integer"}, "serials": {"type": "array"}},
        "required": ["count", "serials"],
    }
}
"""Not a reservation request naming both a count and serials (refused: give one of them)."""
PULSECOUNT_ARGS = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "properties": {
        name: {"type": "integer", "minimum": low, "maximum": high} for name, (low, high) in ARG_RANGES.items()
    },
    "description": "evaluation arguments (whole numbers): the CLK frequency and the counting window",
}
CLIENT_NAME = {
    "type": "string",
    "pattern": f"^{NAME.pattern}$",
    "description": "the client: 1 to 64 letters, digits or . _ @ + -, starting with a letter or digit",
}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
BITSTREAM = object_schema(
    {
        "sha256": {**SHA256, "description": "of the .bin the boards run"},
        "size": {"type": "integer"},
        "source": {"type": "string", "enum": ["asc", "bin"], "description": "what was uploaded"},
    }
)
EVALUATION_RESULT = object_schema(
    {
        "evaluation": {"type": "string"},
        "serial": {"type": ["string", "null"]},
        "sha256": SHA256,
        "label": {"type": ["string", "null"]},
        "pulses": {"type": "integer"},
        "error": {"type": "string"},
        "done": {"type": "boolean"},
        "results": {"type": "integer"},
        "failed": {"type": "integer"},
    },
    description="one line per evaluation as it completes (pulses or error), then "
    '{"evaluation", "done": true, "results", "failed"}',
)
