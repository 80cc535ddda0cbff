"""The central fleet service (git receiver, releases, target state); arrives with the fleet issue."""
