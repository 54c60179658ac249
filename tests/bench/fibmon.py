"""The router's kernel FIB as a stream of timestamped events (``ip -o -ts monitor route``).

``ip monitor`` stamps each netlink message as it receives it (microseconds, wall
clock), so the time a path leaves the FIB is known to well under a millisecond,
without polling. One background thread reads the stream; callers wait on a
condition for the first event after a moment that satisfies a predicate.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RouteEvent:
    """One change of one prefix: the set of gateways it is routed to afterwards."""

    stamp: float
    """Wall-clock time ``ip`` received the netlink message."""
    prefix: str
    gateways: frozenset[str]
    deleted: bool
    line: str


_LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s+(?P<deleted>Deleted\s+)?(?P<dest>\S+)\s")
_VIA = re.compile(r"\bvia (?:inet6? )?(\S+)")


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def _bare(prefix: str) -> str:
    """``192.0.2.10/32`` -> ``192.0.2.10`` (how ``ip`` prints host routes)."""
    address, _, length = prefix.partition("/")
    if (":" in address and length == "128") or (":" not in address and length == "32"):
        return address
    return prefix


class FibMonitor:
    """Follows ``prefixes`` in namespace ``netns``; bounded by ``max_seconds``."""

    def __init__(self, netns: str, prefixes: Iterable[str], max_seconds: float = 3600.0) -> None:
        self.netns = netns
        self.prefixes = {_bare(p): p for p in prefixes}
        self.max_seconds = max_seconds
        self.events: list[RouteEvent] = []
        self.current: dict[str, frozenset[str]] = {}
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def _read_table(self, prefix: str) -> frozenset[str]:
        family = "-6" if ":" in prefix else "-4"
        out = subprocess.run(
            ["ip", family, "-j", "-n", self.netns, "route", "show", "exact", prefix],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        gateways: set[str] = set()
        for route in json.loads(out or "[]"):
            for hop in route.get("nexthops") or [route]:
                if "gateway" in hop:
                    gateways.add(str(hop["gateway"]))
        return frozenset(gateways)

    def start(self) -> FibMonitor:
        argv = ["ip", "-o", "-ts", "-n", self.netns, "monitor", "route"]
        self._proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        time.sleep(0.05)  # let it subscribe before the first reading
        for bare, prefix in self.prefixes.items():
            self.current[bare] = self._read_table(prefix)
        self._thread = threading.Thread(target=self._run, name="FibMonitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.max_seconds
        for line in self._proc.stdout:
            if time.monotonic() > deadline:
                break
            match = _LINE.match(line)
            if not match or match["dest"] not in self.prefixes:
                continue
            deleted = bool(match["deleted"])
            gateways = frozenset() if deleted else frozenset(_VIA.findall(line))
            event = RouteEvent(_stamp(match["ts"]), match["dest"], gateways, deleted, line.rstrip())
            with self._cond:
                self.events.append(event)
                self.current[match["dest"]] = gateways
                self._cond.notify_all()

    def gateways(self, prefix: str) -> frozenset[str]:
        with self._cond:
            return self.current[_bare(prefix)]

    def wait(
        self,
        prefix: str,
        predicate: Callable[[frozenset[str]], bool],
        *,
        after: float,
        timeout: float,
    ) -> RouteEvent:
        """The first event of ``prefix`` stamped at or after ``after`` whose gateways satisfy
        ``predicate``; raises TimeoutError after ``timeout`` seconds."""
        bare = _bare(prefix)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.prefix == bare and event.stamp >= after and predicate(event.gateways):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"FIB of {prefix}: no matching change within {timeout:.1f} s "
                        f"(now via {sorted(self.current.get(bare, ()))})"
                    )
                self._cond.wait(min(remaining, 0.1))

    def wait_state(
        self, prefix: str, predicate: Callable[[frozenset[str]], bool], timeout: float
    ) -> frozenset[str]:
        """Wait until the FIB of ``prefix`` satisfies ``predicate`` now (whenever it changed)."""
        bare = _bare(prefix)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.current[bare]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    now = sorted(self.current[bare])
                    raise TimeoutError(f"FIB of {prefix} still via {now} after {timeout:.1f} s")
                self._cond.wait(min(remaining, 0.1))
            return self.current[bare]

    def changes(self, prefix: str) -> list[RouteEvent]:
        """The events of ``prefix`` since the last :meth:`trim`."""
        bare = _bare(prefix)
        with self._cond:
            return [e for e in self.events if e.prefix == bare]

    def trim(self) -> None:
        """Forget past events (keeps memory flat over long runs)."""
        with self._cond:
            self.events.clear()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FibMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
