"""Fault 5: the state directory read-only or full, the state file truncated, corrupted, of a
newer version, or deleted while the controller runs.

The state file matters at a takeover: ExaBGP keeps our routes and starts a new controller,
which learns the previous run's drains from it. So each row ends with the controller
SIGKILLed and shows what the new one did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.lab import PREFIX_V4

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Rig, Watch, short


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A real, small tmpfs at ``path`` (so read-only and full are the kernel's own)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> None:
    with contextlib.suppress(OSError), (directory / "filler").open("wb", buffering=0) as f:
        while True:  # until ENOSPC
            f.write(b"\0" * 65536)


def _restart_controller(rig: Rig, settle: float) -> tuple[int, int, bool]:
    """SIGKILL the controller, wait for ExaBGP's next one and ``settle`` seconds; returns
    (old pid, new pid, still that same new one at the end: no crash loop)."""
    old = rig.controller_pid()
    os.kill(old, signal.SIGKILL)
    new = rig.new_controller_pid(old)
    time.sleep(settle)
    return old, new, rig.lab.api_pids("node1") == [new]


def _unsaved(ctx: Ctx, sc: Scenario, fault: str) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile(f"st-{fault}")
    with tmpfs(prof.state_dir) as where:
        rig.start_node1(prof)
        if fault == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        else:
            _fill(where)
        with Watch(rig) as w:
            w.inject()
            drain = rig.cli("drain", "web", "--reason", f"fault {sc.id}")
            w.router.wait(lambda p: p.lowered, 15.0, what="lowered")
            gone = w.router.wait(lambda p: not p.present, 15.0, what="withdrawn")
            after_drain = rig.status_text()
            _, new, steady = _restart_controller(rig, 3.0)
        present = w.router.current().present
        svc = rig.answered()
    row.injected = (
        f"state_dir on a 256 KiB tmpfs made {fault}"
        + (" (remount,ro)" if fault == "read-only" else " (filled up)")
        + "; `announcer drain web`; then the controller SIGKILLed"
    )
    row.back_s = gone - w.t0
    row.back_note = "the drain's withdraw at the router"
    fill(row, w, events=("state_write_failed",), status=after_drain)
    said = (drain.stderr or drain.stdout).strip().splitlines()
    row.status = f"after the drain: {after_drain}; after the restart: {rig.status_text()}"
    row.expected = (
        "the drain is applied (lowered, withdrawn) but `announcer drain` exits 1 saying it "
        "was not saved, and status shows state_error; a restart cannot keep an unsaved "
        "drain: the new controller asserts what it knows, and status matches the router"
    )
    row.seen = (
        f"`announcer drain` exit {drain.returncode}: {said[-1] if said else ''!r}; "
        f"withdrawn {row.back_s:.2f} s after; after the restart node1 is "
        f"{'announced' if present else 'withdrawn'}, status {svc.get('route')}"
    )
    consistent = (svc.get("route") == "ANNOUNCED") == present
    return judge(
        row,
        {
            "drain exits 1": drain.returncode == 1,
            "says not saved": "not saved" in drain.stderr,
            "status shows state_error": "state_error" in after_drain,
            "drain applied anyway": gone > 0,
            "no crash loop": steady,
            "status matches the router after the restart": consistent,
            "new controller answers": new > 0,
        },
    )


@scenario("5a", "state directory read-only", quick=True)
def read_only(ctx: Ctx, sc: Scenario) -> Row:
    return _unsaved(ctx, sc, "read-only")


@scenario("5b", "state directory full (a tiny tmpfs)")
def full(ctx: Ctx, sc: Scenario) -> Row:
    return _unsaved(ctx, sc, "full")


Tamper = Callable[[Path], object]

TAMPER: dict[str, tuple[str, Tamper]] = {
    "truncated": ("truncated to 0 bytes", lambda p: p.write_bytes(b"")),
    "corrupted": ("overwritten with garbage", lambda p: p.write_bytes(b"\x00\xff garbage {")),
    "newer": (
        'replaced by one of a newer version ({"format": 99, ...})',
        lambda p: p.write_text('{"format": 99, "services": {}, "exabgp": "x"}\n'),
    ),
    "deleted": ("deleted", lambda p: p.unlink()),
}


def _tampered(ctx: Ctx, sc: Scenario, how: str) -> Row:
    """An operator drain in force (withdrawn); the state file tampered with while the
    controller runs; 2 s later the controller is killed and ExaBGP starts another."""
    rig, row = ctx.rig, ctx.row(sc)
    what, tamper = TAMPER[how]
    prof = rig.new_profile(f"st-{how}")
    rig.start_node1(prof)
    drained = rig.cli("drain", "web", "--reason", f"fault {sc.id}")
    rig.lab.wait_paths(PREFIX_V4, lambda p: "node1" not in p, 15.0, what="drained")
    with Watch(rig) as w:
        w.inject()
        tamper(prof.state_file)
        time.sleep(2.0)
        noticed = rig.find_log(w.log0, ("state_file_changed", "state_file_missing"))
        restart_log = rig.log_offset()
        old, new, steady = _restart_controller(rig, 4.0)
        announced = w.router.current().present or any(c.after.present for c in w.router.changes())
    svc = rig.answered()
    at_start = rig.find_log(restart_log, ("state_unreadable", "restored"))
    row.injected = (
        f"node1 drained by `announcer drain web`; the state file {what} while the controller "
        "runs; 2 s later the controller is SIGKILLed (ExaBGP starts another)"
    )
    fill(row, w, events=("state_file_changed", "state_file_missing", "state_unreadable"))
    if at_start is not None and noticed is None:
        row.log_line = short(at_start.text)
    row.expected = (
        "a clear log line; no crash loop; the drain kept (node1 not announced again) or, "
        "if it cannot be, lost loudly, never silently"
    )
    row.seen = (
        ("the running controller noticed and rewrote the file; " if noticed else "")
        + f"new controller {new} {'stayed up' if steady else 'did not stay up'}; node1 "
        + ("ANNOUNCED again" if announced else "stayed withdrawn")
        + f", status {svc.get('route')}{' drained' if svc.get('drained') else ' not drained'}"
    )
    row.figures = {"drain_exit": drained.returncode, "noticed": noticed is not None}
    row.defect = (
        "found and fixed: before, the controller ExaBGP started next read the damaged (or "
        "missing) file, forgot the operator's drain and announced node1 again. The running "
        "daemon now checks its state file every 0.5 s (announcer/wire.py, "
        "Wire.watch) and writes it again, logging state_file_changed / "
        "state_file_missing; regression test tests/integration/test_state_file_watch.py. Still "
        "open: a file damaged while no controller runs (or within those 0.5 s) loses its "
        "drains, logged as state_unreadable (a deleted one looks like a first start)"
    )
    return judge(
        row,
        {
            "no crash loop": steady,
            "drain kept: not announced again": not announced,
            "drain kept in status": bool(svc.get("drained")),
            "a log line says so": row.log_line.startswith("level=") and old != new,
        },
    )


@scenario("5c", "state file truncated while running", quick=True)
def truncated(ctx: Ctx, sc: Scenario) -> Row:
    return _tampered(ctx, sc, "truncated")


@scenario("5d", "state file corrupted while running")
def corrupted(ctx: Ctx, sc: Scenario) -> Row:
    return _tampered(ctx, sc, "corrupted")


@scenario("5e", "state file of a newer version")
def newer(ctx: Ctx, sc: Scenario) -> Row:
    return _tampered(ctx, sc, "newer")


@scenario("5f", "state file deleted while running", quick=True)
def deleted(ctx: Ctx, sc: Scenario) -> Row:
    return _tampered(ctx, sc, "deleted")
