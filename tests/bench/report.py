"""docs/benchmarks.md from one run's results (see :class:`~tests.bench.common.Results`)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from .common import GOAL_PACE_S, Results, at_goal_pace, ratio

NA = "\u2013"  # en dash
TOOL_NAMES = {"announcer": "announcer", "exa": "EXA", "floor": "floor (stand-in)"}


def _s(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:.{digits}f}"


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{1000 * value:.0f} ms"


def _pct(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{100 * value:.{digits}f} %"


def _x(value: float | None) -> str:
    return NA if value is None else f"{value:.1f}\u00d7"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def _verdict(ok: bool | None) -> str:
    return NA if ok is None else ("**met**" if ok else "**missed**")


# --------------------------------------------------------------------------- sections


def machine_section(r: Results) -> list[str]:
    m = r.machine
    rows = [
        ("CPU", f"{m.get('nproc')} \u00d7 {m.get('cpu_model')}"),
        ("Memory", f"{m.get('memory_gb')} GB"),
        ("Kernel", m.get("kernel")),
        ("OS", m.get("os")),
        ("Python", m.get("python")),
        ("ExaBGP (both tools; EXA is its `exabgp healthcheck`)", m.get("exabgp")),
        ("BIRD (the lab's router)", m.get("bird")),
        ("curl (EXA's HTTP check)", m.get("curl")),
        ("announcer", f"{m.get('announcer')} at {m.get('commit')}"),
        ("Accounting", m.get("cgroups")),
        (
            "Load average at start / end",
            f"{_load(m.get('loadavg_start'))} / {_load(m.get('loadavg_end'))}",
        ),
    ]
    return ["## Machine and software", "", *_table(["", ""], rows)]


def _load(value: Any) -> str:
    if not value:
        return NA
    return " ".join(f"{v:.2f}" for v in value)


def failover_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## P1 Failover",
        "",
        f"node1's web server is killed at a random point of the check cycle; the figure is the "
        f"time until node1's path leaves the router's kernel FIB (`ip -ts monitor route` "
        f"timestamps; node2 keeps announcing, so ECMP {{node1, node2}} becomes {{node2}}). "
        f"{data['trials']} trials per configuration and tool. CPU is the health checker's whole "
        f"process tree (cgroup cpuacct, EXA's `sh` and `curl` included) over "
        f"{data['cpu_window_s']:g} s while healthy, in % of one core, for this one service; "
        f"ExaBGP's own CPU beside it. The lab's web server closes every connection "
        f"(HTTP/1.0), so both tools open a TCP connection per check.",
        "",
    ]
    rows = []
    for p in data["profiles"]:
        for tool in p.get("tools", ("announcer", "exa")):
            e = p.get(tool)
            if not e:
                continue
            name = TOOL_NAMES.get(tool, tool)
            if e.get("error"):
                rows.append([f"({p['key']}) {p['title']}", name, f"failed: `{e['error'][:120]}`"])
                rows[-1] += [""] * 6
                continue
            f = e["failover"]
            rows.append(
                [
                    f"({p['key']}) {p['title']}: {_how(p, tool)}",
                    name,
                    _s(f.get("p50")),
                    _s(f.get("p90")),
                    _s(f.get("p99")),
                    _s(f.get("max")),
                    f"{f.get('n', 0)}" + (f" ({e['missed']} missed)" if e.get("missed") else ""),
                    _pct(e.get("checker_core_fraction")),
                    _pct(e.get("exabgp_core_fraction")),
                ]
            )
        a, x = p.get("announcer"), p.get("exa")
        if a and x and not a.get("error") and not x.get("error"):
            fa, fx = a["failover"], x["failover"]
            rows.append(
                [
                    f"({p['key']}) ratio EXA / announcer",
                    "",
                    _x(ratio(fx.get("p50"), fa.get("p50"))),
                    _x(ratio(fx.get("p90"), fa.get("p90"))),
                    _x(ratio(fx.get("p99"), fa.get("p99"))),
                    _x(ratio(fx.get("max"), fa.get("max"))),
                    "",
                    _x(ratio(x.get("checker_core_fraction"), a.get("checker_core_fraction"))),
                    _x(ratio(x.get("exabgp_core_fraction"), a.get("exabgp_core_fraction"))),
                ]
            )
        fl = p.get("floor")
        if a and fl and not a.get("error") and not fl.get("error"):
            fa, ff = a["failover"], fl["failover"]
            rows.append(
                [f"({p['key']}) announcer minus the floor", "", *_minus(fa, ff), "", "", ""]
            )
    headers = ["Configuration", "Tool", "p50 s", "p90 s", "p99 s", "max s", "trials"]
    headers += ["checker CPU / service", "ExaBGP CPU"]
    lines += _table(headers, rows)
    lines += [
        "EXA gets the same numbers through `--interval`, `--fast-interval`, `--rise`, `--fall`; "
        "its `--timeout` takes whole seconds (SIGALRM), so it stays at 1 and curl's "
        "`--max-time` carries the check timeout. EXA runs with `--withdraw-on-down` (announcer's "
        'default `on_down = "withdraw"`), `--no-ip-setup`, `--no-syslog` (no /dev/log in the '
        "lab; logs go to ExaBGP's log) and re-announces every iteration (its default, no "
        "`--debounce`). announcer runs with flap dampening off (a benchmark fails the same node "
        "dozens of times in a row).",
        "",
    ]
    if any(p.get("crash") for p in data["profiles"]):
        lines += [
            "Row (d) SIGKILLs the web server (a crash: its pid file stays behind). announcer "
            "watches it with the `process` check alone (`pid_file`, `immediate = true`, "
            "`grace = 0`): a pidfd, no polling; the failed check takes the service down at once, "
            "without waiting for `fall` rounds. EXA has no such check: it runs at its fastest "
            "setting, (c)'s HTTP check. The floor is a stand-in API process "
            "(`tests/bench/floor.py`) that writes the withdraw to ExaBGP the instant its pidfd "
            "says the server died: no checks, no state, nothing a controller could skip; "
            "ExaBGP, BGP and BIRD's FIB update are the rest of every figure.",
            "",
        ]
    lines += cpu_floor_lines(data["profiles"])
    lines += idle_lines(data.get("idle"))
    return lines


def cpu_floor_lines(profiles: list[dict[str, Any]]) -> list[str]:
    """(c)'s CPU floor: a bare fresh-connection check, on asyncio and blocking."""
    c = next((p for p in profiles if p.get("key") == "c" and p.get("cpu_floor")), None)
    if c is None:
        return []
    floor = c["cpu_floor"]
    cells = []
    for mode, how in (("asyncio", "on an asyncio loop"), ("blocking", "with a blocking socket")):
        f = floor.get(mode, {})
        if "core_fraction" in f:
            failed = f"{f['failed']} of {f['checks']} failed"
            cells.append(f"{_pct(f['core_fraction'])} {how} ({failed})")
        else:
            cells.append(f"{how}: failed, `{str(f.get('error', '?'))[:120]}`")
    return [
        "(c)'s CPU floor (`tests/bench/checkfloor.py`, in node1, right after (c)): a bare check "
        "of the same web server at the same interval, a new TCP connection, one GET, read "
        "until the server closes, no parsing, no state, no controller: "
        + "; ".join(cells)
        + ". It is what the kernel's connect, send and close and the process's wake-ups "
        "cost on this machine before any check logic; announcer's checks run on an asyncio "
        "loop (issue 12).",
        "",
    ]


def _how(p: dict[str, Any], tool: str) -> str:
    """How ``tool`` watched the server in profile ``p``."""
    if tool == "floor":
        return "pidfd, withdraw at once"
    if tool == "announcer" and p.get("check") == "process":
        return f"process check on the pid file, {p['label']}"
    return str(p["label"])


def _minus(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """announcer's p50, p90, p99 and max minus the floor's, in ms."""
    out = []
    for key in ("p50", "p90", "p99", "max"):
        x, y = a.get(key), b.get(key)
        out.append(NA if x is None or y is None else f"+{1000 * (x - y):.0f} ms")
    return out


def idle_lines(idle: dict[str, Any] | None) -> list[str]:
    """P1's idle CPU with the process check against without it."""
    if not idle:
        return []
    if idle.get("error"):
        return [f"Idle CPU with the process check: failed: `{idle['error'][:200]}`", ""]
    v = idle["variants"]
    lines = [
        f"Idle cost of the `process` check: three controllers side by side under node1's "
        f"ExaBGP over the same {idle['window_s']:g} s, each in a cgroup of its own, each one "
        f"service with the HTTP check at the shipped default ({idle['timing']}); one adds the "
        f"`process` check on the web server's pid file, two do not (their difference is the "
        f"noise of the measurement).",
        "",
    ]
    rows = [
        ["HTTP check + `process` check", _pct(v["with"]["core_fraction"], 3)],
        ["HTTP check only", _pct(v["without"]["core_fraction"], 3)],
        ["HTTP check only, again", _pct(v["without-again"]["core_fraction"], 3)],
        ["difference: with minus without", _pct(idle["difference"], 3)],
        ["noise: the two without", _pct(idle["noise"], 3)],
    ]
    return lines + _table(["controller", "CPU, % of one core"], rows)


def maintenance_section(data: dict[str, Any]) -> list[str]:
    titles = {
        "a": "(a) announcer: `announcer drain web --wait`, then stop the web server",
        "b": "(b) announcer: stop the web server, no drain",
        "c": "(c) EXA: create the `--disable` file, wait, stop the web server",
        "d": "(d) EXA: stop the web server, no disable",
    }
    lines = [
        "## P2 Maintenance loss",
        "",
        f"A client in the lab's client namespace makes requests to http://192.0.2.10/ back to "
        f"back, each on a new TCP connection, while node1's service is taken down. Each "
        f"scenario runs {data.get('a', {}).get('repeats', 1)}\u00d7 (at least "
        f"{data.get('min_requests', 0)} requests each time; totals below). Both tools "
        f"check every {data['timing']}; announcer drains for {data['drain_seconds']:g} s "
        f"(MED 1000 + GRACEFUL_SHUTDOWN, which the lab's BIRD honours), and EXA's disable "
        f"scenario waits as long after the router moved the traffic before stopping.",
        "",
    ]
    rows = []
    for key in ("a", "b", "c", "d"):
        e = data.get(key)
        if not e:
            continue
        errors = ", ".join(f"{k} {v}" for k, v in sorted(e.get("errors", {}).items())) or NA
        each = e.get("failed_each")
        rows.append(
            [
                titles[key],
                f"**{e['failed']}** / {e['requests']}",
                ", ".join(str(x) for x in each) if each else NA,
                e.get("cut_by_rehash", NA),
                errors,
                ", ".join(f"{x:.2f}" for x in e.get("traffic_moved_each_s", []))
                or _s(e.get("traffic_moved_after_s")),
                f"{e.get('requests_per_s', 0):.0f}",
            ]
        )
    lines += _table(
        [
            "Scenario",
            "failed / requests",
            "failed, each run",
            "of them reset in flight at the FIB change",
            "errors",
            "router moved traffic after s, each run",
            "requests/s",
        ],
        rows,
    )
    lines += [
        "A request in flight at the moment the router's next hops change can be re-hashed to "
        "the other node, which answers with a reset (Linux ECMP hashes every packet): no "
        "BGP-level drain can prevent that; the column counts resets whose request spanned a FIB "
        "change seen by `ip monitor` (±2 ms).",
        "",
    ]
    b, d = data.get("b"), data.get("d")
    if b and d:
        lines += [
            f"Unplanned stop, EXA / announcer failed requests: "
            f"{_x(ratio(d['failed'], b['failed']))} (same check timing: the loss is the "
            f"detection time, which depends on where in the check cycle the server died, times "
            f"the request rate).",
            "",
        ]
    return lines + _streams_table(data)


def _streams_table(data: dict[str, Any]) -> list[str]:
    """P2 (e), (f): what a planned removal does to established connections."""
    titles = {
        "e": "(e) announcer: `announcer drain web`",
        "f": "(f) EXA: create the `--disable` file",
    }
    rows = []
    expected = True  # every node1 stream reset, none of node2's
    for key, title in titles.items():
        e = data.get(key)
        if not e:
            continue
        one = e["nodes"].get("node1", {})
        two = e["nodes"].get("node2", {})
        expected &= one.get("reset") == one.get("open") and not two.get("reset")
        after = one.get("reset_after_fib_change_s") or []
        rows.append(
            [
                title,
                one.get("open", 0),
                f"**{one.get('reset', 0)}**",
                one.get("kept", NA),
                two.get("open", 0),
                f"**{two.get('reset', 0)}**",
                f"{min(after):.3f} to {max(after):.3f}" if after else NA,
                _s(e.get("traffic_moved_after_s"), 2),
            ]
        )
    if not rows:
        return []
    count = next(data[k]["streams"] for k in titles if data.get(k))
    lines = [
        f"Established connections (the fault suite's row 12, docs/reliability.md): {count} "
        f"long-lived TCP streams from the client to 192.0.2.10, spread over both nodes by the "
        f"router's ECMP hash, then node1 taken out (no web server stopped); each stream's end "
        f"is recorded until {data['drain_seconds'] + 1:g} s after the router moved, past "
        f"announcer's withdraw.",
        "",
    ]
    lines += _table(
        [
            "Scenario",
            "streams on node1",
            "reset",
            "kept",
            "streams on node2",
            "reset",
            "node1's resets after the FIB change, s",
            "router moved traffic after s",
        ],
        rows,
    )
    if expected:
        lines += [
            "Neither tool kept node1's established connections: the moment node1's path stops "
            "being best the router sends their packets to node2, which knows no such "
            "connection and resets it; node2's streams were untouched. Long-lived connections "
            "have to be closed by the application before the drain (README, what a drain can "
            "and cannot do).",
            "",
        ]
    else:
        lines += [
            "**Not the expected outcome** (every node1 stream reset, none of node2's): see the "
            "run's logs.",
            "",
        ]
    return lines


def scale_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## P3 Cost at scale",
        "",
        f"N services on node1, each one HTTP check every 1 s ({data.get('timing')}) against "
        f"local keep-alive endpoints (2 single-threaded servers on 127.0.0.1/.2), each "
        f"announcing its own /32 to the router. Measured over {data.get('window_s', 0):g} s "
        f"once every route is in BIRD (or a deadline passed): CPU of the checker's process tree "
        f"(cgroup cpuacct, and the kernel's share of it), peak RSS (summed VmRSS/VmHWM of the "
        f"tree, sampled every 0.5 s; the memory cgroup's peak, which also counts page cache, "
        f"beside it), checks run per second against the N per second scheduled (announcer: its "
        f"`checks_run` counters; EXA: requests counted at the endpoints), checks on time (seen by "
        f"the endpoints: a request within 100 ms of 1 s after the previous one for the same "
        f"service, against the N per second scheduled), and checks that failed "
        f"meanwhile (every endpoint was healthy: a failure is the checker's own doing, e.g. a "
        f"timeout under load). announcer is one process; EXA is one `exabgp healthcheck` per "
        f"service; at N = 2000 only announcer runs (EXA could not start that many). announcer's "
        f"rows run before EXA's, whose hundreds of processes would otherwise still weigh on "
        f"the machine. The endpoints' own CPU is beside it: they share the machine's cores "
        f"with the checker. The floor (`tests/bench/scalefloor.py`, in node1, right after "
        f"announcer's row of the same size, at N = 1000 and up) sends the same requests to "
        f"the same endpoints from one asyncio loop in batches of 32, each response read by "
        f"h11 as announcer's HTTP check reads it, and does nothing else: no results, rounds, "
        f"state machine or timers. It is what the design issue 12 asks for (non-blocking "
        f"sockets on one loop, h11 for HTTP) costs here before any controller work; its CPU "
        f"is its own process's.",
        "",
    ]
    if data.get("pace_s") is not None:
        lines += [
            f"The machine's pace at the start of this section: `python -c pass` took "
            f"{_ms(data['pace_s'])} (median of 5). Each row's pace is the mean of the pace "
            f'taken just before it and just after it; "at {_ms(GOAL_PACE_S)}" is the row\'s CPU '
            f"scaled from its pace to the pace at which issue 12 set the goals (run D's), "
            f"as the issue asks goals to be judged.",
            "",
        ]
    rows = []
    runs = data.get("runs", [])
    by_key = {(e["tool"], e["n"]): e for e in runs}
    order = {"announcer": 0, "floor": 1, "exa": 2}
    for e in sorted(runs, key=lambda e: (e["n"], order.get(e["tool"], 3))):
        tool = {"announcer": "announcer", "floor": "floor: asyncio + h11 alone"}.get(
            e["tool"], "EXA"
        )
        if e.get("error"):
            rows.append([e["n"], tool, f"failed: `{e['error'][:120]}`", *[""] * 11])
            continue
        if e["tool"] == "floor":
            answered = f"{e.get('answered_per_s', 0):.1f} / {e.get('scheduled_per_s', 0):.0f}"
            rows.append([e["n"], tool, *_paced(e, data), "", "", "", answered])
            rows[-1] += ["", f"{e.get('bad', NA)} not 200", "", "", ""]
            continue
        rows.append(
            [
                e["n"],
                tool,
                *_paced(e, data),
                _pct(e.get("system_share"), 0),
                f"{e.get('peak_rss_mb', 0):.0f} MB",
                f"{e.get('cgroup_memory_peak_mb', 0):.0f} MB",
                f"{e.get('checks_per_s', 0):.1f} / {e.get('scheduled_per_s', 0):.0f}",
                _pct(e.get("on_time_fraction"), 1),
                e.get("failed_checks", NA),
                f"{e.get('routes_after_window', NA)} / {e['n']}",
                _pct(e.get("exabgp_core_fraction"), 1),
                _pct(e.get("endpoints_core_fraction"), 1),
            ]
        )
        other = by_key.get(("announcer", e["n"]))
        if e["tool"] == "exa" and other and not other.get("error"):
            rows.append(
                [
                    e["n"],
                    "ratio EXA / announcer",
                    _x(ratio(e.get("core_fraction"), other.get("core_fraction"))),
                    "",
                    "",
                    "",
                    _x(ratio(e.get("peak_rss_mb"), other.get("peak_rss_mb"))),
                    _x(ratio(e.get("cgroup_memory_peak_mb"), other.get("cgroup_memory_peak_mb"))),
                    "",
                    "",
                    "",
                    "",
                    _x(ratio(e.get("exabgp_core_fraction"), other.get("exabgp_core_fraction"))),
                    "",
                ]
            )
    headers = ["N", "Tool", "CPU (% of one core)", "pace", f"CPU at {_ms(GOAL_PACE_S)}"]
    headers += ["of it kernel", "peak RSS", "memory cgroup"]
    headers += ["checks/s run / scheduled", "on time", "failed checks", "routes up", "ExaBGP CPU"]
    headers += ["endpoints' CPU"]
    lines += _table(headers, rows)
    return lines


def _row_pace(entry: dict[str, Any], section: dict[str, Any]) -> float | None:
    """A P3 row's pace; runs before rows had one of their own: the section's."""
    value = entry.get("pace_s", section.get("pace_s"))
    return float(value) if value else None


def _paced(entry: dict[str, Any], section: dict[str, Any]) -> list[str]:
    """A P3 row's CPU, its pace, and its CPU at the goals' pace."""
    cpu, speed = entry.get("core_fraction"), _row_pace(entry, section)
    scaled = at_goal_pace(cpu, speed) if cpu is not None and speed else None
    return [_pct(cpu, 1), _ms(speed) if speed else NA, _pct(scaled, 1)]


def burst_section(data: dict[str, Any]) -> list[str]:
    names = {
        "announcer": "announcer",
        "exa": "EXA",
        "floor": "floor: ExaBGP alone",
        "floor-default": "floor: ExaBGP alone, ExaBGP's default reactor speed 1.0",
        "floor-fast": "floor: ExaBGP alone, reactor speed 0.1",
    }
    # Runs before the lab shipped a reactor speed had ExaBGP's default (1.0) everywhere.
    speed = data.get("reactor_speed", "1.0")
    lines = [
        "## P4 Announcement burst",
        "",
        "N /32s configured on node1; the clock starts when the checker is exec'd (ExaBGP's "
        "session to BIRD is already up) and stops when `birdc show route protocol node1 count` "
        "reaches N. announcer: one service holding every prefix, `file` check, rise 1; it writes "
        "whatever its ExaBGP writer renders for them (the commands column: one `announce route` "
        "per prefix, or `announce attributes ... nlri` batches). EXA: one `exabgp healthcheck` "
        "with every prefix as `--ip`, rise 1, one `announce route` line per prefix, each waiting "
        "for ExaBGP's answer before the next. The floor rows are a stand-in API process writing "
        "exactly announcer's commands at once, without Python imports, config or checks: what "
        "is left is ExaBGP's own ingestion. ExaBGP takes 50 prefixes per turn of its loop and "
        "sleeps `exabgp.reactor.speed`/100 s between turns; every ExaBGP here runs with "
        f"`exabgp.reactor.speed = {speed}`"
        + (
            ", as announcer's systemd unit ships it (1 ms sleeps; ExaBGP's default 1.0 sleeps "
            "10 ms, its floor row is for comparison; docs/exabgp-api.md, section 7)."
            if speed != "1.0"
            else ", ExaBGP's default (10 ms sleeps)."
        ),
        "",
    ]
    rows = []
    runs = data.get("runs", [])
    by_key = {(e["tool"], e["n"]): e for e in runs}
    for e in runs:
        tool = names.get(e["tool"], e["tool"])
        if e.get("error"):
            rows.append([e["n"], tool, f"failed: `{e['error'][:120]}`", *[""] * 6])
            continue
        if e.get("deadlock") or e.get("controller_alive") is False:
            ok = "**no**"
            if e.get("gave_up_after_s") is not None:
                ok += f": {e.get('routes_in_bird')} in BIRD after {e['gave_up_after_s']:.0f} s"
            if e.get("controller_alive") is False:
                ok += "; the controller was gone afterwards"
            if e.get("stalls") or e.get("restarts"):
                ok += (
                    f"; the controller's stall guard fired {e.get('stalls', 0)}x, "
                    f"{e.get('restarts', 0)} restarts"
                )
            if e.get("exabgp_alive") is False:
                ok += "; ExaBGP exited"
        else:
            ok = "yes"
        if e["tool"] == "announcer" and e.get("sent") is not None:
            ok += f" ({e.get('done')}/{e.get('sent')} answered)"
        commands = e.get("commands")
        rows.append(
            [
                e["n"],
                tool,
                _s(e.get("seconds"), 2),
                f"{e['routes_per_s']:.0f}" if e.get("routes_per_s") else NA,
                commands if commands is not None else NA,
                _s(e.get("first_route_after_s"), 2),
                _s(e.get("config_loaded_after_s"), 2),
                f"{e.get('peak_rss_mb', 0):.0f} MB",
                ok,
            ]
        )
        other = by_key.get(("announcer", e["n"]))
        if e["tool"] == "exa" and other and other.get("seconds"):
            rows.append(
                [
                    e["n"],
                    "ratio EXA / announcer",
                    _x(ratio(e.get("seconds"), other.get("seconds"))),
                    "",
                    "",
                    "",
                    "",
                    _x(ratio(e.get("peak_rss_mb"), other.get("peak_rss_mb"))),
                    "",
                ]
            )
    headers = ["N", "Tool", "all in BIRD after s", "routes/s", "commands", "first route after s"]
    headers += ["config loaded after s", "checker peak RSS", "complete, every command answered"]
    lines += _table(headers, rows)
    return lines


def cli_section(data: dict[str, Any]) -> list[str]:
    a = data.get("announcer", {})
    x = data.get("exa", {})
    lines = [
        "## P5 CLI latency",
        "",
        f"Each command a fresh process (`.venv/bin/announcer ... --socket PATH`) against "
        f"node1's controller, {a.get('runs', 0)} runs. A round trip is `drain web` then "
        f"`undrain web`. EXA has no control interface: its operator action is creating the "
        f"`--disable` file ({x.get('runs', 0)} runs), which its check loop notices on its next "
        f"iteration.",
        "",
    ]

    def row(label: str, s: dict[str, Any] | None, exa: dict[str, Any] | None = None) -> list[str]:
        s = s or {}
        cells = [label, _ms(s.get("p50")), _ms(s.get("p90")), _ms(s.get("max"))]
        if exa:
            cells += [_ms(exa.get("p50")), _x(ratio(exa.get("p50"), s.get("p50")))]
        else:
            cells += [NA, NA]
        return cells

    rows = [
        row("`announcer status`", a.get("status")),
        row("`announcer status --json`", a.get("status_json")),
        row("`announcer drain web`", a.get("drain")),
        row("`announcer undrain web`", a.get("undrain")),
        row("drain round trip (drain + undrain)", a.get("round_trip")),
        row("status request in-process (the daemon's share)", a.get("status_in_process")),
        row("drain + undrain requests in-process", a.get("round_trip_in_process")),
        row(
            "`python -c pass`, between the status runs (the machine's pace)",
            a.get("python_startup"),
        ),
        row(
            "operator action → node1 leaves the router's FIB (EXA: disable file)",
            a.get("drain_to_fib"),
            x.get("disable_to_fib"),
        ),
    ]
    lines += _table(["", "median", "p90", "max", "EXA median", "EXA / announcer"], rows)
    imports = a.get("imports") or {}
    if imports:
        lines += [
            f"Where a command's time goes: `python -X importtime` of one "
            f"`{imports.get('command')}` counts {_ms(imports.get('imports_s'))} of imports "
            f"(`python -c pass`: {_ms(imports.get('python_startup_s'))}). The heaviest "
            f"top-level imports, at start-up or from inside a function while the command ran:",
            "",
        ]
        lines += _table(
            ["module", "cumulative import"],
            [[f"`{h['module']}`", _ms(h["cumulative_s"])] for h in imports.get("heaviest", [])],
        )
    return lines


def fleet_section(data: dict[str, Any]) -> list[str]:
    from .fleet_report import section  # here: fleet_report imports this module

    return section(data)


def profile_section(r: Results) -> list[str]:
    profiles = []
    p3 = r.sections.get("P3", {})
    for e in p3.get("runs", []):
        if e.get("profile"):
            profiles.append(
                (f"P3: announcer with N = {e['n']} services, steady state", e["profile"])
            )
    p4 = r.sections.get("P4", {})
    if p4.get("profile"):
        profiles.append(
            (f"P4: announcer start with {p4['profile'].get('n')} prefixes", p4["profile"])
        )
    if not profiles:
        return []
    lines = ["## Profiles (py-spy)", ""]
    for title, prof in profiles:
        lines += [f"### {title}", ""]
        if prof.get("skipped"):
            lines += [f"Skipped: {prof['skipped']}", ""]
            continue
        if not prof.get("samples"):
            lines += ["No samples: the controller held the GIL at no point while sampled.", ""]
            continue
        lines += [
            f"{prof.get('samples')} samples of the thread holding the GIL over "
            f"{prof.get('seconds'):g} s: Python ran {prof.get('busy_cores', 0):.2f} cores on "
            f"average (the kernel's share of the CPU is not in these samples).",
            "",
        ]
        rows = [
            [f"`{row['function']}`", _pct(row["share"], 1)] for row in prof.get("inclusive", [])
        ]
        lines += ["Inclusive (the function and everything it calls):", ""]
        lines += _table(["function", "share of samples"], rows)
        rows = [[f"`{row['function']}`", _pct(row["share"], 1)] for row in prof.get("self", [])]
        lines += ["Self (where the interpreter actually was):", ""]
        lines += _table(["function", "share of samples"], rows)
    return lines


# --------------------------------------------------------------------------- goals


def _p3_target(cpu: float, mem_mb: int | None, on_time: float) -> str:
    memory = f", ≤ {mem_mb} MB" if mem_mb is not None else ""
    return f"≤ {100 * cpu:.0f} % of a core{memory}, ≥ {100 * on_time:.0f} % of checks on time"


def _at_pace(cpu: float | None, speed: float | None, digits: int = 2) -> str:
    """A CPU figure as measured and, with the pace it was taken at, at the goals' pace."""
    text = _pct(cpu, digits)
    if cpu is not None and speed:
        scaled = at_goal_pace(cpu, speed)
        text += f" at a pace of {_ms(speed)}, {_pct(scaled, digits)} at {_ms(GOAL_PACE_S)}"
    return text


def _section_pace(r: Results, key: str) -> float | None:
    """The mean of the pace at a section's start and end (None: not recorded)."""
    ends = r.machine.get("section_pace", {}).get(key)
    return (ends[0] + ends[1]) / 2 if ends else None


def goals(r: Results) -> list[list[str]]:
    # here: these modules import this one
    from .drainfwd_report import goals as drainfwd_goals
    from .fleet_report import goals as fleet_goals

    rows: list[list[str]] = []
    quick = r.quick
    p1 = r.sections.get("P1")
    if p1:
        prof = {p["key"]: p for p in p1["profiles"]}
        a = prof.get("a", {})
        if a.get("announcer") and a.get("exa"):
            fa, fx = a["announcer"]["failover"], a["exa"]["failover"]
            ok = fa.get("p50", 1e9) <= fx.get("p50", 0) and fa.get("p99", 1e9) <= fx.get("p99", 0)
            rows.append(
                [
                    "P1 equal settings (a): announcer no slower than EXA",
                    "p50 and p99 ≤ EXA's",
                    f"p50 {_s(fa.get('p50'))} vs {_s(fx.get('p50'))} s, "
                    f"p99 {_s(fa.get('p99'))} vs {_s(fx.get('p99'))} s",
                    _verdict(ok),
                ]
            )
        c = prof.get("c", {}).get("announcer")
        if c:
            p99 = c["failover"].get("p99")
            rows.append(
                [
                    f"P1 fast profile (c) {prof['c']['label']}",
                    "p99 ≤ 0.25 s",
                    f"{_s(p99)} s",
                    _verdict(p99 is not None and p99 <= 0.25),
                ]
            )
            raw = c.get("checker_core_fraction")
            speed = _section_pace(r, "P1")
            cpu = at_goal_pace(raw, speed) if raw is not None else None
            measured = _at_pace(raw, speed)
            floor = prof["c"].get("cpu_floor", {})
            if all("core_fraction" in floor.get(m, {}) for m in ("asyncio", "blocking")):
                measured += (
                    f"; the floor: {_pct(floor['asyncio']['core_fraction'])} on asyncio, "
                    f"{_pct(floor['blocking']['core_fraction'])} blocking"
                )
            rows.append(
                [
                    "P1 fast profile (c) CPU per service",
                    "≤ 1 % of one core",
                    measured,
                    _verdict(cpu is not None and cpu <= 0.01),
                ]
            )
        rows += _process_goals(prof.get("d", {}), p1.get("idle"))
    p2 = r.sections.get("P2")
    if p2 and p2.get("a"):
        failed = p2["a"]["failed"]
        cut = p2["a"].get("cut_by_rehash", 0)
        measured = f"{failed} / {p2['a']['requests']}"
        if cut:
            measured += f" ({cut} reset in flight at the FIB change, see P2)"
        rows.append(
            ["P2 (a) drain --wait, then stop", "0 failed requests", measured, _verdict(failed == 0)]
        )
    rows += drainfwd_goals(r.sections.get("P2L"))
    p3 = r.sections.get("P3")
    if p3:
        runs = {(e["tool"], e["n"]): e for e in p3.get("runs", [])}
        # Issue 12: checks on one event loop (announcer only at 2,000: EXA cannot run it).
        for n, cpu_goal, mem_goal, on_time in ((1000, 0.10, 60, 0.99), (2000, 0.20, None, 0.99)):
            e = runs.get(("announcer", n))
            if e and e.get("error"):
                rows.append([f"P3 N = {n}", "", f"failed: `{e['error'][:80]}`", _verdict(False)])
                continue
            if not e:
                if quick:
                    rows.append(
                        [
                            f"P3 N = {n}",
                            _p3_target(cpu_goal, mem_goal, on_time),
                            "not run (quick)",
                            NA,
                        ]
                    )
                continue
            raw, mem, speed = e["core_fraction"], e["peak_rss_mb"], _row_pace(e, p3)
            cpu = at_goal_pace(raw, speed)  # issue 12: judged at the goals' pace
            measured = _at_pace(raw, speed, 1)
            measured += f"; {mem:.0f} MB, {_pct(e['on_time_fraction'], 1)} on time"
            floor = runs.get(("floor", n), {})
            if floor.get("core_fraction") is not None:
                measured += f"; the floor (asyncio + h11 alone): {_pct(floor['core_fraction'], 1)}"
                floor_pace = _row_pace(floor, p3)
                if floor_pace:
                    measured += f" at {_ms(floor_pace)}"
            ok = cpu <= cpu_goal and (mem_goal is None or mem <= mem_goal)
            ok = ok and e["on_time_fraction"] >= on_time
            rows.append(
                [f"P3 N = {n}", _p3_target(cpu_goal, mem_goal, on_time), measured, _verdict(ok)]
            )
    p4 = r.sections.get("P4")
    if p4:
        runs = {(e["tool"], e["n"]): e for e in p4.get("runs", [])}
        for n, goal in ((10_000, 1.5), (50_000, 7.0)):
            e = runs.get(("announcer", n))
            if not e:
                continue
            sec = e.get("seconds")
            floor = runs.get(("floor", n), {}).get("seconds")
            measured = f"{_s(sec, 2)} s" if sec is not None else "incomplete"
            if e.get("stalls") or e.get("controller_alive") is False:
                measured += " (the controller exited: its stall guard fired)"
            elif e.get("deadlock"):
                measured += " (not every route in, or commands unanswered)"
            if floor is not None:
                measured += f"; ExaBGP alone: {_s(floor, 2)} s"
            rows.append(
                [
                    f"P4 {n:,} prefixes",
                    f"≤ {goal:g} s, no deadlock",
                    measured,
                    _verdict(sec is not None and sec <= goal and not e.get("deadlock")),
                ]
            )
    p5 = r.sections.get("P5", {}).get("announcer")
    if p5:
        for key, label in (("status", "`announcer status`"), ("round_trip", "drain round trip")):
            med = p5.get(key, {}).get("p50")
            rows.append(
                [
                    f"P5 {label} median",
                    "≤ 200 ms",
                    _ms(med),
                    _verdict(med is not None and med <= 0.2),
                ]
            )
    rows += fleet_goals(r.sections.get("P6"))
    return rows


def _process_goals(d: dict[str, Any], idle: dict[str, Any] | None) -> list[list[str]]:
    """Issue 14's goals: row (d)'s p99, and the process check's idle CPU."""
    rows = []
    e = d.get("announcer")
    if e and not e.get("error"):
        p99 = e["failover"].get("p99")
        measured = f"{_s(p99)} s"
        floor = d.get("floor", {}).get("failover", {}).get("p99")
        if floor is not None:
            measured += f"; the floor: {_s(floor)} s"
        rows.append(
            [
                "P1 (d) web server SIGKILLed, `process` check",
                "p99 ≤ 0.050 s",
                measured,
                _verdict(p99 is not None and p99 <= 0.05),
            ]
        )
    if idle and not idle.get("error"):
        diff = idle["difference"]
        rows.append(
            [
                "P1 idle CPU, with the `process` check minus without",
                "≤ 0.05 % of one core",
                f"{_pct(diff, 3)} (noise {_pct(idle['noise'], 3)})",
                _verdict(diff <= 0.0005),
            ]
        )
    return rows


def render(r: Results, images: dict[str, str] | None = None) -> str:
    """The page; ``images`` ({section: path relative to the page}) are embedded below the
    section's title."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.started))
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `tests/bench/` (`make bench`) on {when}, one run of "
        f"{r.duration / 60:.1f} min"
        + (
            " (**quick mode**: few trials, small sizes; the figures only show the machinery works)"
            if r.quick
            else ""
        )
        + ". Do not edit by hand: run it again.",
        "",
        *(
            f"**{section}** was measured {how}; its figures below are that run's, the rest "
            "are this one's."
            for section, how in sorted(r.remeasured.items())
        ),
        *([""] if r.remeasured else []),
        "Every figure of P1-P5 is measured for announcer and for EXA — ExaBGP's own "
        "`exabgp healthcheck`, "
        "the tool most operators use today — in the same lab (network namespaces: a BIRD 2 "
        "router, two ExaBGP nodes, a client; `tests/lab/`), in the same run, so each comparison "
        "is a ratio. **Ratios are EXA / announcer: above 1\u00d7 announcer is faster or cheaper.**",
        "",
        "Reproduce (root, Debian 12/13, from a clone):",
        "",
        "```sh",
        "sudo make bench    # = .venv/bin/python -m tests.bench.run",
        f"{r.command}    # this run",
        "```",
        "",
    ]
    rows = goals(r)
    if rows:
        lines += ["## Goals", ""]
        lines += _table(["Goal", "Target", "Measured", ""], rows)
    lines += machine_section(r)
    from .drainfwd_report import section as drainfwd_section  # it imports this module

    sections = {
        "P1": failover_section,
        "P2": maintenance_section,
        "P2L": drainfwd_section,
        "P3": scale_section,
        "P4": burst_section,
        "P5": cli_section,
        "P6": fleet_section,
    }
    for key, fn in sections.items():
        if key in r.sections:
            body = fn(r.sections[key])
            if images and key in images:
                body[2:2] = [f"![{key}]({images[key]})", ""]
            lines += body
            load = r.machine.get("section_load", {}).get(key)
            if load:
                shared = " (P2 and P5 run together)" if key in ("P2", "P5") else ""
                line = (
                    f"Machine load (1-min load average) at the start and end of this "
                    f"section{shared}: {load[0]:.1f} / {load[1]:.1f}"
                )
                speed = r.machine.get("section_pace", {}).get(key)
                if speed:
                    line += f"; its pace (`python -c pass`): {_ms(speed[0])} / {_ms(speed[1])}"
                lines += [line + ".", ""]
            if key in r.errors:
                lines += [f"**{key} stopped early in this run:** `{r.errors[key]}`", ""]
        elif key in r.errors:
            lines += [f"## {key}", "", f"Failed in this run: `{r.errors[key]}`", ""]
    lines += profile_section(r)
    lines += [
        "## Caveats",
        "",
        "- The machine is a shared 2-vCPU VM: other work on it shows up as noise (see the load "
        "average above); each comparison ran in the same minutes for both tools.",
        "- CPU is what the health checker costs; the web servers, BIRD and the client are not "
        "counted. ExaBGP's own CPU is shown separately: EXA makes ExaBGP parse a re-announcement "
        "of every prefix at every check.",
        "- Percentiles interpolate linearly between order statistics; with 30 trials p99 sits "
        "between the two slowest trials.",
        "",
        "## Before and after",
        "",
        "What earlier runs of this benchmark found, what was changed because of it, and the "
        "figures before and after: [benchmark-history.md](benchmark-history.md) (kept by hand; "
        "this page is generated).",
        "",
    ]
    return "\n".join(lines)
