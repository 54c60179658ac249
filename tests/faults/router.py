"""What the router saw while a fault ran: node1's path in BIRD, the kernel FIB, BIRD's counters.

Three sources, each for what it times best:

* BIRD's path of node1 for a prefix, polled every ``period`` seconds: attribute changes are
  timed by BIRD's own ``since`` stamp (to the ms); a withdraw only by the polls around it;
* the router's kernel FIB through ``ip monitor`` (:class:`tests.bench.fibmon.FibMonitor`):
  when node1 left or joined the set of next hops, to well under a ms;
* BIRD's import counters of node1's sessions (``show protocols all``): how many updates and
  withdraws node1 sent, which catches a re-sent or flapped route that polling could miss.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tests.bench.fibmon import FibMonitor
from tests.lab import PREFIX_V4, BirdPath, Lab, LabError, WaitTimeout

_STATS = re.compile(r"^\s+Import (updates|withdraws):\s+(.*)$", re.M)


@dataclass(frozen=True)
class PathState:
    """node1's path for one prefix at the router, or its absence."""

    present: bool
    med: int | None = None
    local_pref: int | None = None
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def of(cls, path: BirdPath | None) -> PathState:
        if path is None:
            return cls(False)
        return cls(True, path.med, path.local_pref, path.communities, path.large_communities)

    @property
    def lowered(self) -> bool:
        """Drained attributes: GRACEFUL_SHUTDOWN (the router sets local-pref 0)."""
        return self.present and (65535, 0) in self.communities

    @property
    def normal(self) -> bool:
        """The lab controllers' ``announce`` attributes: MED 100, not lowered."""
        return self.present and self.med == 100 and not self.lowered

    def describe(self) -> str:
        if not self.present:
            return "withdrawn"
        parts = [f"MED {self.med}", f"lp {self.local_pref}"]
        parts += [f"{a}:{b}" for a, b in self.communities]
        parts += [f"{a}:{b}:{c}" for a, b, c in self.large_communities]
        return " ".join(parts)


@dataclass(frozen=True)
class Change:
    """node1's path for ``prefix`` went from ``before`` to ``after`` at ``at`` (wall clock)."""

    at: float
    prefix: str
    before: PathState
    after: PathState
    precision: float
    """Half the window the change is known to be in (0.001 when BIRD stamped it)."""


def _stamp(path: BirdPath | None) -> float | None:
    """BIRD's ``since`` of a path as a wall-clock time, if it has one."""
    return None if path is None or path.since is None else path.since.timestamp()


@dataclass
class Counters:
    """BIRD's import counters of one protocol: updates and withdraws received."""

    updates: int = 0
    withdraws: int = 0


def import_counters(lab: Lab, protocol: str) -> Counters:
    """``Import updates/withdraws: received`` of a BGP protocol (0 for ``---``)."""
    text = lab.birdc("show", "protocols", "all", protocol)
    found: dict[str, int] = {}
    for kind, values in _STATS.findall(text):
        first = values.split()[0] if values.split() else "0"
        found[kind] = int(first) if first.isdigit() else 0
    if not found:
        # a protocol that is down prints no counters: nothing received since it came up
        return Counters()
    return Counters(found.get("updates", 0), found.get("withdraws", 0))


@dataclass
class Router:
    """Follows node1's paths for ``prefixes`` at the router until :meth:`stop`."""

    lab: Lab
    prefixes: Sequence[str] = (PREFIX_V4,)
    node: str = "node1"
    period: float = 0.05
    max_seconds: float = 900.0
    _changes: list[Change] = field(default_factory=list)
    _current: dict[str, PathState] = field(default_factory=dict)
    _since: dict[str, float | None] = field(default_factory=dict)
    """BIRD's ``since`` of node1's path per prefix: a new one with the same attributes is a
    path learnt again (a withdraw and an announce between two polls)."""
    _polled: dict[str, float] = field(default_factory=dict)
    _base: dict[str, Counters] = field(default_factory=dict)
    _sessions: dict[str, object] = field(default_factory=dict)
    """BIRD's ``since`` of each of node1's sessions at :meth:`start` (a reset changes it)."""
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _fib: FibMonitor | None = None
    crashed: BaseException | None = None

    @property
    def protocols(self) -> list[str]:
        return [self.node, f"{self.node}_v6"]

    def start(self) -> Router:
        self._base = {p: self._counters(p) for p in self.protocols}
        self._sessions = self._session_times()
        self._fib = FibMonitor(self.lab.ns("router"), self.prefixes, self.max_seconds).start()
        for prefix in self.prefixes:
            path = self.lab.bird_paths_by_node(prefix).get(self.node)
            self._current[prefix] = PathState.of(path)
            self._since[prefix] = _stamp(path)
            self._polled[prefix] = time.time()
        self._thread = threading.Thread(target=self._run, name="router-watch", daemon=True)
        self._thread.start()
        return self

    def _counters(self, protocol: str) -> Counters:
        try:
            return import_counters(self.lab, protocol)
        except LabError:
            return Counters()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.wait(self.period) and time.monotonic() < deadline:
                for prefix in self.prefixes:
                    asked = time.time()
                    paths = self.lab.bird_paths_by_node(prefix)
                    path = paths.get(self.node)
                    now = PathState.of(path)
                    since = _stamp(path)
                    with self._cond:
                        old = self._current[prefix]
                        relearnt = (
                            now == old
                            and now.present
                            and since is not None
                            and self._since[prefix] is not None
                            and abs(since - (self._since[prefix] or 0.0)) > 0.005
                        )
                        self._since[prefix] = since
                        if now != old or relearnt:
                            if path is not None and path.since is not None:
                                at, precision = path.since.timestamp(), 0.001
                            else:
                                at = (self._polled[prefix] + time.time()) / 2
                                precision = (time.time() - self._polled[prefix]) / 2
                            self._changes.append(Change(at, prefix, old, now, precision))
                            self._current[prefix] = now
                        self._polled[prefix] = asked
                        self._cond.notify_all()
        except BaseException as exc:  # reported by wait/stop
            self.crashed = exc
            with self._cond:
                self._cond.notify_all()

    def current(self, prefix: str = PREFIX_V4) -> PathState:
        with self._cond:
            return self._current[prefix]

    def changes(self, prefix: str | None = None) -> list[Change]:
        with self._cond:
            return [c for c in self._changes if prefix is None or c.prefix == prefix]

    def wait(
        self,
        predicate: Callable[[PathState], bool],
        timeout: float,
        prefix: str = PREFIX_V4,
        what: str = "node1's path",
    ) -> float:
        """Wait until node1's path satisfies ``predicate``; return the wall-clock time it did
        (the change's time, or now if it already held)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self.crashed is not None:
                    raise LabError(f"router watch failed: {self.crashed!r}")
                if predicate(self._current[prefix]):
                    mine = [c for c in self._changes if c.prefix == prefix]
                    return mine[-1].at if mine else time.time()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"{what} at the router: not as wanted after {timeout:.1f} s "
                        f"(now {self._current[prefix].describe()})"
                    )
                self._cond.wait(min(remaining, 0.1))

    def fib_nodes_at_end(self, prefix: str = PREFIX_V4) -> list[str]:
        return self.lab.fib_nodes(prefix)

    def fib_events(self, prefix: str = PREFIX_V4) -> list[tuple[float, list[str]]]:
        """(wall-clock time, nodes) of every FIB change of ``prefix`` seen so far."""
        if self._fib is None:
            return []
        out = []
        for event in self._fib.changes(prefix):
            nodes = sorted(n for g in event.gateways if (n := self.lab.node_of_gateway(g)))
            out.append((event.stamp, nodes))
        return out

    def _session_times(self) -> dict[str, object]:
        try:
            sessions = self.lab.sessions()
        except LabError:
            return {}
        return {p: sessions[p].since for p in self.protocols if p in sessions}

    def reset(self) -> bool:
        """Whether one of node1's sessions went down and up again since :meth:`start`."""
        return self._session_times() != self._sessions

    def counters(self) -> dict[str, Counters]:
        """Updates and withdraws node1's sessions sent since :meth:`start` (per protocol);
        after a session reset, since the session came back (BIRD counts from zero again)."""
        out = {}
        reset = self.reset()
        for protocol in self.protocols:
            now, base = self._counters(protocol), self._base.get(protocol, Counters())
            if reset:
                out[protocol] = Counters(now.updates, now.withdraws)
            else:
                out[protocol] = Counters(now.updates - base.updates, now.withdraws - base.withdraws)
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if self._fib is not None:
            self._fib.stop()

    def describe(self, t0: float, *, prefixes: Iterable[str] | None = None) -> list[str]:
        """Route changes relative to ``t0`` (wall clock), BIRD and FIB merged, in order."""
        wanted = set(prefixes) if prefixes is not None else set(self.prefixes)
        items: list[tuple[float, str]] = []
        for c in self.changes():
            if c.prefix not in wanted:
                continue
            label = "" if len(wanted) == 1 else f" {c.prefix}"
            approx = "" if c.precision < 0.002 else f" (±{c.precision:.2f})"
            what = c.after.describe()
            if c.after == c.before:
                what = f"learnt again (gone between two polls), {what}"
            text = f"{self.node}{label}: {what}"
            items.append((c.at, f"{c.at - t0:+.2f} s{approx} {text}"))
        for prefix in wanted:
            for stamp, nodes in self.fib_events(prefix):
                label = "" if len(wanted) == 1 else f" {prefix}"
                items.append((stamp, f"{stamp - t0:+.2f} s FIB{label} → {'+'.join(nodes) or '-'}"))
        items.sort()
        lines = [text for _, text in items]
        totals = self.counters()
        upd = sum(c.updates for c in totals.values())
        wd = sum(c.withdraws for c in totals.values())
        since = " since the session came back" if self.reset() else ""
        lines.append(f"BIRD received from {self.node}{since}: {upd} updates, {wd} withdraws")
        return lines
