"""pyroute2's ``IPRoute`` for the daemon's thread, which runs an asyncio loop.

pyroute2 0.9's synchronous API runs an event loop of its own for every call, and an
event loop cannot run inside a running one: on the daemon's thread each call failed
("This event loop is already running"). :func:`iproute` gives a socket whose calls
run on one thread of their own, which has no loop, and wait for it there; a
generator's items are read there too. pyroute2 0.7 (Debian's) works the same way
behind it. The address watcher has a thread of its own and uses ``IPRoute`` as is.
"""

from __future__ import annotations

import functools
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["iproute"]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="netlink")  # its thread starts on first use


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    return list(result) if inspect.isgenerator(result) else result


class _Proxy:
    """Forwards every call to an ``IPRoute`` that lives on the netlink thread."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        from pyroute2 import IPRoute  # a late import: only some services need netlink

        self._pool = pool
        self._ipr = pool.submit(IPRoute).result()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ipr, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._pool.submit(_run, attr, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.submit(self._ipr.close).result()

    def __enter__(self) -> _Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iproute() -> Any:
    """A new ``IPRoute`` whose calls run on the netlink thread (see the module docstring)."""
    return _Proxy(_pool())
