"""Following a Server-Sent Events stream from the CLI, reconnecting when it drops.

The fleet service's ``GET /v1/fleets/{name}/events`` (docs/fleet-api.md) sends ``event: NAME`` and
``data: JSON`` lines, a blank line after each event, and ``: keep-alive`` comments every 15 s.
The few lines of that format are parsed here (:func:`parse`) rather than with a library: the
CLI reads only our own streams, whose data is one line of JSON, and httpx (already a dependency)
does the HTTP and the line splitting.

:func:`follow` yields the stream's events for as long as the caller iterates: when the stream
drops (the service restarts, the network goes away, nothing — not even a heartbeat — arrived for
:data:`READ_TIMEOUT_S`), it says so once through ``notice`` and reconnects with a growing back-off
(:data:`BACKOFF_S`). Each (re)connection first yields an :data:`OPEN` event, so that the caller
can fetch what it may have missed meanwhile. An answer 4xx (wrong token, unknown fleet) is not
retried, nor is a first connection that fails (a wrong URL should not hang): :class:`StreamRefused`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, NamedTuple

import httpx

__all__ = ["BACKOFF_S", "OPEN", "Event", "StreamRefused", "follow", "parse"]

OPEN = "open"
"""The name of the event :func:`follow` yields on each (re)connection (data: the number of
reconnections so far, 0 for the first connection)."""

BACKOFF_S = (0.5, 10.0)
"""The first wait before reconnecting, and the longest: the wait doubles on each failed attempt."""
STABLE_S = 5.0
"""A stream that lived this long before it was lost starts the back-off over; one that ends sooner
(a service that answers and hangs up at once) keeps doubling it."""
READ_TIMEOUT_S = 45.0
"""A stream silent this long (three missed heartbeats) is taken for dropped."""


class Event(NamedTuple):
    """One event: its name (``message`` when the stream gave none) and its JSON data."""

    name: str
    data: Any


class StreamRefused(Exception):
    """The service answered the stream's request with a client error; the message is one line."""


_NOT_JSON = object()


class _Dropped(Exception):
    """The stream ended or failed in a way worth retrying; the message says how."""


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """The events in ``lines`` (the stream's lines without their line endings).

    Comment lines (``: keep-alive``) and unknown fields are skipped; ``data:`` lines of one event
    are joined with newlines and decoded as JSON (an event whose data is not JSON is skipped).
    """
    name = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                try:
                    decoded = json.loads("\n".join(data))
                except ValueError:
                    decoded = _NOT_JSON
                if decoded is not _NOT_JSON:
                    yield Event(name or "message", decoded)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def _reason(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    reason = answer.get("error") if isinstance(answer, dict) else None
    return f"{reason or response.text.strip() or response.reason_phrase} (HTTP {response.status_code})"


def _connect(client: httpx.Client, url: str, headers: dict[str, str], reconnects: int) -> Iterator[Event]:
    """One connection's events (after an :data:`OPEN` event); :class:`_Dropped` when it ends."""
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                if response.status_code >= 500:
                    raise _Dropped(_reason(response))
                raise StreamRefused(_reason(response))
            yield Event(OPEN, reconnects)
            yield from parse(response.iter_lines())
    except httpx.HTTPError as error:
        raise _Dropped(str(error) or type(error).__name__) from None
    raise _Dropped("the stream ended")


def follow(
    url: str,
    headers: dict[str, str],
    *,
    notice: Callable[[str], None],
    backoff: tuple[float, float] = BACKOFF_S,
) -> Generator[Event, None, None]:
    """The events of the stream at ``url`` (requested with ``headers``), reconnecting forever.

    ``notice`` gets one line when the stream is lost (once per outage, not once per attempt).
    Raises :class:`StreamRefused` on a 4xx answer, or when the very first attempt fails. Stop by
    closing the generator (or Ctrl-C).
    """
    first, longest = backoff
    delay = first
    reconnects = 0
    lost = False
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
    headers = {**headers, "Accept": "text/event-stream", "Cache-Control": "no-store"}
    where = url.split("?")[0]
    with httpx.Client(timeout=timeout) as client:
        while True:
            connected = False
            opened = 0.0
            try:
                for event in _connect(client, url, headers, reconnects):
                    if event.name == OPEN:
                        connected, lost, opened = True, False, time.monotonic()
                    yield event
            except _Dropped as error:
                if not connected and not reconnects and not lost:
                    raise StreamRefused(f"cannot reach the fleet service at {where}: {error}") from None
                if not lost:
                    notice(f"lost the stream from {where} ({error}); reconnecting")
                    lost = True
            if connected:
                reconnects += 1
                if time.monotonic() - opened >= STABLE_S:  # a stream that ends at once keeps backing off
                    delay = first
            time.sleep(delay)
            delay = min(delay * 2, longest)
