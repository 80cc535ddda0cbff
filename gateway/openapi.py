"""The OpenAPI 3.1 document served at ``/openapi.json`` (kept in step with the routes by a test)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from .device import ENM_FIELDS, Status

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_NULLABLE_OBJECT = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}

_DEVICE: dict[str, Any] = {
    "type": "object",
    "required": [*ENM_FIELDS, "Port"],
    "properties": {
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
        "Progress": {
            "type": ["object", "null"],
            "properties": {
                "done": {"type": "integer"},
                "total": {"type": "integer"},
                "percent": {"type": "number"},
            },
        },
        "PendingFlash": {
            "type": ["object", "null"],
            "description": "the flash queued or under way; resumed after a power cut",
            "properties": {
                "sha256": {"type": "string"},
                "commit": {"type": ["string", "null"]},
                "version": {"type": ["string", "null"]},
            },
        },
    },
}
_STATUS = {
    "type": "object",
    "properties": {
        "currentStatus": {"type": "string", "enum": ["Running", "Paused"]},
        "targetStatus": {"type": "string", "enum": ["Running", "Paused"]},
    },
}


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
                            {
                                "type": "object",
                                "required": ["targetStatus"],
                                "properties": {
                                    "targetStatus": {"type": "string", "enum": ["Paused", "Running"]}
                                },
                            }
                        ),
                    },
                    "responses": {**ok, **_errors(400)},
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
                            {
                                "type": "object",
                                "properties": {
                                    "appId": {},
                                    "commit": {"type": ["string", "null"]},
                                    "environment": _NULLABLE_OBJECT,
                                    "config": _NULLABLE_OBJECT,
                                },
                            }
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
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
            },
        },
    }
