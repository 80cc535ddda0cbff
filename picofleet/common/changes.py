"""Telling live watchers what changed, coalesced: a :class:`ChangeHub` and its subscriptions.

A service publishes a *key* for each thing that changed (``"device:<uuid>"``, ``"status"``, a
gateway's id …); each subscriber (an event stream, a reporter) collects the keys published since it
last looked. Keys are kept in a set, so a subscriber that falls behind holds at most one entry per
distinct key, never a backlog: when it looks again it reads the *current* state of what those keys
name. That is what lets a browser that stops reading, or a burst of thousands of progress updates,
cost a bounded amount of memory, and why a watcher always shows the latest state rather than
replaying history.

Everything runs on the event loop: :meth:`ChangeHub.publish` is a cheap synchronous call, safe from
any coroutine or callback on the loop (not from other threads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["ChangeHub", "Subscription"]

K = TypeVar("K", bound=Hashable)


class Subscription(Generic[K]):
    """One watcher's pending keys: those published since its last :meth:`wait`."""

    def __init__(self, hub: ChangeHub[K]) -> None:
        self._hub = hub
        self._pending: set[K] = set()
        self._ready = asyncio.Event()

    def _add(self, key: K) -> None:
        self._pending.add(key)
        self._ready.set()

    def pending(self) -> int:
        """How many distinct keys are waiting (bounded by the number of distinct keys)."""
        return len(self._pending)

    async def wait(self, timeout: float | None = None) -> set[K]:
        """The keys published since the last call, waiting up to ``timeout`` seconds for at least
        one (``None``: forever); an empty set when none came in time."""
        if not self._pending:
            self._ready.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return set()
        keys, self._pending = self._pending, set()
        self._ready.clear()
        return keys

    def close(self) -> None:
        """Stop receiving keys (idempotent)."""
        self._hub._subscriptions.discard(self)
        self._pending.clear()

    def __enter__(self) -> Subscription[K]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ChangeHub(Generic[K]):
    """Where changes are published and watchers subscribe (one per service)."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription[K]] = set()

    def publish(self, key: K) -> None:
        """``key`` changed: every current subscriber will see it in its next :meth:`Subscription.wait`."""
        for subscription in self._subscriptions:
            subscription._add(key)

    def subscribe(self) -> Subscription[K]:
        """A new subscription, receiving keys published from now on; use it as a context manager
        (``with hub.subscribe() as changes:``) so it is closed when the watcher ends."""
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)
