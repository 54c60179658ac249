"""Fault 6: the configuration broken at start, on reload and on SIGHUP; a conf.d file
removed; 2,000 services added by one reload.

What must hold: the old configuration keeps running, and nothing changes on the wire that
the operator's change did not ask for.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.lab import PREFIX_V4, wait_until
from tests.lab.announcer_config import to_toml
from tests.lab.procs import is_alive

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Profile, Rig, Watch, base_config, short

BROKEN = "\n[defaults]\nrise = 2\n"  # a second [defaults] table: TOML refuses the file
EXTRA = "192.0.2.13/32"
BOTH = ("5.0", "4.2")


def _break(prof: Profile) -> None:
    with prof.config_path.open("a") as fh:
        fh.write(BROKEN)


def _status(rig: Rig) -> str:
    snap = rig.status() or {}
    error = (snap.get("config_error") or "").splitlines()
    svc = snap.get("services", {}).get("web", {})
    text = f"web: {svc.get('health')} {svc.get('route')}"
    return text + (f"; config_error: {error[0][:120]}" if error else "; config_error: none")


@scenario("6a", "config broken, then the controller restarted (respawn)", versions=BOTH, quick=True)
def broken_at_respawn(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile("cfg-respawn")
    rig.start_node1(prof)
    old = rig.controller_pid()
    with Watch(rig) as w:
        w.inject()
        _break(prof)
        os.kill(old, signal.SIGKILL)
        new = rig.new_controller_pid(old)
        wait_until(lambda: (rig.service() or {}).get("route") == "ANNOUNCED", 20.0, what="takeover")
        time.sleep(3.0)  # a crash loop would show as new controllers meanwhile
        steady = rig.lab.api_pids("node1") == [new]
    row.injected = (
        "node1's announcer.toml made invalid (a second [defaults] table), then its controller "
        "SIGKILLed: ExaBGP starts a new one, which finds the file broken"
    )
    fill(row, w, events=("config_invalid",), status=_status(rig))
    row.expected = (
        "the new controller runs on the last good config (kept in state_dir) and says so "
        "in the log and status; no crash loop; nothing changes on the wire"
    )
    # Read once: BIRD's counters are read live, and a second reading made after the
    # window could contradict the row's own account of it (a CI run saw that once).
    untouched = w.quiet()
    row.seen = (
        f"controller {new} took over, {'stayed up' if steady else 'did NOT stay up'}; the router "
        + ("saw nothing" if untouched else "saw changes")
    )
    return judge(
        row,
        {
            "no crash loop": steady,
            "nothing changed on the wire": untouched,
            "status shows the config error": "config_error: none" not in row.status,
            "a log line says so": "config_invalid" in row.log_line,
        },
    )


@scenario("6b", "config broken at a first start (no last good config)", versions=BOTH)
def broken_first_start(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile("cfg-first")
    prof.write()
    _break(prof)
    with Watch(rig) as w:
        w.inject()
        rig.start_node1(prof, wait_normal=False, wait_session=False, write=False)
        exa = rig.lab.exabgp_pid("node1")
        gave_up = False
        if exa is not None:
            try:
                wait_until(lambda: not is_alive(exa), 90.0, interval=0.1, what="ExaBGP gives up")
                gave_up = True
            except Exception:
                gave_up = False
        code = rig.lab.stop_exabgp("node1")
        deaths = len([ln for ln in rig.log_lines(w.log0) if "announcer: " in ln.text])
        said = rig.find_log(w.log0, contains="announcer: ")
    row.injected = "a node's first start with an invalid announcer.toml (nothing kept in state_dir)"
    fill(row, w, contains="Too many death", status="no controller runs")
    if said is not None:
        row.log_line = short(said.text) + " … then: " + row.log_line
    announced = any(c.after.present for c in w.router.changes())
    row.expected = (
        "nothing announced (no config was ever good); the controller exits 2 saying why; "
        "ExaBGP gives up after its respawn limit (under systemd, ExecStartPre's check-config "
        "refuses the start: the package test, step 7)"
    )
    row.seen = (
        f"{deaths} error lines, ExaBGP {'gave up' if gave_up else 'kept running'} (exit "
        f"{code}); node1 {'announced something' if announced else 'announced nothing'}"
    )
    return judge(row, {"nothing announced": not announced, "the reason is logged": deaths > 0})


def _refused(ctx: Ctx, sc: Scenario, how: str) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile(f"cfg-{how}")
    rig.start_node1(prof)
    pid = rig.controller_pid()
    with Watch(rig) as w:
        w.inject()
        _break(prof)
        if how == "reload":
            done = rig.cli("reload")
            answer = f"`announcer reload` exit {done.returncode}"
            refused = done.returncode == 1
        else:
            os.kill(pid, signal.SIGHUP)
            answer = "SIGHUP"
            refused = True
        wait_until(
            lambda: (rig.status() or {}).get("config_error"), 10.0, what="the error in status"
        )
        time.sleep(2.0)
        same = rig.lab.api_pids("node1") == [pid]
    row.injected = f"announcer.toml made invalid (a second [defaults] table), then {how}"
    fill(row, w, events=("reload_failed",), status=_status(rig))
    row.expected = (
        "refused; the running config stays (same process, routes untouched); status and "
        "the log say why"
    )
    untouched = w.quiet()  # read once, as in 6a
    row.seen = f"{answer}; controller {'the same' if same else 'REPLACED'}; the router " + (
        "saw nothing" if untouched else "saw changes"
    )
    return judge(
        row,
        {
            "refused": refused,
            "same controller": same,
            "nothing changed on the wire": untouched,
            "status shows the config error": "config_error: none" not in row.status,
        },
    )


@scenario("6c", "config broken on reload (`announcer reload`)", quick=True)
def broken_reload(ctx: Ctx, sc: Scenario) -> Row:
    return _refused(ctx, sc, "reload")


@scenario("6d", "config broken on SIGHUP")
def broken_sighup(ctx: Ctx, sc: Scenario) -> Row:
    return _refused(ctx, sc, "SIGHUP")


def _with_conf_d(rig: Rig, name: str, files: dict[str, list[dict[str, Any]]]) -> Profile:
    config = base_config(include="conf.d/*.toml")
    prof = rig.new_profile(name, config)
    conf_d = prof.directory / "conf.d"
    conf_d.mkdir()
    for file, services in files.items():
        (conf_d / file).write_text(to_toml({"service": services}))
    return prof


def _file_service(rig: Rig, name: str, prefix: str) -> dict[str, Any]:
    flag = rig.lab.node_dir("node1") / "conf-ok"
    flag.write_text("ok\n")
    return {
        "name": name,
        "prefixes": [prefix],
        "checks": [{"type": "file", "path": str(flag)}],
        "announce": {"med": 100},
    }


@scenario("6e", "a conf.d file removed, then reload")
def conf_d_removed(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = _with_conf_d(rig, "cfg-confd", {"extra.toml": [_file_service(rig, "extra", EXTRA)]})
    rig.start_node1(prof)
    rig.lab.wait_paths(EXTRA, lambda p: "node1" in p, 20.0, what="extra announced")
    drain_seconds = prof.config["defaults"]["drain_seconds"]
    with Watch(rig, prefixes=(PREFIX_V4, EXTRA)) as w:
        w.inject()
        (prof.directory / "conf.d" / "extra.toml").unlink()
        done = rig.cli("reload")
        lowered = w.router.wait(lambda p: p.lowered, 10.0, prefix=EXTRA, what="extra lowered")
        gone = w.router.wait(lambda p: not p.present, drain_seconds + 10.0, prefix=EXTRA)
        time.sleep(1.0)
    web_changes = w.router.changes(PREFIX_V4)
    row.injected = "conf.d/extra.toml (service `extra`, 192.0.2.13/32) deleted, then reload"
    row.back_s = gone - w.t0
    row.back_note = "`extra` withdrawn"
    fill(row, w, events=("reload",))
    row.router = w.router.describe(w.t0, prefixes=(PREFIX_V4, EXTRA))
    row.expected = (
        "the removed service is drained (lowered, withdrawn after drain_seconds), as for any "
        "service removed from the config; web untouched"
    )
    row.seen = (
        f"reload exit {done.returncode}; extra lowered {lowered - w.t0:.2f} s, withdrawn "
        f"{gone - lowered:.2f} s later; web {'untouched' if not web_changes else 'CHANGED'}"
    )
    return judge(
        row,
        {
            "reload accepted": done.returncode == 0,
            "lowered before withdrawn": gone - lowered >= drain_seconds - 0.2,
            "web untouched": not web_changes,
        },
    )


@scenario("6f", "2,000 services added by one reload")
def many_on_reload(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    n = 2000
    prof = _with_conf_d(rig, "cfg-many", {})
    rig.start_node1(prof)
    pid = rig.controller_pid()
    services = [
        {**_file_service(rig, f"s{i}", f"198.18.{i // 256}.{i % 256}/32"), "interval": 1.0}
        for i in range(n)
    ]
    (prof.directory / "conf.d" / "many.toml").write_text(to_toml({"service": services}))
    with Watch(rig) as w:
        w.inject()
        began = time.monotonic()
        done = rig.cli("reload", timeout=120.0)
        answered = time.monotonic() - began
        latencies = []
        for _ in range(10):
            t = time.monotonic()
            rig.status(timeout=10.0)
            latencies.append(time.monotonic() - t)
        wait_until(lambda: _count(rig) >= n + 1, 120.0, interval=0.2, what="all announced")
        all_in = time.monotonic() - began
        time.sleep(2.0)
        same = rig.lab.api_pids("node1") == [pid]
    stalled = rig.find_log(w.log0, ("stalled",))
    web_changes = w.router.changes(PREFIX_V4)
    row.injected = f"conf.d/many.toml with {n:,} services (a file check each, every 1 s), reload"
    row.back_s = all_in
    row.back_note = f"all {n:,} new prefixes at the router"
    fill(row, w, events=("reloaded",))
    row.router = [
        f"{n:,} new prefixes from node1 within {all_in:.2f} s",
        "web: " + ("untouched" if not web_changes else "CHANGED"),
    ]
    row.expected = (
        "the reload answers; the main loop keeps turning (no stall exit); the new services "
        "are announced; web untouched"
    )
    row.seen = (
        f"`announcer reload` exit {done.returncode} after {answered:.2f} s; status right after: "
        f"max {max(latencies) * 1000:.0f} ms; all announced {all_in:.2f} s after the reload; "
        f"controller {'the same' if same else 'REPLACED'}"
    )
    row.figures = {"reload_s": answered, "status_max_s": max(latencies), "all_in_s": all_in}
    return judge(
        row,
        {
            "reload accepted": done.returncode == 0,
            "no stall exit": stalled is None and same,
            "web untouched": not web_changes,
        },
    )


def _count(rig: Rig) -> int:
    out = rig.lab.birdc("show", "route", "protocol", "node1", "count")
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit() and "routes" in parts:
            return int(parts[0])
    return 0
