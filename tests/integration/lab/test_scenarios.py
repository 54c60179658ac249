"""The controller's story end to end: the REAL ``announcer run`` on both nodes of the lab.

Each node's ExaBGP runs ``announcer run --config <node>/announcer.toml`` with one
service ``web`` (192.0.2.10/32 and 2001:db8::10/128) checked over HTTP on the
node's own anycast address, with fast but realistic timings: interval 0.3 s,
fast_interval 0.1 s, rise 2, fall 2, drain_seconds 3; announced with MED 100,
community 65001:100 and large community 65001:0:1; drained with the built-in
MED 1000 and GRACEFUL_SHUTDOWN (65535:0), which the router's import filter turns
into local-pref 0.

Everything is asserted where it matters: at the router (BIRD's paths and the
kernel FIB) and by the client's requests. One lab serves the whole module per
ExaBGP version (5.0 and 4.2); the ``lab`` fixture puts it back into the healthy
baseline (both controllers announcing, ECMP on both families) before each test.

Failover times (stop of node1's web server to its path leaving the router's
FIB, polled every ~5 ms) are printed as ``FAILOVER exabgp=5.0 family=v4
seconds=0.412`` (shown with ``pytest -s``; also ``failover`` properties of the test
suite in the junit XML), appended to ``failover-results.txt`` in pytest's base
temporary directory, and summed up at the end of the module.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from tests.lab import (
    ANYCAST_V4,
    ANYCAST_V6,
    NODES,
    PREFIX_V4,
    PREFIX_V6,
    BirdPath,
    ClientLoopStats,
    ClientResult,
    Lab,
    LabError,
    WaitTimeout,
    wait_until,
)
from tests.lab import controller as ctl
from tests.lab.procs import is_alive
from tests.lab.watch import FibChange, FibWatcher, cut_by_rehash

pytestmark = pytest.mark.lab

CONFIG = ctl.scenario_config()
TIMING = CONFIG["defaults"]
DRAIN_SECONDS = float(TIMING["drain_seconds"])
BACKUP_MED = 200
COMMUNITY = (65001, 100)
LARGE_COMMUNITY = (65001, 0, 1)
GRACEFUL_SHUTDOWN = (65535, 0)
FAILOVER_BOUND = 2.0
"""Seconds a failover may take at most: one interval, fall-1 fast intervals, plus slack."""


@dataclass(frozen=True)
class Family:
    """An address family of the anycast service: its prefix and the client's URL."""

    name: str
    prefix: str
    url: str


V4 = Family("v4", PREFIX_V4, f"http://{ANYCAST_V4}/")
V6 = Family("v6", PREFIX_V6, f"http://[{ANYCAST_V6}]/")
FAMILIES = (V4, V6)


@pytest.fixture(params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request: pytest.FixtureRequest) -> Family:
    """The address family a test runs for (IPv4 and IPv6 alike)."""
    fam: Family = request.param
    return fam


# --- the lab with the real controller ----------------------------------------------------------


def baseline(lab: Lab) -> dict[str, list[str]]:
    """Both nodes running the controller with :data:`CONFIG` (MED 100)."""
    return {node: ctl.controller_argv(lab, node, CONFIG) for node in NODES}


def announced_normally(paths: Mapping[str, BirdPath]) -> bool:
    """Both nodes' paths are in BIRD with the ``announce`` attributes (not drained)."""
    return sorted(paths) == list(NODES) and all(
        p.med == 100 and not p.graceful_shutdown for p in paths.values()
    )


def controller_logs(lab: Lab, tail: int = 25) -> str:
    """The last controller log lines of each node (ExaBGP's own lines left out)."""
    parts = []
    for node in NODES:
        lines = [ln for ln in lab.exabgp_log(node).splitlines() if ln.startswith("ts=")]
        parts.append(f"--- {node} controller log\n" + "\n".join(lines[-tail:]))
    return "\n".join(parts)


def restore(lab: Lab) -> None:
    """Back to the baseline: no drain, both web servers healthy, both controllers announcing."""
    try:
        for node in NODES:
            if lab.exabgp_running(node):
                ctl.undrain(lab, node)
        lab.ensure(baseline(lab))
        for node in NODES:
            ctl.undrain(lab, node)  # an operator drain a restarted controller restored
        for fam in FAMILIES:
            lab.wait_paths(fam.prefix, announced_normally, 15.0, what=f"{fam.prefix} announced")
            lab.wait_fib_nodes(fam.prefix, NODES, 10.0)
    except LabError as exc:
        # a fixture's failure gets no "lab state" section: put it in the message
        raise LabError(
            f"restoring the baseline: {exc}\n{lab.describe()}\n{controller_logs(lab)}"
        ) from exc


@pytest.fixture(scope="module")
def lab_module(lab_requirements: None, exabgp_version: str) -> Iterator[Lab]:
    """One lab per ExaBGP version whose nodes run the real controller; checked clean at the end."""
    lab = Lab(exabgp_version)
    try:
        lab.start(baseline(lab))
        yield lab
    finally:
        lab.stop()
        assert lab.leftovers() == [], f"lab {lab.id} left things behind"


class ControllerLogsOnFailure:
    """A plugin adding each node's controller log to this module's failure reports.

    The lab's own report section tails exabgp.log, where ExaBGP's statistics lines
    crowd out the controller's.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        lab = getattr(item, "funcargs", {}).get("lab")
        if (
            report.failed
            and getattr(item, "module", None) is sys.modules[__name__]
            and isinstance(lab, Lab)
        ):
            report.sections.append(("controller logs", controller_logs(lab)))
        return report


@pytest.fixture(scope="module", autouse=True)
def controller_logs_on_failure(request: pytest.FixtureRequest) -> None:
    """Register :class:`ControllerLogsOnFailure` once per session."""
    name = "announcer-scenario-controller-logs"
    if not request.config.pluginmanager.has_plugin(name):
        request.config.pluginmanager.register(ControllerLogsOnFailure(), name)


@pytest.fixture
def lab(lab_module: Lab) -> Lab:
    """The module's lab in the healthy baseline (named ``lab`` so failures show its state)."""
    restore(lab_module)
    return lab_module


# --- failover results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Failover:
    """One measured failover."""

    exabgp: str
    family: str
    seconds: float
    scenario: str

    def line(self) -> str:
        text = f"FAILOVER exabgp={self.exabgp} family={self.family} seconds={self.seconds:.3f}"
        return text if self.scenario == "ecmp" else f"{text} scenario={self.scenario}"


class FailoverLog:
    """Collects failover figures: printed, appended to a file, summed up at module end."""

    def __init__(self, path: Path, junit: Callable[[str, object], None]) -> None:
        self.path = path
        self.junit = junit
        self.entries: list[Failover] = []

    def record(self, exabgp: str, family: str, seconds: float, scenario: str = "ecmp") -> str:
        """Print, append to the file and keep one figure; return its FAILOVER line."""
        entry = Failover(exabgp, family, seconds, scenario)
        self.entries.append(entry)
        print(entry.line(), flush=True)
        with self.path.open("a") as out:
            out.write(entry.line() + "\n")
        self.junit("failover", entry.line())
        return entry.line()

    def summary(self) -> list[str]:
        lines = [f"failover summary ({self.path}):"]
        groups: dict[tuple[str, str, str], list[float]] = {}
        for e in self.entries:
            groups.setdefault((e.scenario, e.exabgp, e.family), []).append(e.seconds)
        for (scenario, exabgp, fam), values in sorted(groups.items()):
            lines.append(
                f"  {scenario:<14} exabgp={exabgp} family={fam} n={len(values)} "
                f"min={min(values):.3f} median={statistics.median(values):.3f} "
                f"max={max(values):.3f}"
            )
        return lines


@pytest.fixture(scope="module")
def failovers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    record_testsuite_property: Callable[[str, object], None],
) -> Iterator[FailoverLog]:
    """The module's :class:`FailoverLog`; its finalizer prints the summary (even when captured).

    Each figure is also a ``failover`` property of the junit XML's test suite.
    """
    log = FailoverLog(
        tmp_path_factory.getbasetemp() / "failover-results.txt", record_testsuite_property
    )
    yield log
    if not log.entries:
        return
    text = "\n".join(log.summary())
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + text, flush=True)
    else:
        print("\n" + text, flush=True)


# --- helpers -----------------------------------------------------------------------------------


def version(lab: Lab) -> str:
    """``5.0`` or ``4.2``: the ExaBGP under test, as the fixture names it."""
    return ".".join(lab.exabgp_version.split(".")[:2])


def requests_after(stats: ClientLoopStats, wall: float) -> ClientLoopStats:
    """The requests that started at or after the wall-clock time ``wall``."""
    return stats.between(wall, float("inf"))


def within(stats: ClientLoopStats, start: float, end: float) -> ClientLoopStats:
    """The requests that started at or after ``start`` and were over before ``end``.

    A FIB change observed between two polls happened after the earlier poll began:
    a request over before that saw only the old routes.
    """
    return ClientLoopStats.of(
        [r for r in stats.results if start <= r.started and r.started + r.elapsed < end]
    )


def more_requests(loop_stats: Callable[[], ClientLoopStats], since: float, count: int) -> bool:
    """True once ``count`` requests started after ``since`` have finished."""
    return requests_after(loop_stats(), since).total >= count


def failed(results: list[ClientResult]) -> list[str]:
    """The failed requests, readable."""
    return [f"{r.started:.3f}+{r.elapsed:.3f}s {r.error}" for r in results if not r.ok]


def unexplained_failures(stats: ClientLoopStats, changes: list[FibChange]) -> list[str]:
    """Failed requests other than resets of connections in flight at a FIB change."""
    return [
        f"{r.started:.3f}+{r.elapsed:.3f}s {r.error}"
        for r in stats.errors
        if not cut_by_rehash(r, changes)
    ]


@dataclass(frozen=True)
class Seen:
    """When a condition on BIRD's paths became true: between ``before`` and ``after``."""

    before: float
    """Wall-clock time the last poll that did not see it began (or the given start)."""
    after: float
    """Wall-clock time the first poll that saw it ended."""
    paths: dict[str, BirdPath]


def watch_paths(
    lab: Lab,
    prefix: str,
    predicate: Callable[[dict[str, BirdPath]], bool],
    since: float,
    timeout: float,
) -> Seen:
    """Poll BIRD's paths of ``prefix`` (~every 5 ms) until ``predicate`` holds.

    ``since`` is a wall-clock time at which it did not hold yet.
    """
    deadline = time.monotonic() + timeout
    before = since
    while True:
        began = time.time()
        paths = lab.bird_paths_by_node(prefix)
        if predicate(paths):
            return Seen(before, time.time(), paths)
        before = began
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{prefix}: {predicate.__name__} not true in {timeout} s: {paths}")
        time.sleep(0.005)


def only_node2(paths: Mapping[str, BirdPath]) -> bool:
    """node1's path has left BIRD; node2's is there."""
    return sorted(paths) == ["node2"]


def node1_lowered(paths: Mapping[str, BirdPath]) -> bool:
    """node1's path carries the drain attributes, node2's the normal ones."""
    one, two = paths.get("node1"), paths.get("node2")
    return one is not None and two is not None and one.med == 1000 and one.graceful_shutdown


def service_status(lab: Lab, node: str) -> dict[str, object] | None:
    """The controller's own view of ``web`` on ``node`` (None until the control socket exists)."""
    snap = ctl.status(lab, node)
    if snap is None:
        return None
    svc = snap.get("services", {}).get(ctl.SERVICE)
    return svc if isinstance(svc, dict) else None


def new_run(lab: Lab, node: str, pid: int) -> list[Mapping[str, str]]:
    """The log events of the controller run with ``pid`` on ``node`` (empty until it logs)."""
    return ctl.run_of(ctl.log_events(lab, node), pid)


def same_time(a: datetime | None, b: datetime | None) -> bool:
    """BIRD timestamps equal up to the 1 ms wobble of its display.

    BIRD keeps monotonic times and converts them to wall-clock time when printing,
    so one unchanged route's (or session's) `since` shows as e.g. .447 and .448 on
    successive reads.
    """
    return a is not None and b is not None and abs((a - b).total_seconds()) <= 0.005


_STATS = re.compile(r"^\s+Import (updates|withdraws):\s+(.*)$", re.M)


def import_stats(lab: Lab, protocol: str) -> dict[str, dict[str, int]]:
    """BIRD's import counters of a BGP protocol (``show protocols all``): per kind
    (``updates``, ``withdraws``) the ``received``, ``rejected``, ``filtered``, ``ignored``
    and ``accepted`` counts (``---`` read as 0)."""
    text = lab.birdc("show", "protocols", "all", protocol)
    columns = ("received", "rejected", "filtered", "ignored", "accepted")
    out: dict[str, dict[str, int]] = {}
    for kind, values in _STATS.findall(text):
        numbers = [int(v) if v.isdigit() else 0 for v in values.split()]
        out[kind] = dict(zip(columns, numbers, strict=True))
    if set(out) != {"updates", "withdraws"}:
        raise LabError(f"no import counters for {protocol} in: {text}")
    return out


def log_time(event: Mapping[str, str]) -> float:
    """A controller log event's ``ts`` (UTC, ms) as seconds since the epoch."""
    stamp = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return stamp.timestamp()


def has_event(run: list[Mapping[str, str]], event: str, **fields: str) -> bool:
    """True if ``run`` holds an ``event`` with all of ``fields``."""
    return any(
        e.get("event") == event and all(e.get(k) == v for k, v in fields.items()) for e in run
    )


# --- the scenarios -----------------------------------------------------------------------------


def test_healthy_both_nodes_announce_with_configured_attributes(lab: Lab, family: Family) -> None:
    """Healthy: both controllers announce the prefix with MED 100, the community and the
    large community; the router installs one ECMP route over both nodes, and client
    requests (each a new connection) reach both nodes, none failing.
    """
    paths = lab.bird_paths_by_node(family.prefix)
    assert sorted(paths) == list(NODES)
    for node, path in paths.items():
        assert path.med == 100, node
        assert path.local_pref == 100, node
        assert path.communities == (COMMUNITY,), node
        assert path.large_communities == (LARGE_COMMUNITY,), node
        assert path.as_path == (65001,), node
        assert not path.graceful_shutdown, node
    assert lab.fib_nodes(family.prefix) == list(NODES)

    results = [lab.client_get(family.url, timeout=2.0) for _ in range(60)]
    assert failed(results) == []
    assert {r.node for r in results} == set(NODES)

    for node in NODES:
        svc = service_status(lab, node)
        if svc is not None:
            assert (svc["health"], svc["route"]) == ("UP", "ANNOUNCED")


def test_failure_withdraws_node1_and_traffic_moves_to_node2(
    lab: Lab, family: Family, failovers: FailoverLog
) -> None:
    """Failure: node1's web server stops -> its controller withdraws, node1's path leaves
    BIRD and the router's FIB within ~interval + (fall-1) x fast_interval, and every
    client request started after that lands on node2 and succeeds.

    The time from the stop to the path leaving the FIB is printed as a FAILOVER line.
    """
    with (
        FibWatcher(lab, [family.prefix]) as fib,
        lab.client_loop(family.url, timeout=1.0, max_seconds=60.0) as loop,
    ):
        loop.wait_for_requests(20, 10.0)
        stopped_wall, stopped = time.time(), time.monotonic()
        lab.stop_http("node1")
        change = fib.wait_for(family.prefix, ["node2"], 10.0)
        seconds = change.seen - stopped
        failovers.record(version(lab), family.name, seconds)
        lab.wait_path_nodes(family.prefix, ["node2"], 5.0)
        wait_until(
            lambda: more_requests(loop.stats, change.first_after, 100), 20.0, what="100 requests"
        )
        stats = loop.stop()

    assert 0 < seconds < FAILOVER_BOUND
    assert failed(within(stats, 0, stopped_wall).results) == []
    after = requests_after(stats, change.first_after)
    assert failed(after.results) == []
    assert set(after.per_node) == {"node2"}
    # the path left BIRD (not merely lost to node2's) and the FIB changed exactly once
    assert sorted(lab.bird_paths_by_node(family.prefix)) == ["node2"]
    assert [(c.before, c.after) for c in fib.changes()] == [(tuple(NODES), ("node2",))]
    svc = service_status(lab, "node1")
    if svc is not None:
        assert (svc["health"], svc["route"]) == ("DOWN", "WITHDRAWN")


def test_recovery_reannounces_after_rise_checks(lab: Lab) -> None:
    """Recovery: once node1's web server is back, its controller re-announces after `rise`
    (2) passing checks: health DOWN -> RISING -> UP, then the route WITHDRAWN ->
    ANNOUNCED; the router is back to ECMP on both families and clients reach both nodes.
    """
    lab.stop_http("node1")
    for fam in FAMILIES:
        lab.wait_path_nodes(fam.prefix, ["node2"], 5.0)
    pid = lab.wait_api_pid("node1")
    seen = len(new_run(lab, "node1", pid))

    started = time.monotonic()
    lab.start_http("node1")
    for fam in FAMILIES:
        lab.wait_paths(fam.prefix, announced_normally, 5.0, what=f"{fam.prefix} re-announced")
        lab.wait_fib_nodes(fam.prefix, NODES, 5.0)
    took = time.monotonic() - started

    wait_until(
        lambda: has_event(new_run(lab, "node1", pid)[seen:], "route", to="ANNOUNCED"),
        5.0,
        what="node1's controller logged the recovery",
    )
    events = [e for e in new_run(lab, "node1", pid)[seen:] if e.get("event") in ("health", "route")]
    steps = [(e["event"], e["from"], e["to"]) for e in events]
    assert steps[:3] == [
        ("health", "DOWN", "RISING"),
        ("health", "RISING", "UP"),
        ("route", "WITHDRAWN", "ANNOUNCED"),
    ]
    # UP came with the second passing check, a fast_interval after the first
    rising, up = (log_time(e) for e in events[:2])
    assert up - rising >= (TIMING["rise"] - 1) * TIMING["fast_interval"] * 0.5
    print(
        f"RECOVERY exabgp={version(lab)} seconds={took:.3f} rising_to_up={up - rising:.3f}",
        flush=True,
    )
    for fam in FAMILIES:
        results = [lab.client_get(fam.url) for _ in range(40)]
        assert failed(results) == []
        assert {r.node for r in results} == set(NODES)


def test_drain_lowers_then_withdraws_without_failed_requests(lab: Lab, family: Family) -> None:
    """Drain: node1's path is first lowered (MED 1000, 65535:0 -> local-pref 0 at the router),
    the kernel route collapses to node2, and only after drain_seconds is node1's path
    withdrawn; undrain brings ECMP back. A client looping throughout sees no failed
    request, except possibly a connection in flight at the very instant the router's
    next-hop set changed: the kernel re-hashes every packet and routing cannot pin it
    (at most one per FIB change, counted and printed).
    """
    with (
        FibWatcher(lab, [family.prefix]) as fib,
        lab.client_loop(family.url, timeout=1.0, max_seconds=60.0) as loop,
    ):
        loop.wait_for_requests(20, 10.0)
        with ThreadPoolExecutor(1) as pool:  # the CLI takes ~0.4 s: watch BIRD meanwhile
            triggered = time.time()
            drained_via = pool.submit(ctl.drain, lab, "node1", "scenario test")
            lowered = watch_paths(lab, family.prefix, node1_lowered, triggered, 10.0)
            how = drained_via.result(timeout=30.0)
        one, two = lowered.paths["node1"], lowered.paths["node2"]
        assert (one.med, one.local_pref) == (1000, 0)
        assert GRACEFUL_SHUTDOWN in one.communities
        assert not one.primary
        assert (two.med, two.local_pref, two.primary) == (100, 100, True)
        fib.wait_for(family.prefix, ["node2"], 5.0)
        svc = service_status(lab, "node1")
        if svc is not None:
            assert (svc["route"], svc["drained"]) == ("DRAINING", True)

        withdrawn = watch_paths(lab, family.prefix, only_node2, lowered.after, DRAIN_SECONDS + 5.0)
        # how long the router had node1's lowered path: between these two bounds
        longest = withdrawn.after - lowered.before
        shortest = withdrawn.before - lowered.after
        assert fib.current(family.prefix) == ("node2",)
        drained = loop.stats()

        mark = fib.mark()
        ctl.undrain(lab, "node1")
        lab.wait_paths(family.prefix, announced_normally, 5.0, what="node1 back")
        back = fib.wait_for(family.prefix, NODES, 5.0, after=mark)
        wait_until(lambda: more_requests(loop.stats, back.first_after, 100), 20.0)
        stats = loop.stop()
    changes = fib.stop()

    cut = [r for r in stats.errors if cut_by_rehash(r, changes)]
    print(
        f"DRAIN exabgp={version(lab)} family={family.name} via={how} requests={stats.total} "
        f"failed={stats.failures - len(cut)} cut_in_flight_at_fib_change={len(cut)} "
        f"lowered_to_withdrawn={(longest + shortest) / 2:.3f}+-{(longest - shortest) / 2:.3f}",
        flush=True,
    )
    # drain_seconds run from the drain command; the lowered UPDATE may reach BIRD a little
    # later than the withdraw does (ExaBGP and load), so allow that much less
    assert longest >= DRAIN_SECONDS - 0.15  # not withdrawn before drain_seconds...
    assert shortest <= DRAIN_SECONDS + 2.0  # ...nor long after
    assert [(c.before, c.after) for c in changes] == [
        (tuple(NODES), ("node2",)),
        (("node2",), tuple(NODES)),
    ]
    assert unexplained_failures(stats, changes) == [], changes
    assert len(cut) <= len(changes)
    assert set(drained.per_node) == set(NODES)  # node1 answered until the drain moved it
    assert set(requests_after(stats, back.first_after).per_node) == set(NODES)


def test_primary_backup_by_med(lab: Lab, failovers: FailoverLog) -> None:
    """Primary/backup: node1 announces MED 100, node2 MED 200 -> the router sends all
    traffic to node1. node1's service fails -> traffic moves to node2; it recovers ->
    traffic returns to node1. Both families; requests after each move land on one node.
    """
    backup = ctl.controller_argv(lab, "node2", ctl.scenario_config(med=BACKUP_MED), name="med200")
    lab.ensure({"node1": baseline(lab)["node1"], "node2": backup})

    def primary_backup(paths: Mapping[str, BirdPath]) -> bool:
        return (
            sorted(paths) == list(NODES)
            and (paths["node1"].med, paths["node2"].med) == (100, BACKUP_MED)
            and paths["node1"].primary
        )

    for fam in FAMILIES:
        lab.wait_paths(fam.prefix, primary_backup, 15.0, what=f"{fam.prefix} primary/backup")
        lab.wait_fib_nodes(fam.prefix, ["node1"], 5.0)
        results = [lab.client_get(fam.url) for _ in range(30)]
        assert failed(results) == []
        assert {r.node for r in results} == {"node1"}

    prefixes = [fam.prefix for fam in FAMILIES]
    with (
        FibWatcher(lab, prefixes) as fib,
        lab.client_loop(V4.url, timeout=1.0, max_seconds=60.0) as loop4,
        lab.client_loop(V6.url, timeout=1.0, max_seconds=60.0) as loop6,
    ):
        loops = {V4.name: loop4, V6.name: loop6}
        for loop in loops.values():
            loop.wait_for_requests(20, 10.0)
        stopped = time.monotonic()
        lab.stop_http("node1")
        moved = {fam.name: fib.wait_for(fam.prefix, ["node2"], 10.0) for fam in FAMILIES}
        for name, change in moved.items():
            failovers.record(version(lab), name, change.seen - stopped, "primary-backup")
        for fam in FAMILIES:
            wait_until(
                partial(more_requests, loops[fam.name].stats, moved[fam.name].first_after, 50), 20.0
            )

        mark = fib.mark()
        lab.start_http("node1")
        home = {fam.name: fib.wait_for(fam.prefix, ["node1"], 10.0, after=mark) for fam in FAMILIES}
        for fam in FAMILIES:
            wait_until(
                partial(more_requests, loops[fam.name].stats, home[fam.name].first_after, 50), 20.0
            )
        stats = {name: loop.stop() for name, loop in loops.items()}

    for fam in FAMILIES:
        during = within(stats[fam.name], moved[fam.name].first_after, home[fam.name].last_before)
        assert failed(during.results) == []
        assert set(during.per_node) == {"node2"}
        after = requests_after(stats[fam.name], home[fam.name].first_after)
        assert failed(after.results) == []
        assert set(after.per_node) == {"node1"}, (
            fam.name,
            [r for r in after.results if r.node != "node1"][:5],
            fib.changes(fam.prefix),
        )
        before = within(stats[fam.name], 0, moved[fam.name].last_before)
        assert set(before.per_node) == {"node1"}


def test_killed_controller_is_respawned_without_touching_the_routes(lab: Lab) -> None:
    """Controller killed: SIGKILL of node1's API process leaves node1's paths in BIRD
    untouched (polled throughout the respawn: never gone, BIRD's `since` unchanged;
    afterwards BIRD's counters show no withdraw received and no update accepted, and the
    sessions were not reset); ExaBGP's new process takes over from the state file, and a
    later failure of node1's service is withdrawn by that new process.
    """
    before = {fam.prefix: lab.bird_paths_by_node(fam.prefix)["node1"].since for fam in FAMILIES}
    sessions = {name: s.since for name, s in lab.sessions().items() if name.startswith("node1")}
    imported = {name: import_stats(lab, name) for name in sessions}
    old = lab.wait_api_pid("node1")
    wait_until(lambda: has_event(new_run(lab, "node1", old), "health", to="UP"), 5.0)

    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    new: int | None = None
    settled: float | None = None
    samples = 0
    # Watch BIRD through the whole respawn: until the new process has checked the
    # service UP, then 1 s more (several check intervals) for any late withdraw.
    while settled is None or time.monotonic() - settled < 1.0:
        assert time.monotonic() - killed < 20.0, f"no settled new controller (new pid {new})"
        for fam in FAMILIES:
            paths = lab.bird_paths_by_node(fam.prefix)
            at = f"{time.monotonic() - killed:.3f} s after the kill (new pid {new})"
            assert "node1" in paths, f"{fam.prefix}: node1's path left BIRD {at}"
            assert same_time(paths["node1"].since, before[fam.prefix]), f"{fam.prefix} changed {at}"
        samples += 1
        if new is None:
            new = next((p for p in lab.api_pids("node1") if p != old), None)
        elif settled is None and has_event(new_run(lab, "node1", new), "health", to="UP"):
            settled = time.monotonic()
        time.sleep(0.01)
    assert new is not None
    print(
        f"RESPAWN exabgp={version(lab)} old_pid={old} new_pid={new} bird_samples={samples} "
        f"new_controller_up_after={settled - killed:.3f}",
        flush=True,
    )

    assert not is_alive(old)
    assert lab.api_pids("node1") == [new]
    run = new_run(lab, "node1", new)
    assert has_event(run, "restored", same_exabgp="true"), run
    assert not has_event(run, "route"), "the new controller changed the route"
    for name, since in sessions.items():  # the sessions were not reset
        assert lab.sessions()[name].established, name
        assert same_time(lab.sessions()[name].since, since), name
    for name, stats in imported.items():
        now = import_stats(lab, name)
        # not one withdraw reached the router, and no update it accepted (changed the path)
        assert now["withdraws"]["received"] == stats["withdraws"]["received"], name
        assert now["updates"]["accepted"] == stats["updates"]["accepted"], name
    for fam in FAMILIES:
        assert lab.fib_nodes(fam.prefix) == list(NODES)

    lab.stop_http("node1")
    for fam in FAMILIES:
        lab.wait_path_nodes(fam.prefix, ["node2"], 5.0)
    wait_until(
        lambda: has_event(new_run(lab, "node1", new), "route", to="WITHDRAWN"),
        5.0,
        what="the new controller withdrew",
    )
    assert lab.api_pids("node1") == [new]


def test_killed_exabgp_drops_node1_and_clients_keep_working(lab: Lab) -> None:
    """ExaBGP killed on node1: the router drops node1's paths (TCP session closed) and the
    client keeps working through node2; the orphaned controller sees EOF and exits.
    """
    api = lab.wait_api_pid("node1")
    with (
        FibWatcher(lab, [fam.prefix for fam in FAMILIES]) as fib,
        lab.client_loop(V4.url, timeout=1.0, max_seconds=60.0) as loop4,
        lab.client_loop(V6.url, timeout=1.0, max_seconds=60.0) as loop6,
    ):
        loops = {V4.name: loop4, V6.name: loop6}
        for loop in loops.values():
            loop.wait_for_requests(20, 10.0)
        killed = time.monotonic()
        lab.kill_exabgp("node1")
        gone = {fam.name: fib.wait_for(fam.prefix, ["node2"], 10.0) for fam in FAMILIES}
        for fam in FAMILIES:
            lab.wait_path_nodes(fam.prefix, ["node2"], 5.0)
            wait_until(
                partial(more_requests, loops[fam.name].stats, gone[fam.name].first_after, 100), 20.0
            )
        stats = {name: loop.stop() for name, loop in loops.items()}

    print(
        f"EXABGP-KILLED exabgp={version(lab)} "
        + " ".join(f"{n}_gone_after={c.seen - killed:.3f}" for n, c in gone.items()),
        flush=True,
    )
    for fam in FAMILIES:
        after = requests_after(stats[fam.name], gone[fam.name].first_after)
        assert failed(after.results) == []
        assert set(after.per_node) == {"node2"}
    assert not lab.sessions()["node1"].established
    wait_until(lambda: not is_alive(api), 10.0, what="the orphaned controller exits")


def test_lab_leaves_nothing_behind(make_lab: Callable[[], Lab]) -> None:
    """Teardown: a lab running the real controller on both nodes leaves no namespace,
    veth or process behind once stopped (checked on a second lab; the module's own lab
    is checked the same way when the module ends).
    """
    extra = make_lab()
    extra.start(baseline(extra))
    for fam in FAMILIES:
        extra.wait_fib_nodes(fam.prefix, NODES, 15.0)
    pids = [extra.wait_api_pid(node) for node in NODES]
    pids += [pid for node in NODES if (pid := extra.exabgp_pid(node)) is not None]
    assert len(pids) == 4
    namespaces = [extra.ns(name) for name in ("router", *NODES, "client")]
    extra.stop()
    assert extra.leftovers() == []
    assert not any(is_alive(pid) for pid in pids)
    assert not extra.tmpdir.exists()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not any(ns in listed.stdout for ns in namespaces)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    assert extra.id not in links.stdout
