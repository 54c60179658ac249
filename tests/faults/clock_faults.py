"""Fault 9: the wall clock stepped an hour forward and back, while running and while draining.

libfaketime on the controller only (``LD_PRELOAD`` through ``env`` in ExaBGP's ``run``
line), reading its offset from a file at every call, so the test steps the controller's
wall clock while it runs; monotonic time is left alone (``FAKETIME_DONT_FAKE_MONOTONIC``),
as a real clock step (NTP, an operator's ``date -s``) leaves it.
"""

from __future__ import annotations

import time
from pathlib import Path

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Profile, Rig, Watch, base_config, log_time

LIBS = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


def _faked(rig: Rig, name: str, drain_seconds: float = 3.0) -> tuple[Profile, Path]:
    if not LIBS:
        raise RuntimeError("libfaketime is not installed (scripts/bootstrap.sh installs it)")
    prof = rig.new_profile(name, base_config(drain_seconds=drain_seconds))
    spec = prof.directory / "faketime"
    spec.write_text("+0\n")
    wrap = [
        "/usr/bin/env",
        f"LD_PRELOAD={LIBS[0]}",
        f"FAKETIME_TIMESTAMP_FILE={spec}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]
    rig.start_node1(prof, wrap=wrap)
    return prof, spec


@scenario("9a", "wall clock stepped +1 h and back while running", quick=True)
def step_running(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof, spec = _faked(rig, "clock-run")
    hold = 3.0
    before = (rig.service() or {}).get("checks_run", 0)
    with Watch(rig) as w:
        w.inject()
        spec.write_text("+1h\n")
        time.sleep(hold)
        spec.write_text("+0\n")
        time.sleep(hold)
        after = (rig.service() or {}).get("checks_run", 0)
        elapsed = w.since()
    interval = prof.config["defaults"]["interval"]
    ran, due = after - before, elapsed / interval
    row.injected = (
        f"the controller's wall clock stepped +1 h, {hold:g} s later back by 1 h "
        "(libfaketime; monotonic time untouched)"
    )
    fill(row, w, events=("route", "health"))
    if row.log_line.startswith("(no"):
        row.log_line = "(none: nothing happened that an operator must see)"
    row.expected = "no route change, checks on schedule (the controller times on monotonic)"
    row.seen = f"{ran} check rounds in {elapsed:.1f} s (interval {interval:g} s: {due:.0f} due)"
    untouched = w.quiet()
    row.figures = {"checks_run": ran, "checks_due": due}
    return judge(
        row,
        {
            "no route change": untouched,
            "checks kept their interval (>= 80 % of those due)": ran >= 0.8 * due - 1,
            "no request lost": row.lost == 0,
        },
    )


def _step_draining(ctx: Ctx, sc: Scenario, step: str) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    drain_seconds = 4.0
    _, spec = _faked(rig, f"clock-drain{step[0]}", drain_seconds)
    with Watch(rig) as w:
        w.inject()
        done = rig.cli("drain", "web", "--reason", f"fault {sc.id}")
        lowered = w.router.wait(lambda p: p.lowered, 15.0, what="lowered")
        time.sleep(1.0)
        spec.write_text(f"{step}\n")
        gone = w.router.wait(lambda p: not p.present, drain_seconds + 20.0, what="withdrawn")
        time.sleep(1.0)
    spec.write_text("+0\n")
    late = gone - (lowered + drain_seconds)
    row.injected = (
        f"`announcer drain web` (drain_seconds {drain_seconds:g}); 1 s into the drain the "
        f"controller's wall clock stepped {step}"
    )
    row.back_s = gone - w.t0
    row.back_note = "withdrawn (the drain's end)"
    fill(row, w, events=("route",))
    row.expected = (
        f"withdrawn drain_seconds ({drain_seconds:g} s) after the lowering: not at once "
        "(clock forward), not an hour late (clock back); no flap"
    )
    row.seen = (
        f"withdrawn {gone - lowered:.2f} s after the lowering ({late:+.2f} s against the "
        f"deadline); {row.lost} of {row.requests} requests lost"
    )
    # proof the step took: the controller's own log time of the withdraw is an hour off
    wd = [
        ln
        for ln in rig.log_lines(w.log0)
        if ln.event == "route" and ln.fields.get("to") == "WITHDRAWN"
    ]
    skew = log_time(wd[0].fields) - gone if wd else None
    wanted = 3600.0 if step.startswith("+") else -3600.0
    row.seen += f"; the controller logged the withdraw {skew or 0:+.0f} s off the real time"
    row.figures = {"late_s": late, "log_skew_s": skew}
    flaps = [c for c in w.router.changes() if c.after.present and not c.after.lowered]
    return judge(
        row,
        {
            "drain accepted": done.returncode == 0,
            "not early": late >= -0.2,
            "withdrawn, not an hour late": not w.router.current().present,
            "no flap (never back to normal attributes)": not flaps,
            "the controller's clock was stepped": skew is not None and abs(skew - wanted) < 60,
        },
        {"on time (within 1 s)": late <= 1.0},
    )


@scenario("9b", "wall clock stepped +1 h while draining", quick=True)
def step_forward_draining(ctx: Ctx, sc: Scenario) -> Row:
    return _step_draining(ctx, sc, "+1h")


@scenario("9c", "wall clock stepped -1 h while draining")
def step_back_draining(ctx: Ctx, sc: Scenario) -> Row:
    return _step_draining(ctx, sc, "-1h")
