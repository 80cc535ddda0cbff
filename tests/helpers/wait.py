"""Waiting on a condition with a deadline (never sleep-and-hope)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    fail_on: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s.

    An exception ``check`` raises counts as "not yet" (things may raise while they come up),
    except one of ``fail_on``: that one goes through at once (e.g. the process waited on exited).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except fail_on:
            raise
        except Exception as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")
