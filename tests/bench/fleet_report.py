"""docs/benchmarks.md's P6 (the fleet guard on etcd): its goals and its section."""

from __future__ import annotations

import math
from typing import Any

from .report import NA
from .report import _table as table
from .report import _verdict as verdict


def ms(value: Any, digits: int = 0) -> str:
    """Seconds shown in milliseconds (the P1-P5 helper has no digits)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{1000 * value:.{digits}f} ms"


ADDED_P99_GOAL = 0.050
"""P6a: what the guard may add to the p99 of a withdraw (issue 13)."""


def goals(data: dict[str, Any] | None) -> list[list[str]]:
    if not data:
        return []
    rows: list[list[str]] = []
    a = data.get("P6a", {})
    if a.get("added_p99") is not None:
        added = a["added_p99"]
        rows.append(
            [
                "P6a fleet guard: added p99, decision to withdraw written",
                "≤ 50 ms",
                f"+{ms(added)} (p99 {ms(a['on']['p99'])} on, {ms(a['off']['p99'])} off)",
                verdict(added <= ADDED_P99_GOAL),
            ]
        )
    b = data.get("P6b", {})
    steady = {p["label"]: p for p in b.get("phases", [])}
    one, ten = (
        steady.get("steady, checks every 1 s"),
        steady.get("steady, checks every 0.1 s (10x)"),
    )
    if one and ten:
        grows = ten["writes_per_s"] > one["writes_per_s"] + 0.5
        rows.append(
            [
                f"P6b {b['nodes']} nodes \u00d7 {b['services']} services: etcd writes do not grow "
                "with checks",
                "same writes/s at 10\u00d7 the checks",
                f"{one['writes_per_s']:.1f} → {ten['writes_per_s']:.1f} writes/s at "
                f"{one['checks_per_s']:.0f} → {ten['checks_per_s']:.0f} checks/s",
                verdict(not grows),
            ]
        )
    rows += _p6b_findings(b)
    c = data.get("P6c", {})
    if c.get("trials_done"):
        ok = c.get("never_below_1")
        rows.append(
            [
                f"P6c {c['nodes']} nodes fail together, min_announcing 1",
                "never below 1 announcing",
                f"lowest {c['lowest_etcd']} (etcd's history), {c['lowest_guards']} (guards), "
                f"{c['trials_done']} trials",
                verdict(bool(ok)),
            ]
        )
    return rows


def _p6b_findings(b: dict[str, Any]) -> list[list[str]]:
    """What the simulated fleet found beyond the issue's claim (see the P6b text)."""
    rows: list[list[str]] = []
    decided = {"allowed": 0, "refused": 0, "unknown": 0}
    for p in b.get("phases", []):
        for k, v in p["decisions"].items():
            decided[k] += v
    if sum(decided.values()):
        rows.append(
            [
                f"P6b guard questions in a group of {b['nodes']}",
                "each answered: allowed or refused",
                f"{decided['unknown']} of {sum(decided.values())} unknown"
                + (
                    " (etcd refuses a transaction of over 128 compares)"
                    if decided["unknown"]
                    else ""
                ),
                verdict(decided["unknown"] == 0),
            ]
        )
    view = b.get("view")
    if view:
        rows.append(
            [
                "P6b steady state with each node's view (a watch, and a one-key probe a second)",
                "cost grows with route changes and lease renewals only",
                f"{view['probe']['projected_etcd_cores']:.2f} cores of etcd at {b['nodes']} "
                f"nodes (projected from one probe's cost; reading all {view['keys']} keys "
                f"instead: {view['full']['projected_etcd_cores']:.1f})",
                # Missed when the probes would cost etcd more than the whole steady state.
                verdict(view["probe"]["projected_etcd_cores"] <= _steady_etcd_cores(b)),
            ]
        )
    return rows


def _steady_etcd_cores(b: dict[str, Any]) -> float:
    for p in b.get("phases", []):
        if p["label"] == "steady, checks every 1 s":
            return float(p["etcd_cores"])
    return 0.0


def section(data: dict[str, Any]) -> list[str]:
    etcd = data.get("etcd", {})
    lines = [
        "## P6 Fleet guard on etcd",
        "",
        f"announcer alone (EXA has no fleet guard). etcd {etcd.get('version', '?')} from "
        f"Debian, {etcd.get('members', 3)} members on this machine's loopback (one data "
        "directory each on the same disk), started for this section and stopped after.",
        "",
    ]
    for key, fn in (("P6a", _p6a), ("P6b", _p6b), ("P6c", _p6c)):
        if key in data:
            lines += fn(data[key])
        why = data.get("errors", {}).get(key)
        if why:
            lines += [f"**{key} failed in this run:** `{why}`", ""]
    return lines


def _p6a(a: dict[str, Any]) -> list[str]:
    lines = [
        "### P6a Time the guard adds to a withdraw",
        "",
        "Two real daemons in one process (`Daemon`, its check runner, clock and loop), one "
        "without and one with a `[fleet]`, and a peer (the real fleet thread) that keeps "
        "announcing so the guard allows the withdraw; trials alternate between the two. The "
        "time runs from the moment the check returns the failure that takes the service down "
        "(`fall = 1`: the decision) to the moment the withdraw command is handed to the output "
        "(a stand-in for ExaBGP's pipe that answers `done`). With the guard that includes the "
        "question to the fleet thread, a read of the peers, one etcd transaction and the "
        f"answer back through the loop. {a.get('trials', 0)} trials each.",
        "",
    ]
    rows = []
    for key, label in (("off", "no `[fleet]`"), ("on", "`[fleet]`, guard allows")):
        s = a.get(key, {})
        if s.get("n"):
            rows.append(
                [label, s["n"], ms(s["p50"], 1), ms(s["p90"], 1), ms(s["p99"], 1), ms(s["max"], 1)]
            )
    lines += table(["", "n", "p50", "p90", "p99", "max"], rows)
    if a.get("added_p99") is not None:
        lines += [
            f"Added by the guard: p50 +{ms(a['added_p50'], 1)}, p99 +{ms(a['added_p99'], 1)} "
            "(goal: p99 ≤ 50 ms).",
            "",
        ]
    return lines


def _p6b(b: dict[str, Any]) -> list[str]:
    lines = [
        "### P6b A simulated fleet: etcd's load",
        "",
        f"{b['nodes']} nodes \u00d7 {b['services']} services, each node announcer's own "
        "`FleetStore` (its lease, records written on change, the guard's transaction) driven "
        f"by simulated health instead of ExaBGP: checks every {b['interval']:g} s, "
        f"`lease_seconds = {b['lease_seconds']}` renewed every third of it, `min_announcing = "
        "1`; the nodes share 4 HTTP sessions and 12 threads (`tests/bench/fleetsim.py`). "
        "Writes are etcd's committed Raft proposals (puts, transactions that write, lease "
        "grants and revokes); lease renewals are not proposals in etcd 3.4, they cost the "
        "leader CPU only. etcd CPU is all three members' (`process_cpu_seconds_total`), "
        "clients' CPU this process's (every simulated node, and the simulated checks, which a "
        "real node spends on its checks anyway), both in cores. "
        "mvcc ranges count reads and each compare of a transaction.",
        "",
    ]
    rows = []
    for p in b.get("phases", []):
        d = p["decisions"]
        asked = f"{d['allowed']} / {d['refused']} / {d['unknown']}" if sum(d.values()) else NA
        settle = p.get("settle_seconds")
        rows.append(
            [
                p["label"] + (f" (settled in {settle:.1f} s)" if settle is not None else ""),
                f"{p['seconds']:.0f}",
                f"{p['checks_per_s']:.0f}",
                f"{p['route_changes_per_s']:.1f}",
                f"{p['writes_per_s']:.1f}",
                f"{p['etcd']['txns']:.1f}",
                f"{p['etcd']['renewals']:.1f}",
                f"{p['etcd']['ranges']:.0f}",
                f"{p['etcd_cores']:.2f}",
                f"{p['clients_cores']:.2f}",
                asked,
            ]
        )
    lines += table(
        [
            "Phase",
            "s",
            "checks/s",
            "route changes/s",
            "etcd writes/s",
            "txns/s",
            "renewals/s",
            "mvcc ranges/s",
            "etcd CPU",
            "clients CPU",
            "guard: allowed / refused / unknown",
        ],
        rows,
    )
    if "failure_lowest_etcd" in b:
        lines += [
            f"Through the correlated failure the fewest nodes announcing a service were "
            f"{b['failure_lowest_etcd']} in etcd's history (every revision, replayed by a "
            f"watch) and {b['failure_lowest_guards']} by the guards' own decisions.",
            "",
        ]
    unknown = sum(p["decisions"]["unknown"] for p in b.get("phases", []))
    if unknown:
        said = "; ".join(f"`{why}`: {n}" for why, n in sorted(b.get("unknown_why", {}).items()))
        lines += [
            f"**{unknown} guard decisions were unknown** (etcd said: {said or NA}). "
            "The guard's transaction compares "
            "every counted peer's key, and etcd refuses a transaction of more than 128 "
            "compares (its `--max-txn-ops`, default 128): "
            "while more than 128 peers announce a service no question gets an answer, so "
            'with `on_unknown = "local"` the node withdraws unguarded (harmless while so many '
            'announce, but no guard) and with `"hold"` it holds the route though 128 others '
            "announce.",
            "",
        ]
    view = b.get("view")
    if view:
        lines += [
            "Not simulated above: each daemon's fleet thread shows the group's view once a "
            "second. It follows the group with an etcd watch and reads one key with quorum "
            "(a probe that etcd still answers): "
            f"{ms(view['probe']['seconds_per_read'])}, "
            f"{ms(view['probe']['etcd_cpu_per_read'])} of etcd CPU and "
            f"{ms(view['probe']['client_cpu_per_read'])} of the client's per probe "
            f"({view['reads']} probes), {view['probe']['projected_etcd_cores']:.2f} cores of "
            f"etcd at {b['nodes']} nodes. Reading the whole group instead (every service's "
            f"keys, here {view['keys']}), as it does while its copy is not known good and as "
            f"it did each second before the watch: {ms(view['full']['seconds_per_read'])}, "
            f"{ms(view['full']['etcd_cpu_per_read'])} of etcd CPU per read, "
            f"{view['full']['projected_etcd_cores']:.1f} cores of etcd at {b['nodes']} nodes.",
            "",
        ]
    return lines


def _p6c(c: dict[str, Any]) -> list[str]:
    s = c.get("settle", {})
    lines = [
        "### P6c Correlated failure of many nodes, min_announcing = 1",
        "",
        f"{c['nodes']} simulated nodes (as in P6b), one service, checks every "
        f"{c['interval']:g} s; in each of {c['trials']} trials every node announces, then "
        "every check fails at once (each node sees it at its next check, within one "
        "interval). Announcing is counted from etcd's side (its history from the revision "
        "before the failure to the end, every revision replayed by a watch) and from the "
        "guards' side (each node's own decisions); settled = every decision made, no "
        "question out, and exactly one node still announcing (held, lowered).",
        "",
    ]
    if s.get("n"):
        d = c.get("decisions", {})
        lines += table(
            ["Trials", "Lowest announcing (etcd / guards)", "Settle p50", "p90", "p99", "max"],
            [
                [
                    c["trials_done"],
                    f"{c['lowest_etcd']} / {c['lowest_guards']}",
                    f"{s['p50']:.2f} s",
                    f"{s['p90']:.2f} s",
                    f"{s['p99']:.2f} s",
                    f"{s['max']:.2f} s",
                ]
            ],
        )
        lines += [
            f"Guard decisions over all trials: {d.get('allowed', 0)} allowed, "
            f"{d.get('refused', 0)} refused (held), {d.get('unknown', 0)} unknown; "
            f"announcing at the end of each trial: {c.get('final_announcing')}.",
            "",
        ]
    return lines
