"""The fleet service's HTTP API: operator routes, gateway routes, front-worker routes."""
