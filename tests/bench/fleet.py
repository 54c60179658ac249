"""P6: the fleet guard's costs against a real 3-member etcd on this machine.

P6a (:mod:`tests.bench.guardcost`) the guard's added time to a withdraw; P6b a
simulated fleet's load on etcd through steady state, more checks, route flaps, shorter
leases and a correlated failure of every node; P6c correlated failures of 100 nodes
with ``min_announcing = 1``, checked from etcd's history and the guards' decisions.
etcd is Debian's (``etcd-server``), its members on loopback ports, stopped after.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench import guardcost
from tests.bench.common import REPO_ROOT, log, summary
from tests.bench.fleetsim import (
    SimFleet,
    etcd_counters,
    lowest_in_history,
    own_cpu,
    rates,
    revision,
    view_cost,
)
from tests.integration.etcd_harness import Cluster, etcd_binary


def available() -> str | None:
    """Why P6 cannot run here, or None."""
    if etcd_binary() is None:
        return "`etcd` (apt-get install etcd-server)"
    return None


class Window:
    """etcd's counters, its CPU and this process's CPU over a stretch of time."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.etcd = etcd_counters(fleet.urls)
        self.cpu = own_cpu()
        self.checks = fleet.checks
        self.routes = fleet.counts.routes
        self.decisions = fleet.decisions()
        self.start = time.monotonic()

    def close(self, label: str, **extra: Any) -> dict[str, Any]:
        seconds = time.monotonic() - self.start
        after = etcd_counters(self.fleet.urls)
        per_s = rates(self.etcd, after, seconds)
        decisions = self.fleet.decisions()
        return {
            "label": label,
            "seconds": seconds,
            "checks_per_s": (self.fleet.checks - self.checks) / seconds,
            "route_changes_per_s": (self.fleet.counts.routes - self.routes) / seconds,
            "decisions": {k: decisions[k] - self.decisions.get(k, 0) for k in decisions},
            "etcd": {k: v for k, v in per_s.items() if k != "cpu"},
            "writes_per_s": per_s["proposals"],
            "etcd_cores": per_s["cpu"],
            "clients_cores": (own_cpu() - self.cpu) / seconds,
            **extra,
        }


def _wait(fleet: SimFleet, what: str, predicate: Callable[[], bool], timeout: float) -> float:
    took = fleet.wait(predicate, timeout)
    if took is None:
        raise TimeoutError(f"P6: {what} not reached within {timeout:g} s")
    return took


def _all_announced(fleet: SimFleet) -> Callable[[], bool]:
    def check() -> bool:
        return fleet.idle() and all(
            s.route == "ANNOUNCED" for n in fleet.nodes for s in n.svcs.values()
        )

    return check


def _relet(fleet: SimFleet, seconds: int) -> None:
    """Every node takes a lease of ``seconds`` (the old one revoked, records written again)."""
    for node in fleet.nodes:
        with node.lock:
            old, node.store.lease = node.store.lease, 0
            node.store.lease_seconds = seconds
            node.store.ensure_lease()
            node.store.republish()
            if old:
                node.store.client.revoke(old)


def _flaps(fleet: SimFleet, rate: float, stop: threading.Event) -> None:
    """About ``rate`` route changes a second: a random service of a random node fails,
    and is healthy again a second later (two changes)."""
    rnd = random.Random(7)
    down: list[tuple[float, Any]] = []
    while not stop.wait(2.0 / rate):
        node = rnd.choice(fleet.nodes)
        svc = node.svcs[rnd.choice(fleet.services)]
        if svc.healthy:
            svc.healthy = False
            down.append((time.monotonic(), svc))
        while down and time.monotonic() - down[0][0] >= 1.0:
            down.pop(0)[1].healthy = True
    for _, svc in down:
        svc.healthy = True


def p6b(urls: list[str], params: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    nodes, services, window = params["p6b_nodes"], params["p6b_services"], params["p6b_window"]
    out.update({"nodes": nodes, "services": services, "lease_seconds": 10, "interval": 1.0})
    fleet = SimFleet(urls, nodes=nodes, services=services, group="p6b")
    phases: list[dict[str, Any]] = out.setdefault("phases", [])
    try:
        w = Window(fleet)
        fleet.start()
        out["start_seconds"] = _wait(fleet, "every route announced", _all_announced(fleet), 300)
        phases.append(w.close("start: every node announces every service"))
        time.sleep(2.0)

        w = Window(fleet)
        time.sleep(window)
        phases.append(w.close("steady, checks every 1 s"))

        fleet.interval = 0.1
        time.sleep(1.0)
        w = Window(fleet)
        time.sleep(window)
        phases.append(w.close("steady, checks every 0.1 s (10x)"))
        fleet.interval = 1.0

        stop = threading.Event()
        flapper = threading.Thread(target=_flaps, args=(fleet, params["p6b_flaps"], stop))
        w = Window(fleet)
        flapper.start()
        time.sleep(window)
        stop.set()
        flapper.join()
        phases.append(w.close(f"route flaps (about {params['p6b_flaps']:g} changes/s)"))
        _wait(fleet, "the flaps to settle", _all_announced(fleet), 60)

        _relet(fleet, 5)
        time.sleep(2.0)
        w = Window(fleet)
        time.sleep(window)
        phases.append(w.close("steady, lease 5 s (renewals x2)"))
        _relet(fleet, 10)
        time.sleep(2.0)

        before = revision(fleet)
        fleet.counts.reset_lowest()
        w = Window(fleet)
        fleet.set_health(False)
        took = _wait(fleet, "the failure to settle", lambda: fleet.settled(1), 600)
        phases.append(w.close("correlated failure of every node", settle_seconds=took))
        out["failure_lowest_guards"] = min(fleet.counts.lowest.values())
        out["failure_lowest_etcd"] = min(
            lowest_in_history(urls[0], fleet, before, revision(fleet)).values()
        )
        out["failure_errors"] = fleet.errors()
        out["unknown_why"] = fleet.unknown()

        w = Window(fleet)
        fleet.set_health(True)
        took = _wait(fleet, "the recovery", _all_announced(fleet), 600)
        phases.append(w.close("recovery of every node", settle_seconds=took))

        view = view_cost(fleet, params["p6b_view_reads"])
        for part in ("probe", "full"):
            view[part]["projected_etcd_cores"] = view[part]["etcd_cpu_per_read"] * nodes
            view[part]["projected_client_cores"] = view[part]["client_cpu_per_read"] * nodes
        out["view"] = view
    finally:
        fleet.stop()
    return out


def p6c(urls: list[str], params: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    nodes, trials = params["p6c_nodes"], params["p6c_trials"]
    out.update({"nodes": nodes, "trials": trials, "min_announcing": 1, "interval": 1.0})
    fleet = SimFleet(urls, nodes=nodes, services=1, group="p6c").start()
    settle: list[float] = []
    guards: list[int] = []
    etcd: list[int] = []
    finals: list[int] = []
    try:
        for i in range(trials):
            fleet.set_health(True)
            _wait(fleet, f"trial {i}: every node announced", _all_announced(fleet), 120)
            time.sleep(0.2)
            before = revision(fleet)
            fleet.counts.reset_lowest()
            fleet.set_health(False)
            settle.append(_wait(fleet, f"trial {i}: settled", lambda: fleet.settled(1), 120))
            guards.append(fleet.counts.lowest["svc00"])
            finals.append(fleet.counts.now["svc00"])
            etcd.append(lowest_in_history(urls[0], fleet, before, revision(fleet))["svc00"])
            if (i + 1) % 10 == 0:
                log(f"P6c: {i + 1} of {trials} trials, lowest {min(guards)} / {min(etcd)}")
        out["decisions"] = fleet.decisions()
        out["unknown_why"] = fleet.unknown()
        out["errors"] = fleet.errors()
    finally:
        fleet.stop()
    out.update(
        {
            "settle": summary(settle),
            "lowest_guards": min(guards) if guards else None,
            "lowest_etcd": min(etcd) if etcd else None,
            "final_announcing": sorted(set(finals)),
            "trials_done": len(settle),
            "never_below_1": bool(guards) and min(guards) >= 1 and min(etcd) >= 1,
        }
    )
    log(
        f"P6c: {len(settle)} trials, lowest announcing {out['lowest_guards']} (guards) / "
        f"{out['lowest_etcd']} (etcd), settle p50 {out['settle'].get('p50', 0):.2f} s"
    )
    return out


def run(params: dict[str, Any], wanted: set[str], out: dict[str, Any]) -> None:
    """The P6 parts in ``wanted`` (P6a, P6b, P6c) against one 3-member etcd."""
    cache = REPO_ROOT / ".cache" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="p6-", dir=cache))
    cluster = Cluster(scratch / "etcd", size=3)
    (scratch / "etcd").mkdir()
    out["etcd"] = {"members": 3, "version": _etcd_version()}
    try:
        cluster.start()
        parts: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
            ("P6a", lambda o: guardcost.run(cluster.urls, scratch, params["p6a_trials"], o)),
            ("P6b", lambda o: p6b(cluster.urls, params, o)),
            ("P6c", lambda o: p6c(cluster.urls, params, o)),
        )
        for key, part in parts:
            if key not in wanted and "P6" not in wanted:
                continue
            log(f"bench: {key}")
            began = time.monotonic()
            try:
                part(out.setdefault(key, {}))
            except Exception as exc:
                out.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
                log(f"bench: {key} failed: {exc!r}")
            out[key]["duration"] = time.monotonic() - began
    finally:
        cluster.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)


def _etcd_version() -> str:
    import subprocess

    try:
        proc = subprocess.run(
            [etcd_binary() or "etcd", "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = proc.stdout.splitlines()[0] if proc.stdout else "?"
    return first.replace("etcd Version: ", "")


def missing(data: dict[str, Any] | None) -> list[str]:
    """The P6 figures a run asked for and did not produce (the quick run's assertion)."""
    if not data:
        return []
    out: list[str] = []
    for key, part in data.items():
        if key == "P6a" and not (part.get("on", {}).get("n") and part.get("off", {}).get("n")):
            out.append("P6a samples")
        if key == "P6b":
            labels = [p.get("label", "") for p in part.get("phases", [])]
            if len(labels) < 7 or "view" not in part:
                out.append(f"P6b phases ({len(labels)} of 7, view read cost)")
        if key == "P6c" and not part.get("settle", {}).get("n"):
            out.append("P6c trials")
    return out
