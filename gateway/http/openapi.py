"""The OpenAPI 3.1 document served at ``/openapi.json``: the paths of every route, their parameters
and answers (the schemas they name are in :mod:`.openapi_schemas`; kept in step with the routes by
tests/test_enm_api.py, test_reservations.py and test_supervisor_bridge.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from picofleet import __version__
from picofleet.common.http.openapi import (
    ERROR,
    METRICS_PATH,
    error_responses,
    json_content,
    object_schema,
)
from picofleet.gateway.http.context import gateway_of
from picofleet.gateway.http.devices import COMMIT
from picofleet.gateway.http.openapi_schemas import (
    BITSTREAM,
    CLIENT_NAME,
    DELETED,
    DEVICE,
    EVALUATION_RESULT,
    HOOK_ANSWER,
    IDENTIFY,
    NOT_COUNT_AND_SERIALS,
    NULLABLE_OBJECT,
    PULSECOUNT_ARGS,
    RESERVATIONS,
    SERIALS,
    SHA256,
    STATUS,
    SUPERVISOR,
)
from picofleet.gateway.http.reservations import MAX_COUNT

__all__ = ["EVENTS_PATH", "KEYED", "ROUTES", "SECURITY_SCHEMES", "openapi", "openapi_document"]

DEFAULT_MAX_SECONDS = 86_400
"""The default ``reservation_max_seconds`` (gateway/config.py), for a document built without a gateway."""

_UUID = [
    {
        "name": "uuid",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "LocalUUID (USB serial) or ResinUUID",
    }
]

_BEARER = "Authorization: Bearer <token> of the client name (403 otherwise)"

KEYED: list[dict[str, list[str]]] = [{}, {"apiKey": []}, {"panelSession": []}]
"""The security of the state-changing ENM routes: none unless PICOFLEET_API_KEY is set; then the key
(``X-Api-Key``) or the control panel's session (gateway/http/guard.py)."""
_KEYED_ERRORS = error_responses(401, 403)
"""What a guarded route answers without the key (401), or from a session without the CSRF header (403)."""
SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "The gateway's PICOFLEET_API_KEY, when one is set (docs/api.md, \"Protecting a "
        'gateway on 0.0.0.0"): the state-changing ENM routes then answer 401 without it. Reads, the '
        "event stream and the reservation routes (their client tokens) need no key.",
    },
    "panelSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "picofleet_session",
        "description": "The control panel's session, after signing in with the key; an unsafe method "
        "also needs the X-Picofleet-Request header (403 otherwise)",
    },
}

EVENTS_PATH: dict[str, Any] = {
    "get": {
        "summary": 'The gateway\'s live events (Server-Sent Events; docs/api.md, "Live events")',
        "description": "On connect: `devices` (GET /v1/devices), `status` (GET /v1/enm/status), "
        "`reservations` (GET /v1/reservations), `evaluations` (the running evaluations with their "
        "progress); then `device` (one record after it changed), `device-removed` ({uuid}), `status`, "
        "`reservations`, `evaluations` (at most 5 a second) as things change. Coalesced: the latest "
        "state, never a backlog; a `: keep-alive` comment every 15 s; no key needed.",
        "responses": {
            "200": {
                "description": "an endless text/event-stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        },
    }
}

_COMMIT = {
    "type": "string",
    "pattern": f"^{COMMIT.pattern}$",
    "description": "1 to 64 letters, digits, '.', '_' or '-' (a 400 otherwise)",
}


def _reservation_paths(max_seconds: int) -> dict[str, Any]:
    """The reservation routes and the event websocket (docs/api.md, "Reservations", "Events");
    ``max_seconds`` is the gateway's ``reservation_max_seconds``."""
    seconds = {"type": "number", "exclusiveMinimum": 0, "maximum": max_seconds}
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
                        **json_content(object_schema({"reservations": RESERVATIONS})),
                    }
                },
            },
            "post": {
                "summary": "Reserve boards (a new name gets its token; a known name needs it)",
                "description": _BEARER + " for a name that has a token already",
                "requestBody": {
                    "required": True,
                    **json_content(
                        object_schema(
                            {
                                "name": CLIENT_NAME,
                                "kind": {"type": "string", "enum": ["pulsecount"]},
                                "count": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_COUNT},
                                "serials": SERIALS,
                                "args": PULSECOUNT_ARGS,
                                "seconds": seconds,
                            },
                            required=["name"],
                            description="count or serials, not both (neither: one board)",
                            **NOT_COUNT_AND_SERIALS,
                        )
                    ),
                },
                "responses": {
                    "201": {
                        "description": "reserved",
                        **json_content(
                            object_schema(
                                {
                                    "name": {"type": "string"},
                                    "token": {"type": "string"},
                                    "reservations": RESERVATIONS,
                                }
                            )
                        ),
                    },
                    **error_responses(400, 403, 404, 409),
                },
            },
        },
        "/v1/reservations/extend": {
            "post": {
                "summary": "Extend reservations (default: all of the name's)",
                "description": _BEARER,
                "requestBody": {
                    "required": True,
                    **json_content(
                        object_schema(
                            {
                                "name": CLIENT_NAME,
                                "serials": SERIALS,
                                "seconds": seconds,
                            },
                            required=["name"],
                        )
                    ),
                },
                "responses": {
                    "200": {
                        "description": "extended",
                        **json_content(object_schema({"reservations": RESERVATIONS})),
                    },
                    **error_responses(400, 403, 404),
                },
            },
        },
        "/v1/reservations/end": {
            "post": {
                "summary": "End reservations (default: all of the name's)",
                "description": _BEARER,
                "requestBody": {
                    "required": True,
                    **json_content(
                        object_schema({"name": CLIENT_NAME, "serials": SERIALS}, required=["name"])
                    ),
                },
                "responses": {
                    "200": {
                        "description": "ended",
                        **json_content(
                            object_schema({"ended": {"type": "array", "items": {"type": "string"}}})
                        ),
                    },
                    **error_responses(400, 403, 404),
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
                "responses": {
                    "101": {"description": "switching to the WebSocket protocol"},
                    **error_responses(403),
                    "426": {
                        "description": "a plain GET without Upgrade: websocket",
                        "headers": {"Upgrade": {"schema": {"type": "string", "const": "websocket"}}},
                        **json_content(ERROR),
                    },
                },
            },
        },
    }


def _evaluation_paths() -> dict[str, Any]:
    """The bitstream and evaluation routes (docs/api.md, "Bitstreams", "Evaluations")."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    sha_parameter = [{"name": "sha256", "in": "path", "required": True, "schema": SHA256}]
    found = {
        "200": {"description": "the gateway has it", **json_content(BITSTREAM)},
        **error_responses(400, 404),
    }
    return {
        "/v1/bitstreams": {
            "put": {
                "summary": "Upload an iCE40 UP5K bitstream (.asc is packed to .bin once)",
                "requestBody": {
                    "required": True,
                    "description": "the bitstream itself: a .bin (application/octet-stream) or an .asc "
                    "(text/plain); an empty body is 400, one that is not an iCE40 UP5K bitstream 422",
                    "content": {
                        "application/octet-stream": {"schema": {**binary["schema"], "minLength": 1}},
                        "text/plain": {"schema": {"type": "string", "minLength": 1}},
                    },
                },
                "responses": {
                    "201": {"description": "stored", **json_content(BITSTREAM)},
                    **error_responses(400, 413, 422, 507),
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
                    **json_content(
                        object_schema(
                            {
                                "name": CLIENT_NAME,
                                "bitstreams": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": object_schema(
                                        {"sha256": SHA256, "label": {"type": "string"}}, required=["sha256"]
                                    ),
                                },
                                "serials": SERIALS,
                                "mode": {"type": "string", "enum": ["each", "any"]},
                                "args": PULSECOUNT_ARGS,
                            },
                            required=["name", "bitstreams"],
                        )
                    ),
                },
                "responses": {
                    "200": {
                        "description": "the results, one JSON object per line",
                        "content": {"application/x-ndjson": {"schema": EVALUATION_RESULT}},
                    },
                    **error_responses(400, 403, 404, 409, 413, 422),
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
                        **json_content(
                            object_schema(
                                {
                                    "evaluation": {"type": "string"},
                                    "name": {"type": "string"},
                                    "mode": {"type": "string", "enum": ["each", "any"]},
                                    "done": {"type": "boolean"},
                                    "units": {"type": "integer"},
                                    "failed": {"type": "integer"},
                                    "results": {"type": "array", "items": EVALUATION_RESULT},
                                }
                            )
                        ),
                    },
                    **error_responses(403, 404),
                },
            },
        },
    }


def openapi_document(reservation_max_seconds: int = DEFAULT_MAX_SECONDS) -> dict[str, Any]:
    """Return the OpenAPI document of the gateway API (with the gateway's ``reservation_max_seconds``)."""
    ok = {"200": {"description": "acknowledged"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "picofleet gateway",
            "version": __version__,
            "description": "edge-node-manager's API (with the differences docs/api.md lists) plus "
            "picofleet's additions",
        },
        "paths": {
            "/v1/enm/status": {
                "get": {
                    "summary": "Gateway status",
                    "responses": {"200": {"description": "status", **json_content(STATUS)}},
                },
                "put": {
                    "summary": "Pause or run the gateway; Paused frees every serial port",
                    "requestBody": {
                        "required": True,
                        **json_content(
                            object_schema(
                                {"targetStatus": {"type": "string", "enum": ["Paused", "Running"]}},
                                required=["targetStatus"],
                            )
                        ),
                    },
                    "security": KEYED,
                    "responses": {**ok, **error_responses(400), **_KEYED_ERRORS},
                },
            },
            "/v1/enm/identify": {
                "put": {
                    "summary": "Blink the Pi's LED through the balena supervisor, to find the gateway",
                    "security": KEYED,
                    "responses": {
                        "200": {"description": "blinking", **json_content(IDENTIFY)},
                        **error_responses(409, 502, 503),
                        **_KEYED_ERRORS,
                    },
                },
            },
            "/v1/enm/supervisor": {
                "get": {
                    "summary": "The balena supervisor bridge and the update lock",
                    "responses": {"200": {"description": "state", **json_content(SUPERVISOR)}},
                },
            },
            "/v1/devices": {
                "get": {
                    "summary": "All devices",
                    "responses": {
                        "200": {"description": "devices", **json_content({"type": "array", "items": DEVICE})}
                    },
                },
            },
            "/v1/devices/{uuid}": {
                "parameters": _UUID,
                "get": {
                    "summary": "One device",
                    "responses": {
                        "200": {"description": "device", **json_content(DEVICE)},
                        **error_responses(404),
                    },
                },
                "put": {
                    "summary": "Supervisor hook: target commit, environment and config",
                    "description": "With an API key set, the key is needed, except while the gateway "
                    "serves a balena dependent app (the supervisor sends none)",
                    "security": KEYED,
                    "requestBody": {
                        "required": True,
                        **json_content(
                            object_schema(
                                {
                                    "appId": {},
                                    "commit": {"oneOf": [_COMMIT, {"type": "null"}]},
                                    "environment": NULLABLE_OBJECT,
                                    "config": NULLABLE_OBJECT,
                                }
                            )
                        ),
                    },
                    "responses": {
                        "200": {
                            "description": "stored; serving a balena dependent app the board runs the "
                            "commit, and the body is the HOOK_ANSWER of the 202",
                        },
                        "202": {
                            "description": "serving a balena dependent app: the commit is on its way",
                            **json_content(HOOK_ANSWER),
                        },
                        **error_responses(400, 404),
                        **_KEYED_ERRORS,
                        **{
                            str(code): {"description": "error", **json_content(HOOK_ANSWER)}
                            for code in (409, 422, 503)
                        },
                    },
                },
                "delete": {
                    "summary": "Supervisor hook: forget the device (idempotent: unknown uuid, 200 too)",
                    "security": KEYED,
                    "responses": {
                        "200": {"description": "deleted, or unknown", **json_content(DELETED)},
                        **_KEYED_ERRORS,
                    },
                },
            },
            "/v1/devices/{uuid}/restart": {
                "parameters": _UUID,
                "put": {
                    "summary": "Supervisor hook: restart the device",
                    "security": KEYED,
                    "responses": {**ok, **error_responses(404), **_KEYED_ERRORS},
                },
            },
            "/v1/devices/{uuid}/identify": {
                "parameters": _UUID,
                "put": {
                    "summary": "Blink the device's LED: 200 once it blinks, else the reason",
                    "description": "409: paused, not running its firmware, busy (flashed or restarted), "
                    "Broken, or its firmware cannot blink; 502: the blink failed; 504: the board did "
                    "not get to it within 10 s",
                    "security": KEYED,
                    "responses": {**ok, **error_responses(404, 409, 502, 504), **_KEYED_ERRORS},
                },
            },
            "/v1/devices/{uuid}/flash": {
                "parameters": [
                    *_UUID,
                    {"name": "commit", "in": "query", "required": False, "schema": _COMMIT},
                    {
                        "name": "local_mode",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
                        "description": "put the device in local mode (needed if it follows a fleet)",
                    },
                ],
                "post": {
                    "summary": "Flash a UF2 image onto the device",
                    "description": "409: reserved, or the device follows a fleet and local_mode is not true",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "security": KEYED,
                    "responses": {
                        "202": {"description": "queued"},
                        **error_responses(400, 404, 409, 413, 422),
                        **_KEYED_ERRORS,
                    },
                },
            },
            "/v1/devices/{uuid}/local-mode": {
                "parameters": _UUID,
                "put": {
                    "summary": "Put the device in local mode, or back to following its fleet (then it is "
                    "flashed with its target at once)",
                    "requestBody": {
                        "required": True,
                        **json_content(
                            object_schema({"LocalMode": {"type": "boolean"}}, required=["LocalMode"])
                        ),
                    },
                    "security": KEYED,
                    "responses": {
                        "200": {"description": "the device", **json_content(DEVICE)},
                        **error_responses(400, 404, 413),
                        **_KEYED_ERRORS,
                    },
                },
            },
            "/v1/gateway": {
                "get": {
                    "summary": "Who this gateway is: the id client tokens are kept under, and its version",
                    "responses": {
                        "200": {
                            "description": "identity",
                            **json_content(
                                object_schema(
                                    {"id": {"type": "string"}, "version": {"type": "string"}},
                                    required=["id", "version"],
                                )
                            ),
                        }
                    },
                },
            },
            "/v1/gateway/events": EVENTS_PATH,
            **_reservation_paths(reservation_max_seconds),
            **_evaluation_paths(),
            "/metrics": METRICS_PATH,
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
            },
        },
        "components": {"securitySchemes": SECURITY_SCHEMES},
    }


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API."""
    return JSONResponse(openapi_document(gateway_of(request).manager.config.reservation_max_seconds))


ROUTES: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
"""The route of the document itself, for ``create_app``."""
