"""The fleet dashboard: the pages the fleet service serves at ``/`` to a browser.

A login form (the admin token, exchanged for a signed session cookie), the list of fleets, and a
fleet's page: a server-rendered shell (:mod:`.pages`, Jinja2 templates with autoescaping) that its
own small script (``static/dashboard.js``) fills from the fleet's live event stream
(``GET /v1/fleets/{name}/events``) and whose buttons call the operator API with ``fetch``.
This package is a layer above :mod:`picofleet.fleet.http`: fleet/service.py hands :data:`ROUTES`
to ``create_app``.
"""

from picofleet.fleet.dashboard.pages import ROUTES

__all__ = ["ROUTES"]
