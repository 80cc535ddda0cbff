"""Writing OpenAPI 3.1 documents: the helpers both services' ``/openapi.json`` are built with
(gateway/http/openapi.py, fleet/http/openapi.py)."""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR", "error_responses", "json_content", "object_schema"]


def object_schema(properties: dict[str, Any], *, nullable: bool = False, **keywords: Any) -> dict[str, Any]:
    """An object schema with ``properties``; ``keywords`` (``required``, ``description``) go before them."""
    return {"type": ["object", "null"] if nullable else "object", **keywords, "properties": properties}


ERROR = object_schema({"error": {"type": "string"}}, required=["error"])
"""Every error answer: ``{"error": "..."}``."""


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    """A request or response body of JSON matching ``schema``."""
    return {"content": {"application/json": {"schema": schema}}}


def error_responses(*codes: int) -> dict[str, Any]:
    """The error answers ``codes``, each a JSON ``{"error"}``."""
    return {str(code): {"description": "error", **json_content(ERROR)} for code in codes}


METRICS_PATH: dict[str, Any] = {
    "get": {
        "summary": "Prometheus metrics, text exposition format (no token)",
        "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    }
}
"""``GET /metrics`` of both services (gateway/http/metrics.py, fleet/http/metrics.py)."""
