"""The gateway's control panel: a page at the gateway's ``/`` showing its boards, ENM status,
reservations and evaluations live (from ``GET /v1/gateway/events``), with buttons calling the
gateway's own API. A layer above ``picofleet.gateway.http``: gateway/service.py hands
:data:`~.pages.ROUTES` to ``create_app(..., pages=...)``."""

from picofleet.gateway.panel.pages import ROUTES

__all__ = ["ROUTES"]
