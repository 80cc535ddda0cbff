"""The central fleet service: git receiver, releases, target state, the gateways' API."""
