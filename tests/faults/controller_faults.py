"""Faults of the controller process: killed (1), hung (2), dying at every start (3)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.lab import WaitTimeout, wait_until
from tests.lab.announcer_config import ANNOUNCER_BIN
from tests.lab.bird import birdc
from tests.lab.procs import is_alive

from .model import CACHE, Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import PYTHON, Rig, Watch, base_config, log_time, stopped
from .router import import_counters

BOTH = ("5.0", "4.2")


def _first_status(rig: Rig, timeout: float = 20.0) -> str:
    """The first status the (new) controller answers, e.g. ``web: INIT UNKNOWN``."""
    found: list[str] = []

    def answered() -> bool:
        svc = rig.service()
        if svc is not None:
            found.append(f"{svc['health']} {svc['route']}")
        return bool(found)

    wait_until(answered, timeout, interval=0.01, what="the new controller's status")
    return found[0]


# ---------------------------------------------------------------- 1. SIGKILL


@scenario("1a", "controller SIGKILL while healthy", versions=BOTH, quick=True)
def kill_healthy(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    rig.start_node1(rig.new_profile("k-healthy"))
    old = rig.controller_pid()
    time.sleep(0.5)
    with Watch(rig) as w:
        w.inject()
        os.kill(old, signal.SIGKILL)
        new = rig.new_controller_pid(old)
        first = _first_status(rig)
        row.back_s = rig.wait_normal(30.0) - w.m0
        time.sleep(1.5)  # several check intervals: a late withdraw or re-announce shows
    row.injected = "SIGKILL to node1's controller while its service is healthy and announced"
    row.back_note = "the new controller's status says UP ANNOUNCED"
    fill(row, w, events=("restored",))
    row.status = f"first answer {first}; then {row.status}"
    row.expected = "no route change at the router, no request lost"
    untouched = w.quiet()
    row.seen = (
        f"ExaBGP started controller {new} in place of {old}; the router saw "
        + ("nothing" if untouched else "changes")
        + f"; {row.lost} of {row.requests} requests lost"
    )
    row.figures = {"old_pid": old, "new_pid": new}
    return judge(row, {"no route change": untouched, "no request lost": row.lost == 0})


@scenario("1b", "controller SIGKILL while unhealthy (before its withdraw)", versions=BOTH)
def kill_unhealthy(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile("k-unhealthy")
    rig.start_node1(prof)
    defaults = prof.config["defaults"]
    old = rig.controller_pid()
    time.sleep(0.5)
    with Watch(rig) as w:
        w.inject()
        rig.lab.stop_http("node1")  # the service dies: requests sent to node1 fail
        os.kill(old, signal.SIGKILL)  # right after: before fall checks could fail
        new = rig.new_controller_pid(old)
        gone = w.router.wait(lambda p: not p.present, 30.0, what="node1 withdrawn")
        time.sleep(1.0)
    started = rig.find_log(w.log0, ("start",))
    start_s = None
    if started is not None:
        start_s = log_time(started.fields) - w.t0
    row.injected = (
        "node1's web server stopped and its controller SIGKILLed right after, before "
        f"fall ({defaults['fall']}) checks could withdraw"
    )
    row.back_s = gone - w.t0
    row.back_note = "node1's path withdrawn at the router"
    fill(row, w, events=("route",))
    lowered_or_flapped = [c for c in w.router.changes() if c.after.present]
    bound = (start_s or 0.0) + defaults["interval"] + defaults["fall"] * defaults["fast_interval"]
    row.expected = (
        "withdrawn on time: the new controller's start plus fall checks "
        f"(start + interval + fall x fast_interval ≈ {bound:.2f} s here); never re-announced"
    )
    row.seen = (
        f"withdrawn {row.back_s:.2f} s after the failure (new controller {new} started "
        f"{start_s if start_s is None else round(start_s, 2)} s after it); "
        f"{row.lost} of {row.requests} requests lost while node1 was announced but dead"
    )
    rig.lab.start_http("node1")
    row.figures = {"withdrawn_s": row.back_s, "controller_start_s": start_s, "bound_s": bound}
    return judge(
        row,
        {
            "ends withdrawn": not w.router.current().present,
            "never re-announced or changed before the withdraw": not lowered_or_flapped,
        },
        {"withdrawn within the bound + 1 s": row.back_s <= bound + 1.0},
    )


@scenario("1c", "controller SIGKILL while draining", versions=BOTH, quick=True)
def kill_draining(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    drain_seconds = 4.0
    prof = rig.new_profile("k-drain", base_config(drain_seconds=drain_seconds))
    rig.start_node1(prof)
    old = rig.controller_pid()
    with Watch(rig) as w:
        w.inject()
        done = rig.cli("drain", "web", "--reason", "fault 1c")
        lowered = w.router.wait(lambda p: p.lowered, 15.0, what="node1 lowered")
        time.sleep(1.0)
        killed = time.time()
        os.kill(old, signal.SIGKILL)
        new = rig.new_controller_pid(old)
        gone = w.router.wait(lambda p: not p.present, drain_seconds + 20.0, what="withdrawn")
        time.sleep(1.0)
    row.injected = (
        f"`announcer drain web` (drain_seconds {drain_seconds:g}), then SIGKILL to the "
        f"controller {killed - w.t0:.1f} s into the drain"
    )
    # the drain period runs from the lowering (BIRD's own time for it), within a few ms
    late = gone - (lowered + drain_seconds)
    row.back_s = gone - w.t0
    row.back_note = "withdrawn at the router (the drain's end)"
    fill(row, w, events=("restore",))
    after_kill = [c for c in w.router.changes() if c.at > killed]
    row.expected = (
        f"lowered at once, still lowered after the kill, withdrawn drain_seconds "
        f"({drain_seconds:g} s) after the lowering: not early, not late"
    )
    row.seen = (
        f"lowered {lowered - w.t0:.2f} s after the command; controller {new} replaced {old}; "
        f"withdrawn {row.back_s:.2f} s after the command, {late:+.2f} s against lowered + "
        f"drain_seconds; "
        f"{row.lost} of {row.requests} requests lost"
    )
    row.figures = {"lowered_s": lowered - w.t0, "withdrawn_s": row.back_s, "late_s": late}
    return judge(
        row,
        {
            "drain accepted": done.returncode == 0,
            "not withdrawn early": late >= -0.2,
            "nothing between the kill and the withdraw": [c.after.present for c in after_kill]
            == [False],
        },
        {"withdrawn on time (within 1 s)": late <= 1.0},
    )


def _bulk_prefixes(n: int) -> list[str]:
    # 198.18.0.0/15 is the benchmarking range: never routed anywhere real
    return [f"198.18.{i // 256}.{i % 256}/32" for i in range(n)]


def _node1_count(rig: Rig) -> int:
    out = birdc(rig.lab.bird_socket, "show", "route", "protocol", "node1", "count")
    # "N of M routes for N networks in table master4"
    for line in out.splitlines():
        parts = line.split()
        if "routes" in parts and parts and parts[0].isdigit():
            return int(parts[0])
    return 0


@scenario("1d", "controller SIGKILL in the middle of a 10,000-prefix burst", versions=BOTH)
def kill_burst(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    n = 10_000
    flag = rig.lab.node_dir("node1") / "bulk-ok"
    flag.write_text("ok\n")
    config = base_config()
    config["service"] = [
        {
            "name": "bulk",
            "prefixes": _bulk_prefixes(n),
            "checks": [{"type": "file", "path": str(flag)}],
            "announce": {"med": 100},
        }
    ]
    prof = rig.new_profile("k-burst", config)
    attempts = []
    for attempt in range(3):
        rig.start_node1(prof, wait_normal=False)
        api = rig.controller_pid()
        began = time.monotonic()
        # kill once the router has some but not all of the prefixes
        count = wait_until(
            lambda: (c := _node1_count(rig)) >= 1 and c, 60.0, interval=0.005, what="burst"
        )
        if count < n:
            log0 = rig.log_offset()
            os.kill(api, signal.SIGKILL)
            killed_at = time.monotonic() - began
            break
        attempts.append(count)
        prof = rig.new_profile(f"k-burst{attempt}", config)
    else:
        row.seen = f"the burst always completed before the kill could land ({attempts})"
        return judge(row, {"killed in the middle of the burst": False})
    new = rig.new_controller_pid(api)
    wait_until(lambda: _node1_count(rig) >= n, 120.0, interval=0.1, what="all prefixes")
    done = time.monotonic() - began
    time.sleep(2.0)  # a late withdraw or a re-send would show in the counters
    final = _node1_count(rig)
    counters = import_counters(rig.lab, "node1")
    row.injected = (
        f"node1 starts with one service of {n:,} prefixes; its controller is SIGKILLed "
        f"{killed_at:.2f} s after the start, when the router had {count:,} of them"
    )
    row.router = [
        f"{count:,} prefixes from node1 when the controller died",
        f"all {final:,} {done:.2f} s after the start",
        f"BIRD received from node1 since the session came up: {counters.updates:,} updates "
        f"(prefixes), {counters.withdraws:,} withdraws",
    ]
    row.back_s = done - killed_at
    row.back_note = "every prefix at the router, counted from the kill"
    row.status = rig.status_text("bulk")
    line = rig.find_log(log0, ("restored",))
    row.log_line = line.text.split(" ", 1)[1] if line else "(no restored line)"
    row.expected = (
        f"all {n:,} prefixes at the router; none withdrawn, none sent twice "
        f"(BIRD counts {n:,} updates, 0 withdraws)"
    )
    row.seen = (
        f"controller {new} took over; {final:,} at the router, BIRD counted "
        f"{counters.updates:,} updates and {counters.withdraws:,} withdraws"
    )
    row.figures = {
        "killed_at_count": count,
        "killed_after_s": killed_at,
        "all_after_s": done,
        "updates": counters.updates,
        "withdraws": counters.withdraws,
    }
    ok = judge(
        row,
        {
            "every prefix at the router": final == n,
            "none withdrawn": counters.withdraws == 0,
            "none re-sent": counters.updates == n,
        },
    )
    return ok


# ---------------------------------------------------------------- 2. hung


@scenario("2a", "controller SIGSTOP (no systemd): how long a stale route lasts", quick=True)
def sigstop(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    hold = 4.0 if ctx.quick else 12.0
    prof = rig.new_profile("hang-stop")
    rig.start_node1(prof)
    pid = rig.controller_pid()
    time.sleep(0.5)
    with Watch(rig) as w:
        w.inject()
        with stopped(pid):
            rig.lab.stop_http("node1")  # the service dies while nobody watches it
            time.sleep(hold)
            stale = w.router.current().present
        resumed = time.time()
        gone = w.router.wait(lambda p: not p.present, 30.0, what="node1 withdrawn")
        time.sleep(0.5)
        stall = rig.find_log(w.log0, ("stalled",))
    row.injected = (
        f"SIGSTOP to node1's controller, then node1's web server stopped; SIGCONT after "
        f"{hold:g} s (the lab has no systemd: nothing else ends the freeze)"
    )
    row.back_s = gone - w.t0
    row.back_note = "node1's stale path withdrawn"
    fill(row, w, events=("stalled", "route"))
    row.expected = (
        "without systemd the stale route lasts as long as the freeze, then fall checks "
        "(the stall guard is frozen too); under systemd the watchdog bounds it (row 2c)"
    )
    row.seen = (
        # the withdraw's time is a polling window (±0.03 s): one right at SIGCONT reads as 0
        f"route still at the router after {hold:g} s frozen; withdrawn "
        f"{max(0.0, gone - resumed):.2f} s "
        f"after SIGCONT ({row.back_s:.2f} s stale in all"
        + ("; the stall guard fired on waking: ExaBGP started a new controller" if stall else "")
        + f"); {row.lost} of {row.requests} requests lost"
    )
    row.figures = {"frozen_s": hold, "stale_s": row.back_s, "after_sigcont_s": gone - resumed}
    rig.lab.start_http("node1")
    return judge(
        row,
        {
            "stale while frozen (nothing can act)": stale,
            "withdrawn once it runs again": not w.router.current().present,
        },
    )


@scenario("2b", "controller main loop blocked inside a callback", versions=BOTH, quick=True)
def blocked_loop(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    stall_limit = 3.0 if ctx.quick else 10.0
    prof = rig.new_profile("hang-loop", base_config(stall_limit=stall_limit))
    hang = Path(__file__).with_name("_hang.py")
    rig.start_node1(prof, argv=[str(PYTHON), str(hang), "run", "--config", str(prof.config_path)])
    pid = rig.controller_pid()
    defaults = prof.config["defaults"]
    time.sleep(0.5)
    with Watch(rig) as w:
        w.inject()
        os.kill(pid, signal.SIGUSR2)
        time.sleep(0.3)
        rig.lab.stop_http("node1")
        new = rig.new_controller_pid(pid, timeout=stall_limit + 20.0)
        respawned = time.time()
        gone = w.router.wait(lambda p: not p.present, 30.0, what="node1 withdrawn")
        time.sleep(0.5)
    stalled = rig.find_log(w.log0, ("stalled",))
    fired = log_time(stalled.fields) - w.t0 if stalled else None
    # README: the guard looks every min(stall_limit / 4, 1 s)
    bound = (
        stall_limit
        + min(stall_limit / 4, 1.0)
        + 1.0  # ExaBGP's respawn and the new controller's start (allowance)
        + defaults["interval"]
        + defaults["fall"] * defaults["fast_interval"]
    )
    row.injected = (
        f"SIGUSR2 makes node1's controller block its main loop in a signal handler "
        f"(stall_limit {stall_limit:g} s); its web server stopped 0.3 s later"
    )
    row.back_s = gone - w.t0
    row.back_note = "the stale path withdrawn by the controller ExaBGP started next"
    fill(row, w, events=("stalled",))
    row.expected = (
        f"the stall guard exits (status 70) within stall_limit + 1 s; ExaBGP starts a new "
        f"controller, which withdraws: stale route ≤ {bound:.1f} s (README's bound)"
    )
    row.seen = (
        f"stall guard fired {fired if fired is None else round(fired, 2)} s after the block; "
        f"new controller {new} {respawned - w.t0:.2f} s; withdrawn {row.back_s:.2f} s after "
        f"the block; {row.lost} of {row.requests} requests lost"
    )
    row.figures = {"stall_fired_s": fired, "stale_s": row.back_s, "bound_s": bound}
    rig.lab.start_http("node1")
    return judge(
        row,
        {
            "stall guard fired": stalled is not None,
            "withdrawn": not w.router.current().present,
        },
        {"stale route within the README's bound": row.back_s <= bound},
    )


PACKAGE_JSON = CACHE / "package-systemd.json"
"""Figures tests/package/systemd.sh may leave for this report: one JSON object with
``measured_at`` and, from its step 6 (SIGSTOP), ``watchdog_limit_s``, ``watchdog_fired_s``,
``stale_route_s``, ``back_s``; from its step 5 (crash loop), ``kills``, ``gave_up_s``,
``unit_back_s``, ``peer_back_s`` (seconds as numbers)."""


def _package() -> dict[str, Any] | None:
    try:
        data = json.loads(PACKAGE_JSON.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@scenario("2c", "controller SIGSTOP under systemd (watchdog)", versions=())
def sigstop_systemd(ctx: Ctx, sc: Scenario) -> Row:
    row = ctx.row(sc)
    row.injected = "SIGSTOP to the controller of the installed announcer.service"
    row.expected = (
        "systemd's watchdog (stall_limit + 5 s = 15 s by default) ends the service; the "
        "session drops, the route goes; the unit starts again and announces"
    )
    data = _package()
    row.figures = {"external": True}
    if data is None or "stale_route_s" not in data:
        row.seen = (
            "not measured here: tests/package/systemd.sh (step 6) measures it in a Debian 13 "
            "systemd container (docs/packaging.md); its figures show here once it leaves them "
            "in .cache/faults/package-systemd.json"
        )
        row.ok = True
        return row
    row.router = [f"route gone {data['stale_route_s']} s after SIGSTOP (session dropped)"]
    row.back_s = data.get("back_s")
    row.back_note = "announced again by the restarted unit"
    row.seen = (
        f"watchdog (limit {data.get('watchdog_limit_s')} s) fired {data.get('watchdog_fired_s')}"
        f" s after SIGSTOP; stale route {data['stale_route_s']} s (package test of "
        f"{data.get('measured_at', '?')})"
    )
    row.figures.update(data)
    limit = float(data.get("watchdog_limit_s", 15))
    return judge(
        row,
        {"the route went": data["stale_route_s"] is not None},
        {"stale route within the watchdog + 3 s": data["stale_route_s"] <= limit + 3},
    )


# ---------------------------------------------------------------- 3. crash loop


def _crash_wrapper(directory: Path, config: Path, cause: Path) -> Path:
    """A controller that dies at start while ``cause`` exists (exec's the real one otherwise)."""
    script = directory / "crashy.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{cause}" ]; then echo "fault: dies at start ($(cat {cause}))" >&2; exit 1; fi\n'
        f'exec "{ANNOUNCER_BIN}" run --config "{config}"\n'
    )
    script.chmod(0o755)
    return script


@scenario("3a", "controller crash loop: ExaBGP gives up", versions=BOTH, quick=True)
def crash_loop(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile("crash")
    cause = prof.directory / "cause"
    script = _crash_wrapper(prof.directory, prof.config_path, cause)
    rig.start_node1(prof, argv=[str(script)])
    api = rig.controller_pid()
    exa = rig.lab.exabgp_pid("node1")
    assert exa is not None
    time.sleep(0.5)
    with Watch(rig) as w:
        w.inject()
        cause.write_text("fault 3a")
        os.kill(api, signal.SIGKILL)
        wait_until(lambda: not is_alive(exa), 120.0, interval=0.05, what="ExaBGP gives up")
        gave_up = w.since()
        code = rig.lab.stop_exabgp("node1")
        try:
            gone, went = w.router.wait(lambda p: not p.present, 20.0), True
        except WaitTimeout:
            gone, went = time.time(), False
        deaths = len([ln for ln in rig.log_lines(w.log0) if "fault: dies at start" in ln.text])
        # The unit's part (Restart=always), as the lab can play it: the cause is removed and
        # ExaBGP started again; the node must come back by itself.
        cause.unlink()
        restarted = time.monotonic()
        rig.lab.start_exabgp("node1", [str(script)], timeout=40.0)
        back = rig.wait_normal(40.0) - restarted
    row.injected = (
        "node1's controller made to die at every start (exit 1), then SIGKILLed once; "
        "after ExaBGP exits, the cause is removed and ExaBGP started again (the unit's "
        "Restart=always, played by the lab)"
    )
    row.back_s = back
    row.back_note = "from ExaBGP's new start to node1 normal again"
    fill(row, w, contains="Too many death")
    row.expected = (
        "ExaBGP gives up after more than 5 deaths in its 64 s window and exits, the session "
        "drops and the route goes (no stale route); started again, the node comes back"
    )
    row.seen = (
        f"{deaths} deaths, ExaBGP exited {gave_up:.2f} s after the kill with status {code}; "
        f"route gone {gone - w.t0:.2f} s after; back {back:.2f} s after the new start; "
        f"{row.lost} of {row.requests} requests lost"
    )
    row.figures = {"deaths": deaths, "gave_up_s": gave_up, "exit": code, "back_s": back}
    return judge(
        row,
        {
            "ExaBGP gave up": "Too many death" in row.log_line,
            "the route went with the session": went,
        },
    )


@scenario("3b", "controller crash loop under systemd: the unit brings the node back", versions=())
def crash_loop_systemd(ctx: Ctx, sc: Scenario) -> Row:
    row = ctx.row(sc)
    row.injected = "the installed unit's controller SIGKILLed until ExaBGP gives up"
    row.expected = "ExaBGP exits (status 0), Restart=always starts the unit again, it announces"
    data = _package()
    row.figures = {"external": True}
    if data is None or "gave_up_s" not in data:
        row.seen = (
            "not measured here: tests/package/systemd.sh (step 5) measures it in a Debian 13 "
            "systemd container (docs/packaging.md); its figures show here once it leaves them "
            "in .cache/faults/package-systemd.json"
        )
        row.ok = True
        return row
    row.router = [
        f"session dropped when ExaBGP gave up; route back {data.get('peer_back_s')} s after "
        "ExaBGP exited"
    ]
    row.back_s = data.get("peer_back_s")
    row.back_note = "the peer has the route again, from ExaBGP's exit"
    row.seen = (
        f"ExaBGP gave up after {data.get('kills')} kills in {data['gave_up_s']} s; the unit "
        f"was back {data.get('unit_back_s')} s later (package test of "
        f"{data.get('measured_at', '?')})"
    )
    row.figures.update(data)
    return judge(row, {"the unit came back": data.get("peer_back_s") is not None})
