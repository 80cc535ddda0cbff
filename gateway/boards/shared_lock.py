"""The platform's update lock, held while any board is flashed or evaluates (``picofleet_update_lock``).

The hook's lock (balena's ``updates.lock`` on a balena device) is taken when the first board starts
and given back when the last one is done; boards flashed together share one holding.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

from picofleet.gateway.config import GatewayConfig


class SharedUpdateLock:
    """One holding of the platform's update lock for any number of boards at once."""

    def __init__(self, call_hook: Callable[..., Awaitable[Any]], config: GatewayConfig) -> None:
        self._call_hook = call_hook
        self._config = config
        self._transition = asyncio.Lock()
        self._holders = 0
        self._held: AbstractContextManager[object] | None = None

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[None]:
        """Hold the lock for one board (taken by the first holder, given back by the last)."""
        async with self._transition:
            if self._holders == 0:
                lock = await self._call_hook("picofleet_update_lock", config=self._config)
                entering = asyncio.ensure_future(asyncio.to_thread(lock.__enter__))
                try:
                    await asyncio.shield(entering)
                except asyncio.CancelledError:  # taken anyway once the thread returns: give it back
                    entering.add_done_callback(
                        lambda done: done.exception() or lock.__exit__(None, None, None)
                    )
                    raise
                self._held = lock
            self._holders += 1
        try:
            yield
        finally:
            async with self._transition:
                self._holders -= 1
                if self._holders == 0 and self._held is not None:
                    lock, self._held = self._held, None
                    await asyncio.to_thread(lock.__exit__, None, None, None)
