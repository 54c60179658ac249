"""announcer.netlink: pyroute2 calls made from a running event loop's thread run on the
netlink thread, which has no loop (pyroute2 0.9 runs a loop of its own per call)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from announcer import netlink


class FakeIPRoute:
    """Records the thread of each call; fails as pyroute2 0.9 does inside a running loop."""

    threads: ClassVar[list[str]] = []

    def __init__(self) -> None:
        self._note()

    def _note(self) -> None:
        if asyncio._get_running_loop() is not None:
            raise RuntimeError("This event loop is already running")
        self.threads.append(threading.current_thread().name)

    def link_lookup(self, *, ifname: str) -> list[int]:
        self._note()
        return [7] if ifname == "dummy0" else []

    def get_routes(self, **kwargs: Any) -> Iterator[str]:
        self._note()
        yield from ("a", "b")

    def close(self) -> None:
        self._note()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeIPRoute]:
    import pyroute2

    FakeIPRoute.threads = []
    monkeypatch.setattr(pyroute2, "IPRoute", FakeIPRoute)
    return FakeIPRoute


def test_calls_from_a_running_loop_run_on_the_netlink_thread(fake: type[FakeIPRoute]) -> None:
    """Opening, each call and closing happen on the netlink thread; a generator's items are
    read there too and come back as a list; the answers are the socket's own."""
    seen: list[object] = []

    def on_loop() -> None:
        with netlink.iproute() as ipr:
            seen.append(ipr.link_lookup(ifname="dummy0"))
            seen.append(ipr.get_routes(table=100))
        loop.stop()

    loop = asyncio.new_event_loop()
    loop.call_soon(on_loop)
    loop.run_forever()
    loop.close()
    assert seen == [[7], ["a", "b"]]
    assert len(fake.threads) == 4
    assert all(name.startswith("netlink") for name in fake.threads)
