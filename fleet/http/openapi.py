"""The fleet service's OpenAPI 3.1 document, served at ``/openapi.json``: every route of
:mod:`.app` with its parameters, bodies and answers (docs/fleet-api.md says the same in prose;
tests/test_fleet_openapi.py keeps the document in step with the routes)."""

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
from picofleet.fleet.git.http_backend import FLEET_NAME
from picofleet.fleet.http.gateway_api import MAX_LOG_BATCH, MAX_WAIT
from picofleet.fleet.http.internal import MAX_SEEN_BATCH
from picofleet.fleet.store import BOARD_LOG_LINES
from picofleet.fleet.targets import ENV_KEY, MAX_BOARDS, MAX_KEY, MAX_VALUE

__all__ = ["ROUTES", "openapi", "openapi_document"]

ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
GATEWAY: list[dict[str, list[str]]] = [{"gateway": []}]
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
NULLABLE_STRING = {"type": ["string", "null"]}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
NAME = {"type": "string", "pattern": f"^{FLEET_NAME.pattern}$", "description": "the fleet's name"}
NAME_PARAMETER = {"name": "name", "in": "path", "required": True, "schema": NAME}
UUID_PARAMETER = {
    "name": "uuid",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the board's LocalUUID (USB serial), as a gateway reported it",
}
KEY_PARAMETER = {
    "name": "key",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ENV_KEY.pattern}$", "maxLength": MAX_KEY},
    "description": "env: not BALENA_* or RESIN_* (those are config variables)",
}

FLEET = object_schema(
    {
        "fleet": {"type": "string"},
        "git_url": {
            "type": "string",
            "description": "where `git push` takes releases (admin token as password)",
        },
        "created": {"type": "string"},
        "target": {**NULLABLE_STRING, "description": "the release commit the fleet's boards run"},
        "pinned": {**NULLABLE_STRING, "description": "the release the fleet is pinned to, if any"},
        "latest": {**NULLABLE_STRING, "description": "the last release pushed"},
        "env": STRING_MAP,
        "config": STRING_MAP,
    },
    required=["fleet", "git_url", "created", "target", "pinned", "latest", "env", "config"],
)
RELEASE = object_schema(
    {
        "commit": {"type": "string"},
        "ref": NULLABLE_STRING,
        "created": {"type": "string"},
        "message": {**NULLABLE_STRING, "description": "the commit's subject line"},
        "boards": {"type": ["object", "null"], "description": "per board type: firmware, sha256, version"},
    }
)
REPORTED_SETTINGS = {
    "type": ["object", "null"],
    "maxProperties": 1024,
    "propertyNames": {"maxLength": 128},
    "additionalProperties": {"type": "string", "maxLength": 4096},
    "description": "what the board holds (its identify answer)",
}
BOARD_REPORT = object_schema(
    {
        "LocalUUID": {"type": "string", "minLength": 1, "maxLength": 128},
        "BoardType": {"type": "string", "minLength": 1, "maxLength": 128},
        "Name": NULLABLE_STRING,
        "Commit": NULLABLE_STRING,
        "Status": NULLABLE_STRING,
        "FirmwareVersion": NULLABLE_STRING,
        "online": {"type": "boolean"},
        "Progress": {"type": ["number", "null"]},
        "Environment": REPORTED_SETTINGS,
        "Config": REPORTED_SETTINGS,
        "FpgaImage": {
            "type": ["string", "null"],
            "pattern": SHA256["pattern"],
            "description": "sha256 of the iCE40 image the board configured from",
        },
        "LocalMode": {"type": "boolean", "description": "the gateway's fleet sync leaves the board alone"},
        "FailedRelease": object_schema(
            {
                "commit": {"type": "string", "maxLength": 128},
                "reason": {"type": "string", "description": "cut at 1024 characters"},
                "time": NULLABLE_STRING,
            },
            required=["commit", "reason"],
            nullable=True,
            description="a release that did not run on the board and was rolled back",
        ),
    },
    required=["LocalUUID", "BoardType"],
)
BOARD = {
    **BOARD_REPORT,
    "properties": {
        **BOARD_REPORT["properties"],
        "gateway": {"type": "string"},
        "target_commit": NULLABLE_STRING,
        "pin": NULLABLE_STRING,
        "board_env": STRING_MAP,
        "board_config": STRING_MAP,
        "target_environment": STRING_MAP,
        "target_config": STRING_MAP,
        "target_fpga": {**NULLABLE_STRING, "description": "sha256 of the target's iCE40 image, or null"},
        "converged": {
            "type": "boolean",
            "description": "Commit, FpgaImage, Environment and Config all equal the board's target",
        },
    },
}
GATEWAY_JSON = object_schema(
    {
        "gateway": {"type": "string"},
        "name": NULLABLE_STRING,
        "created": NULLABLE_STRING,
        "last_seen": NULLABLE_STRING,
        "logs": object_schema({"dropped": {"type": "integer"}, "ignored": {"type": "integer"}}),
        "boards": {"type": "array", "items": BOARD},
    }
)
BOARD_SETTINGS = object_schema(
    {
        "fleet": {"type": "string"},
        "LocalUUID": {"type": "string"},
        "pin": NULLABLE_STRING,
        "env": STRING_MAP,
        "config": STRING_MAP,
        "retry": {"type": "integer", "description": "how many times the operator asked for a retry"},
    }
)
LOG_LINE = object_schema(
    {
        "time": {"type": "string"},
        "level": {"type": "string"},
        "text": {"type": "string"},
        "gateway": {"type": "string"},
    }
)
THROTTLED = {
    "description": "too many wrong admin tokens from this address (5 a minute): every request of it"
    " presenting a token, the right one included, until the minute has passed",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    **json_content(ERROR),
}
COMMIT_BODY = object_schema(
    {
        "commit": {
            "type": "string",
            "pattern": "^[0-9a-f]{7,40}$",
            "description": "a release, or a unique prefix",
        }
    },
    required=["commit"],
)


def _op(
    summary: str, ok: dict[str, Any], errors: tuple[int, ...], *, security: Any = ADMIN, **more: Any
) -> dict[str, Any]:
    """One operation: ``ok`` answers plus the error answers ``errors`` (401 when it needs a token;
    429 when it takes the admin token, whose wrong guesses are throttled)."""
    codes = sorted({*errors, 401}) if security else sorted(errors)
    responses = {**ok, **error_responses(*codes)}
    if security and any("admin" in requirement for requirement in security):
        responses["429"] = THROTTLED
    operation = {"summary": summary, **more, "responses": responses}
    if security:
        operation["security"] = security
    return operation


def _json(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, **json_content(schema)}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, **json_content(schema)}}


def _variable_paths(where: str, parameters: list[dict[str, Any]], whose: str) -> dict[str, Any]:
    """``GET …/{kind}``, ``PUT|DELETE …/{kind}/{key}`` for env and config of a fleet or a board."""
    paths: dict[str, Any] = {}
    for kind in ("env", "config"):
        variables = _json(f"{whose} {kind} variables", STRING_MAP)
        paths[f"{where}/{kind}"] = {
            "parameters": parameters,
            "get": _op(f"The {whose}'s {kind} variables", variables, (404,)),
        }
        paths[f"{where}/{kind}/{{key}}"] = {
            "parameters": [*parameters, KEY_PARAMETER],
            "put": _op(
                f"Set one {kind} variable of the {whose}; the resulting set",
                variables,
                (400, 404),
                **_body(
                    object_schema({"value": {"type": "string", "maxLength": MAX_VALUE}}, required=["value"])
                ),
            ),
            "delete": _op(
                f"Unset one {kind} variable of the {whose} (404 if not set)", variables, (400, 404)
            ),
        }
    return paths


def _operator_paths() -> dict[str, Any]:
    """Fleets, releases, gateways, boards, pins and variables (admin token)."""
    fleet = "/v1/fleets/{name}"
    board = "/v1/fleets/{name}/boards/{uuid}"
    board_parameters = [NAME_PARAMETER, UUID_PARAMETER]
    created = object_schema(
        {"fleet": {"type": "string"}, "git_url": {"type": "string"}, "provisioning_key": {"type": "string"}},
        required=["fleet", "git_url", "provisioning_key"],
    )
    return {
        "/v1/fleets": {
            "post": _op(
                "Create a fleet, its git repository and provisioning key (shown only here)",
                _json("created", created, "201"),
                (400, 409, 413),
                **_body(object_schema({"name": NAME}, required=["name"])),
            ),
            "get": _op("Every fleet", _json("fleets", {"type": "array", "items": FLEET}), ()),
        },
        fleet: {
            "parameters": [NAME_PARAMETER],
            "get": _op("The fleet: git URL, target, pin, variables", _json("the fleet", FLEET), (404,)),
        },
        f"{fleet}/releases": {
            "parameters": [NAME_PARAMETER],
            "get": _op(
                "The fleet's releases, oldest first",
                _json("releases", {"type": "array", "items": RELEASE}),
                (404,),
            ),
        },
        f"{fleet}/provisioning-key": {
            "parameters": [NAME_PARAMETER],
            "post": _op(
                "A new provisioning key (the old one stops working; provisioned gateways keep theirs)",
                _json(
                    "the new key",
                    object_schema({"fleet": {"type": "string"}, "provisioning_key": {"type": "string"}}),
                ),
                (404,),
            ),
        },
        f"{fleet}/gateways": {
            "parameters": [NAME_PARAMETER],
            "get": _op(
                "The fleet's gateways, last seen, with their boards",
                _json("gateways", {"type": "array", "items": GATEWAY_JSON}),
                (404,),
            ),
        },
        f"{fleet}/events": {
            "parameters": [
                NAME_PARAMETER,
                {
                    "name": "logs",
                    "in": "query",
                    "required": False,
                    "description": "follow new log lines of one board (its LocalUUID) or of every board (*)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                },
                {
                    "name": "boards",
                    "in": "query",
                    "required": False,
                    "description": "0: no fleet and gateway events (a follower of log lines only)",
                    "schema": {"type": "string", "enum": ["0", "1"], "default": "1"},
                },
            ],
            "get": _op(
                "The fleet's live events (Server-Sent Events; docs/fleet-api.md, Live events)",
                {
                    "200": {
                        "description": "an endless text/event-stream: `fleet` (the whole view, first and"
                        " after fleet-wide changes), `gateway` (one gateway after its report changed),"
                        " `logs` ({board, gateway, lines, dropped}); a `: keep-alive` comment every 15 s",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                (400, 404),
                security=[*ADMIN, {"session": []}],
            ),
        },
        f"{fleet}/boards": {
            "parameters": [NAME_PARAMETER],
            "get": _op(
                "Every reported board with its target and pin",
                _json("boards", {"type": "array", "items": BOARD}),
                (404,),
            ),
        },
        f"{board}/logs": {
            "parameters": [
                *board_parameters,
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": BOARD_LOG_LINES, "default": 100},
                },
            ],
            "get": _op(
                "The board's last log lines, oldest first",
                _json("log lines", {"type": "array", "items": LOG_LINE}),
                (400, 404),
            ),
        },
        f"{fleet}/pin": {
            "parameters": [NAME_PARAMETER],
            "put": _op(
                "Pin the fleet to a release",
                _json("the fleet", FLEET),
                (400, 404, 409, 413),
                **_body(COMMIT_BODY),
            ),
            "delete": _op(
                "Unpin the fleet: it follows its latest release", _json("the fleet", FLEET), (404,)
            ),
        },
        f"{board}/pin": {
            "parameters": board_parameters,
            "put": _op(
                "Pin one board to a release",
                _json("the board's settings", BOARD_SETTINGS),
                (400, 404, 409, 413),
                **_body(COMMIT_BODY),
            ),
            "delete": _op(
                "Unpin the board: it follows the fleet", _json("the board's settings", BOARD_SETTINGS), (404,)
            ),
        },
        f"{board}/retry": {
            "parameters": board_parameters,
            "post": _op(
                "Flash the release that failed on the board (rolled back) once more; 409 when its "
                "gateway reports no failed release",
                _json(
                    "the board's settings, with the failed release",
                    {
                        **BOARD_SETTINGS,
                        "properties": {
                            **BOARD_SETTINGS["properties"],
                            "failed_release": BOARD_REPORT["properties"]["FailedRelease"],
                        },
                    },
                ),
                (404, 409),
            ),
        },
        **_variable_paths(fleet, [NAME_PARAMETER], "fleet"),
        **_variable_paths(board, board_parameters, "board"),
    }


def _gateway_paths() -> dict[str, Any]:
    """Provisioning, then the gateway's own routes (its key)."""
    log_line = object_schema(
        {
            "board": {"type": "string", "minLength": 1, "maxLength": 128},
            "time": {"type": "string"},
            "level": {"type": "string"},
            "text": {"type": "string"},
        },
        required=["board", "time", "level", "text"],
    )
    etag = {"ETag": {"schema": {"type": "string"}}}
    return {
        "/v1/gateways": {
            "post": _op(
                "Provision a gateway with a fleet's provisioning key (its own key is shown only here)",
                _json(
                    "provisioned",
                    object_schema(
                        {
                            "gateway": {"type": "string"},
                            "key": {"type": "string"},
                            "fleet": {"type": "string"},
                        },
                        required=["gateway", "key", "fleet"],
                    ),
                    "201",
                ),
                (400, 401, 413),
                security=None,
                **_body(
                    object_schema(
                        {
                            "provisioning_key": {"type": "string"},
                            "name": {"type": "string", "maxLength": 128},
                        },
                        required=["provisioning_key"],
                    )
                ),
            ),
        },
        "/v1/gateway/state": {
            "get": _op(
                "The gateway's target state, with an ETag; 304 when If-None-Match names it",
                {
                    "200": {
                        "description": "the target state",
                        "headers": etag,
                        **json_content({"type": "object"}),
                    },
                    "304": {"description": "unchanged (after waiting up to `wait` seconds)", "headers": etag},
                },
                (400, 404, 503),
                security=GATEWAY,
                parameters=[
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
                        "description": "long poll: seconds to wait for a change",
                    },
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
            ),
            "put": _op(
                "Report the gateway's full current board list",
                _json(
                    "recorded", object_schema({"gateway": {"type": "string"}, "boards": {"type": "integer"}})
                ),
                (400, 413),
                security=GATEWAY,
                **_body(
                    object_schema(
                        {"boards": {"type": "array", "maxItems": MAX_BOARDS, "items": BOARD_REPORT}},
                        required=["boards"],
                    )
                ),
            ),
        },
        "/v1/gateway/logs": {
            "post": _op(
                "Board log lines (lines of boards the gateway has not reported are ignored, counted)",
                _json(
                    "accepted",
                    object_schema(
                        {
                            "gateway": {"type": "string"},
                            "accepted": {"type": "integer"},
                            "ignored": {"type": "integer"},
                        }
                    ),
                ),
                (400, 413),
                security=GATEWAY,
                **_body(
                    object_schema(
                        {
                            "lines": {"type": "array", "maxItems": MAX_LOG_BATCH, "items": log_line},
                            "dropped": {
                                "type": ["integer", "null"],
                                "minimum": 0,
                                "description": "lines the gateway dropped so far",
                            },
                        },
                        required=["lines"],
                    )
                ),
            ),
        },
        "/v1/assets/{sha256}": {
            "parameters": [{"name": "sha256", "in": "path", "required": True, "schema": SHA256}],
            "get": _op(
                "An asset of a release of the caller's fleet (any fleet for the admin); Range supported",
                {
                    "200": {"description": "the asset", "content": {"application/octet-stream": {}}},
                    "206": {
                        "description": "the range asked for",
                        "content": {"application/octet-stream": {}},
                    },
                    "416": {"description": "a range outside the asset"},
                },
                (404,),
                security=[*GATEWAY, *ADMIN],
            ),
            "head": _op(
                "Whether the asset is there, and its size",
                {"200": {"description": "the asset is there"}},
                (404,),
                security=[*GATEWAY, *ADMIN],
            ),
        },
    }


def _internal_paths() -> dict[str, Any]:
    """What front workers of ``--workers N`` ask the primary (admin token)."""
    return {
        "/v1/internal/changes": {
            "get": _op(
                'A stream of {"generation": N} lines, one now and one per change (an empty line every 10 s)',
                {"200": {"description": "the change feed", "content": {"application/x-ndjson": {}}}},
                (),
            ),
        },
        "/v1/internal/seen": {
            "post": _op(
                "Gateways a front worker answered from its cache, noted as seen now",
                _json("how many of the keys are known", object_schema({"known": {"type": "integer"}})),
                (400, 413),
                **_body(
                    object_schema(
                        {"keys": {"type": "array", "maxItems": MAX_SEEN_BATCH, "items": SHA256}},
                        required=["keys"],
                    )
                ),
            ),
        },
    }


GIT_RESPONSES = {
    "200": {"description": "git's answer"},
    **{
        str(code): {"description": why, "content": {"text/plain": {"schema": {"type": "string"}}}}
        for code, why in (
            (401, "no or a wrong admin token"),
            (429, "too many wrong admin tokens from this address (Retry-After: seconds to wait)"),
        )
    },
    "404": {
        "description": "no such fleet or repository (text, for git), or no route (JSON)",
        "content": {"text/plain": {"schema": {"type": "string"}}, **json_content(ERROR)["content"]},
    },
}


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document of the fleet service."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "picofleet fleet service",
            "version": __version__,
            "description": "Fleets, releases by `git push`, gateways and their boards (docs/fleet-api.md). "
            'Every error is JSON {"error": "..."}.',
        },
        "components": {
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "the operator's admin token"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "picofleet_session",
                    "description": "the dashboard's session cookie (POST /login); every operator route takes"
                    " it, and a PUT, POST or DELETE with it also needs the X-Picofleet-Request header",
                },
                "gateway": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a gateway's key (POST /v1/gateways)",
                },
            },
            "schemas": {"Error": ERROR},
        },
        "paths": {
            **_operator_paths(),
            **_gateway_paths(),
            **_internal_paths(),
            "/git/{fleet}.git/{path}": {
                "parameters": [
                    {"name": "fleet", "in": "path", "required": True, "schema": NAME},
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "get": {
                    "summary": "git's smart HTTP (git http-backend): fetch, and the refs before a push",
                    "description": "basic auth, the admin token as password; errors are text for git",
                    "responses": GIT_RESPONSES,
                },
                "post": {
                    "summary": "git's smart HTTP: upload-pack and receive-pack (a push is checked first)",
                    "description": "basic auth, the admin token as password; errors are text for git",
                    "responses": GIT_RESPONSES,
                },
            },
            "/metrics": METRICS_PATH,
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI", **json_content({"type": "object"})}},
                }
            },
        },
    }


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document of this service."""
    return JSONResponse(openapi_document())


ROUTES: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
"""The route of the document itself, for ``create_app``."""
