"""What both services' pages and live streams stand on: Server-Sent Events, session cookies,
the static files both pages share."""
