"""The gateway's HTTP API: edge-node-manager's routes, reservations, evaluations, OpenAPI."""
