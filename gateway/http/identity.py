"""Who this gateway is: ``GET /v1/gateway`` (docs/api.md, "picofleet routes").

Clients remember the token of a name per gateway (picofleet/client.py's ``TokenStore``); they key
it by the ``id`` this route answers, not by the URL they reached the gateway at, so
``http://127.0.0.1:1337`` and ``http://localhost:1337`` find the same token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from picofleet import __version__
from picofleet.gateway.http.context import gateway_of

__all__ = ["ROUTES", "get_gateway"]


async def get_gateway(request: Request) -> Response:
    """This gateway's ``id`` (random, kept as long as its database and the client tokens in it) and
    the picofleet ``version`` it runs."""
    return JSONResponse({"id": gateway_of(request).reservations.gateway_id, "version": __version__})


ROUTES: list[BaseRoute] = [Route("/v1/gateway", get_gateway, methods=["GET"])]
"""The identity route, for ``create_app``."""
