"""The balena integration of the gateway (docs/balena.md).

* :mod:`.environment`: what balena tells the container (supervisor address and key, device).
* :mod:`.supervisor_client`: the few supervisor API requests the gateway makes.
* :mod:`.bridge`: waits for the supervisor in the background, follows it, blinks the device.
* :mod:`.update_lock`: balena's update lock, held while boards are flashed.
* :mod:`.lock_plugin`: the built-in plugin ``balena_update_lock`` that hands that lock to the gateway.
* :mod:`.proxyvisor`: the boards as dependent devices of a dependent app (balena-supervisor's
  proxyvisor, up to v14.7.1): registration, the update/delete hooks, reports and logs.
* :mod:`.api`: ``PUT /v1/enm/identify`` and ``GET /v1/enm/supervisor``.
"""
