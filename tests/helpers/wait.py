"""Waiting on a condition with a deadline (never sleep-and-hope): :func:`wait_for` blocks the
thread, :func:`until` waits on the running event loop; both poll ``check`` the same way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Raised = type[BaseException] | tuple[type[BaseException], ...]


class _Poll:
    """One wait: call ``check`` until it returns something truthy or the deadline passes."""

    def __init__(self, timeout: float, what: str, fail_on: Raised) -> None:
        self.timeout, self.what, self.fail_on = timeout, what, fail_on
        self.deadline = time.monotonic() + timeout
        self.last_error: Exception | None = None

    def attempt(self, check: Callable[[], T]) -> T | None:
        """``check()`` if truthy; ``None`` for "not yet"; raises once the deadline passed."""
        try:
            result = check()
            if result:
                return result
        except self.fail_on:
            raise
        except Exception as error:
            self.last_error = error
        if time.monotonic() >= self.deadline:
            raise AssertionError(
                f"timed out after {self.timeout} s waiting for {self.what} (last error: {self.last_error})"
            )
        return None


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    fail_on: Raised = (),
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s.

    An exception ``check`` raises counts as "not yet" (things may raise while they come up),
    except one of ``fail_on``: that one goes through at once (e.g. the process waited on exited;
    ``fail_on=Exception`` lets every error through).
    """
    poll = _Poll(timeout, what, fail_on)
    while (result := poll.attempt(check)) is None:
        time.sleep(interval)
    return result


async def until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.005,
    *,
    fail_on: Raised = Exception,
) -> T:
    """:func:`wait_for` on the running event loop (it sleeps with ``asyncio.sleep``, so the code
    under test runs meanwhile). ``check`` reads state in this process: an error it raises is a
    test's bug and goes through at once, unless ``fail_on`` says otherwise."""
    poll = _Poll(timeout, what, fail_on)
    while (result := poll.attempt(check)) is None:
        await asyncio.sleep(interval)
    return result
