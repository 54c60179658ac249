"""Polling with a deadline: the only way the lab waits for anything."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LabError(RuntimeError):
    """Something in the lab itself went wrong (not the code under test)."""


class WaitTimeout(LabError):
    """A :func:`wait_until` predicate stayed false until its deadline."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.02,
    what: str | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Bounded in time (``timeout`` seconds) and therefore in count. Exceptions from
    the predicate count as "not yet"; the last one is chained to the
    :class:`WaitTimeout` raised at the deadline, so a failure says what was seen.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the predicate reads changing state: retry
            last_error = exc
        else:
            if value:
                return value
            last_value = value
            last_error = None
        if time.monotonic() >= deadline:
            label = what or getattr(predicate, "__name__", "condition")
            detail = f"last error: {last_error!r}" if last_error else f"last value: {last_value!r}"
            raise WaitTimeout(f"{label} not true after {timeout:.1f} s ({detail})") from last_error
        time.sleep(interval)
