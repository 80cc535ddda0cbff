"""The OpenAPI 3.1 document served at ``/openapi.json`` (kept in step with the routes by a test)."""

from __future__ import annotations

from typing import Any

from picofleet import __version__
from picofleet.gateway.boards.record import ENM_FIELDS, Status


def _object(properties: dict[str, Any], *, nullable: bool = False, **keywords: Any) -> dict[str, Any]:
    """An object schema with ``properties``; ``keywords`` (``required``, ``description``) go before them."""
    return {"type": ["object", "null"] if nullable else "object", **keywords, "properties": properties}


_ERROR = _object({"error": {"type": "string"}}, required=["error"])
_NULLABLE_OBJECT = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}

_DEVICE = _object(
    {
        "ApplicationUUID": {"type": ["integer", "string", "null"]},
        "BoardType": {"type": "string", "examples": ["pico2-ice", "rp2040", "rp2350"]},
        "Name": {"type": "string", "examples": ["holy-sunset"]},
        "LocalUUID": {"type": "string", "description": "the board's USB serial number"},
        "ResinUUID": {"type": "string", "description": "stable random UUID given at provisioning"},
        "Commit": {"type": ["string", "null"]},
        "TargetCommit": {"type": ["string", "null"]},
        "Status": {"type": "string", "enum": [status.value for status in Status]},
        "Config": _NULLABLE_OBJECT,
        "TargetConfig": _NULLABLE_OBJECT,
        "Environment": _NULLABLE_OBJECT,
        "TargetEnvironment": _NULLABLE_OBJECT,
        "RestartFlag": {"type": "boolean"},
        "DeleteFlag": {"type": "boolean"},
        "Port": {"type": ["string", "null"], "description": "serial device path, null when not held"},
        "UsbPort": {"type": ["string", "null"], "description": "the USB port the board was last seen on"},
        "FirmwareVersion": {"type": ["string", "null"], "description": "what the firmware said it is"},
        "StatusReason": {"type": ["string", "null"], "description": "why the board is Broken or waiting"},
        "Progress": _object(
            {"done": {"type": "integer"}, "total": {"type": "integer"}, "percent": {"type": "number"}},
            nullable=True,
        ),
        "PendingFlash": _object(
            {
                "sha256": {"type": "string"},
                "commit": {"type": ["string", "null"]},
                "version": {"type": ["string", "null"]},
            },
            nullable=True,
            description="the flash queued or under way; resumed after a power cut",
        ),
    },
    required=[*ENM_FIELDS, "Port"],
)
_STATUS = _object(
    {
        "currentStatus": {"type": "string", "enum": ["Running", "Paused"]},
        "targetStatus": {"type": "string", "enum": ["Running", "Paused"]},
    }
)


_IDENTIFY = _object(
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
_SUPERVISOR = _object(
    {
        "enabled": {"type": "boolean", "description": "false outside balena"},
        "state": {"type": "string", "enum": ["off", "waiting", "ready"]},
        "address": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"], "description": "why it is off or waiting"},
        "attempts": {"type": "integer"},
        "device": {"type": "object", "description": "uuid, name, appId, deviceType from balena"},
        "supervisor": {"type": ["object", "null"], "description": "the supervisor's GET /v1/device"},
        "applications": {"type": ["object", "null"], "description": "GET /v2/applications/state"},
        "updateLock": _object(
            {
                "enabled": {"type": "boolean"},
                "files": {
                    "type": "array",
                    "items": _object(
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


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error", **_json(_ERROR)} for code in codes}


_UUID = [
    {
        "name": "uuid",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "LocalUUID (USB serial) or ResinUUID",
    }
]


_RESERVATION = _object(
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
_RESERVATIONS = {"type": "array", "items": _RESERVATION}
_SERIALS = {"type": "array", "items": {"type": "string"}, "minItems": 1}
_BEARER = "Authorization: Bearer <token> of the client name (403 otherwise)"


def _reservation_paths() -> dict[str, Any]:
    """The reservation routes and the event websocket (docs/api.md, "Reservations", "Events")."""
    return {
        "/v1/reservations": {
            "get": {
                "summary": "Every reservation, or one client's (never a token)",
                "parameters": [
                    {"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "reservations",
                        **_json(_object({"reservations": _RESERVATIONS})),
                    }
                },
            },
            "post": {
                "summary": "Reserve boards (a new name gets its token; a known name needs it)",
                "description": _BEARER + " for a name that has a token already",
                "requestBody": {
                    "required": True,
                    **_json(
                        _object(
                            {
                                "name": {"type": "string"},
                                "kind": {"type": "string", "enum": ["pulsecount"]},
                                "count": {"type": "integer", "minimum": 1},
                                "serials": _SERIALS,
                                "args": {"type": "object"},
                                "seconds": {"type": "number", "exclusiveMinimum": 0},
                            },
                            required=["name"],
                        )
                    ),
                },
                "responses": {
                    "201": {
                        "description": "reserved",
                        **_json(
                            _object(
                                {
                                    "name": {"type": "string"},
                                    "token": {"type": "string"},
                                    "reservations": _RESERVATIONS,
                                }
                            )
                        ),
                    },
                    **_errors(400, 403, 404, 409),
                },
            },
        },
        "/v1/reservations/extend": {
            "post": {
                "summary": "Extend reservations (default: all of the name's)",
                "description": _BEARER,
                "requestBody": {
                    "required": True,
                    **_json(
                        _object(
                            {
                                "name": {"type": "string"},
                                "serials": _SERIALS,
                                "seconds": {"type": "number", "exclusiveMinimum": 0},
                            },
                            required=["name"],
                        )
                    ),
                },
                "responses": {
                    "200": {
                        "description": "extended",
                        **_json(_object({"reservations": _RESERVATIONS})),
                    },
                    **_errors(400, 403, 404),
                },
            },
        },
        "/v1/reservations/end": {
            "post": {
                "summary": "End reservations (default: all of the name's)",
                "description": _BEARER,
                "requestBody": {
                    "required": True,
                    **_json(_object({"name": {"type": "string"}, "serials": _SERIALS}, required=["name"])),
                },
                "responses": {
                    "200": {
                        "description": "ended",
                        **_json(_object({"ended": {"type": "array", "items": {"type": "string"}}})),
                    },
                    **_errors(400, 403, 404),
                },
            },
        },
        "/v1/events": {
            "get": {
                "summary": "WebSocket of the client's events (JSON text messages)",
                "description": "Authorization: Bearer <token>, or ?token=; first message "
                '{"event": "subscribed", ...}',
                "parameters": [
                    {"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {"101": {"description": "switching to the WebSocket protocol"}, **_errors(403)},
            },
        },
    }


_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_BITSTREAM = _object(
    {
        "sha256": {**_SHA256, "description": "of the .bin the boards run"},
        "size": {"type": "integer"},
        "source": {"type": "string", "enum": ["asc", "bin"], "description": "what was uploaded"},
    }
)
_EVALUATION_RESULT = _object(
    {
        "evaluation": {"type": "string"},
        "serial": {"type": ["string", "null"]},
        "sha256": _SHA256,
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


def _evaluation_paths() -> dict[str, Any]:
    """The bitstream and evaluation routes (docs/api.md, "Bitstreams", "Evaluations")."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    sha_parameter = [{"name": "sha256", "in": "path", "required": True, "schema": _SHA256}]
    found = {"200": {"description": "the gateway has it", **_json(_BITSTREAM)}, **_errors(400, 404)}
    return {
        "/v1/bitstreams": {
            "put": {
                "summary": "Upload an iCE40 UP5K bitstream (.asc is packed to .bin once)",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": binary, "text/plain": binary},
                },
                "responses": {
                    "201": {"description": "stored", **_json(_BITSTREAM)},
                    **_errors(400, 413, 422, 507),
                },
            },
        },
        "/v1/bitstreams/{sha256}": {
            "parameters": sha_parameter,
            "get": {
                "summary": "Whether the gateway has a bitstream (.bin or packed .asc)",
                "responses": found,
            },
            "head": {"summary": "Whether the gateway has a bitstream", "responses": found},
        },
        "/v1/evaluations": {
            "post": {
                "summary": "Evaluate bitstreams on reserved boards; results stream as NDJSON",
                "description": _BEARER,
                "requestBody": {
                    "required": True,
                    **_json(
                        _object(
                            {
                                "name": {"type": "string"},
                                "bitstreams": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _object(
                                        {"sha256": _SHA256, "label": {"type": "string"}}, required=["sha256"]
                                    ),
                                },
                                "serials": _SERIALS,
                                "mode": {"type": "string", "enum": ["each", "any"]},
                                "args": _object(
                                    {
                                        "clock_hz": {"type": "integer", "minimum": 1, "maximum": 50_000_000},
                                        "window_ms": {"type": "integer", "minimum": 1, "maximum": 60_000},
                                    }
                                ),
                            },
                            required=["name", "bitstreams"],
                        )
                    ),
                },
                "responses": {
                    "200": {
                        "description": "the results, one JSON object per line",
                        "content": {"application/x-ndjson": {"schema": _EVALUATION_RESULT}},
                    },
                    **_errors(400, 403, 404, 409, 413, 422),
                },
            },
        },
        "/v1/evaluations/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "summary": "An evaluation's results so far",
                "description": _BEARER,
                "responses": {
                    "200": {
                        "description": "the evaluation",
                        **_json(
                            _object(
                                {
                                    "evaluation": {"type": "string"},
                                    "name": {"type": "string"},
                                    "mode": {"type": "string", "enum": ["each", "any"]},
                                    "done": {"type": "boolean"},
                                    "units": {"type": "integer"},
                                    "failed": {"type": "integer"},
                                    "results": {"type": "array", "items": _EVALUATION_RESULT},
                                }
                            )
                        ),
                    },
                    **_errors(403, 404),
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document of the gateway API."""
    ok = {"200": {"description": "acknowledged"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "picofleet gateway",
            "version": __version__,
            "description": "edge-node-manager's API (byte-compatible) plus picofleet's additions",
        },
        "paths": {
            "/v1/enm/status": {
                "get": {
                    "summary": "Gateway status",
                    "responses": {"200": {"description": "status", **_json(_STATUS)}},
                },
                "put": {
                    "summary": "Pause or run the gateway; Paused frees every serial port",
                    "requestBody": {
                        "required": True,
                        **_json(
                            _object(
                                {"targetStatus": {"type": "string", "enum": ["Paused", "Running"]}},
                                required=["targetStatus"],
                            )
                        ),
                    },
                    "responses": {**ok, **_errors(400)},
                },
            },
            "/v1/enm/identify": {
                "put": {
                    "summary": "Blink the Pi's LED through the balena supervisor, to find the gateway",
                    "responses": {
                        "200": {"description": "blinking", **_json(_IDENTIFY)},
                        **_errors(409, 502, 503),
                    },
                },
            },
            "/v1/enm/supervisor": {
                "get": {
                    "summary": "The balena supervisor bridge and the update lock",
                    "responses": {"200": {"description": "state", **_json(_SUPERVISOR)}},
                },
            },
            "/v1/devices": {
                "get": {
                    "summary": "All devices",
                    "responses": {
                        "200": {"description": "devices", **_json({"type": "array", "items": _DEVICE})}
                    },
                },
            },
            "/v1/devices/{uuid}": {
                "parameters": _UUID,
                "get": {
                    "summary": "One device",
                    "responses": {"200": {"description": "device", **_json(_DEVICE)}, **_errors(404)},
                },
                "put": {
                    "summary": "Supervisor hook: target commit, environment and config",
                    "requestBody": {
                        "required": True,
                        **_json(
                            _object(
                                {
                                    "appId": {},
                                    "commit": {"type": ["string", "null"]},
                                    "environment": _NULLABLE_OBJECT,
                                    "config": _NULLABLE_OBJECT,
                                }
                            )
                        ),
                    },
                    "responses": {**ok, **_errors(400, 404)},
                },
                "delete": {
                    "summary": "Supervisor hook: forget the device",
                    "responses": {**ok, **_errors(404)},
                },
            },
            "/v1/devices/{uuid}/restart": {
                "parameters": _UUID,
                "put": {
                    "summary": "Supervisor hook: restart the device",
                    "responses": {**ok, **_errors(404)},
                },
            },
            "/v1/devices/{uuid}/identify": {
                "parameters": _UUID,
                "put": {"summary": "Blink the device's LED", "responses": {**ok, **_errors(404, 409)}},
            },
            "/v1/devices/{uuid}/flash": {
                "parameters": [
                    *_UUID,
                    {"name": "commit", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "post": {
                    "summary": "Flash a UF2 image onto the device",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "responses": {"202": {"description": "queued"}, **_errors(400, 404, 409, 413, 422)},
                },
            },
            **_reservation_paths(),
            **_evaluation_paths(),
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
            },
        },
    }
