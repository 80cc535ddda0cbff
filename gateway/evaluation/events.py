"""Events for the clients of the gateway (researchers): an in-process publish/subscribe bus.

Each event belongs to one client (a reservation's name) and is a JSON object whose ``event``
field says what happened (``reservation_ready``, ``reservation_ending``, ``reservation_ended``,
``evaluation_result``...); :meth:`EventBus.publish` adds its ``time`` (epoch seconds). Any number
of subscribers may listen to one client (``GET /v1/events``, docs/api.md "Events"). A subscriber
that does not keep up loses the oldest events beyond :data:`SUBSCRIBER_QUEUE`; the next event it
gets is then ``{"event": "events_dropped", "count": n}``. Events published while nobody listens
are not kept.
"""

from __future__ import annotations

import asyncio
import collections
import time
from types import TracebackType
from typing import Any

SUBSCRIBER_QUEUE = 1000
"""Events kept for one subscriber that does not read them yet; beyond that the oldest are dropped."""


class Subscription:
    """One subscriber's events, in order: ``async for event in subscription`` or :meth:`get`.

    Use as ``async with bus.subscribe(name) as subscription``: it receives every event published
    from :meth:`EventBus.subscribe` on, and is removed from the bus on exit. Iteration ends when
    the bus is closed.
    """

    def __init__(self, bus: EventBus, name: str, capacity: int) -> None:
        self.bus = bus
        self.name = name
        self.capacity = capacity
        self.dropped = 0
        self.closed = False
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._ready = asyncio.Event()

    def deliver(self, event: dict[str, Any]) -> None:
        """Queue an event (called by the bus), dropping the oldest beyond the capacity."""
        if len(self._events) >= self.capacity:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        """End the subscription: a waiting :meth:`get` returns ``None``, iteration stops."""
        self.closed = True
        self._ready.set()

    async def get(self) -> dict[str, Any] | None:
        """The next event (waiting for it), or ``None`` once the subscription is closed."""
        while not self._events and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return {"event": "events_dropped", "count": count, "time": time.time()}
        if not self._events:
            return None
        return self._events.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.bus.unsubscribe(self)


class EventBus:
    """Publish events to a client's subscribers (the reservation book's ``events``); event loop only."""

    def __init__(self, capacity: int = SUBSCRIBER_QUEUE) -> None:
        self.capacity = capacity
        self._subscribers: dict[str, set[Subscription]] = collections.defaultdict(set)

    def publish(self, name: str, event: dict[str, Any]) -> None:
        """Send ``event`` (a JSON object with an ``event`` field) to every subscriber of ``name``.

        Never blocks; a copy with ``time`` added (unless given) is delivered.
        """
        subscribers = self._subscribers.get(name)
        if not subscribers:
            return
        delivered = {**event, "time": event.get("time", time.time())}
        for subscription in subscribers:
            subscription.deliver(delivered)

    def subscribe(self, name: str) -> Subscription:
        """A new subscription to ``name``'s events, receiving from now on."""
        subscription = Subscription(self, name, self.capacity)
        self._subscribers[name].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription (its iteration ends)."""
        subscription.close()
        subscribers = self._subscribers.get(subscription.name)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.name]

    def subscribers(self, name: str) -> int:
        """How many subscriptions ``name`` has."""
        return len(self._subscribers.get(name, ()))

    def close(self) -> None:
        """End every subscription (the gateway stops)."""
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                self.unsubscribe(subscription)
