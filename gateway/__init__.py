"""The on-Pi gateway: configuration, state store, device manager, HTTP API and the plugin contract."""
