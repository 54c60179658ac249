"""Fault 8: the control socket under abuse.

Each row puts one kind of load on node1's control socket, and meanwhile measures how long
``status`` takes (in-process requests every 50 ms: reported, never asserted) and has the
operator drain and undrain ``web`` with the real CLI (which retries "busy"): both must get
through. The daemon must stay the same process and the route must only move for the
operator's own drain.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.lab.announcer_config import ANNOUNCER_BIN

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import Rig, Watch

NOBODY = 65534


class StatusProbe:
    """``status`` every ``every`` seconds on a thread; latencies (s), failures counted."""

    def __init__(self, rig: Rig, every: float = 0.05) -> None:
        self.rig, self.every = rig, every
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            began = time.monotonic()
            if self.rig.status(timeout=10.0) is None:
                self.failures += 1
            else:
                self.latencies.append(time.monotonic() - began)

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20.0)

    def summary(self) -> str:
        if not self.latencies:
            return f"status never answered ({self.failures} failures)"
        ms = sorted(v * 1000 for v in self.latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        text = (
            f"status p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms "
            f"({len(ms)} requests"
        )
        return text + (f", {self.failures} unanswered)" if self.failures else ")")


def _operator(rig: Rig) -> tuple[int, int]:
    """The operator drains then undrains web with the real CLI; their exit statuses."""
    drain = rig.cli("drain", "web", "--reason", "operator during load", timeout=60.0)
    undrain = rig.cli("undrain", "web", timeout=60.0)
    return drain.returncode, undrain.returncode


def _payloads(rng: random.Random, huge: int) -> Iterator[bytes]:
    """Garbage of every kind; valid mutating requests are left out (root's would drain)."""
    from announcer.control import ControlRefused, parse_request

    commands: list[Any] = ["status", "drain", "undrain", "reload", "ping", "nope", "", None, 7]
    while True:
        kind = rng.randrange(8)
        if kind == 0:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\n"
        elif kind == 1:
            payload = b"{" * rng.randrange(1, 3000) + b"\n"
        elif kind == 2:
            request: dict[str, Any] = {
                "v": rng.choice([1, 2, "1", None, 1.0]),
                "cmd": rng.choice(commands),
            }
            if rng.random() < 0.5:
                request["services"] = rng.choice([["web"], ["nope"], "web", [1, 2], None, {}])
            if rng.random() < 0.3:
                key = rng.choice(["all", "reason", "extra", "stop"])
                request[key] = rng.choice([True, 1, "x", None, []])
            payload = json.dumps(request).encode() + b"\n"
        elif kind == 3:
            payload = b"x" * huge + b"\n"  # past the 64 KiB line limit
        elif kind == 4:
            payload = json.dumps([1, "two", {"three": 3}]).encode() + b"\n"
        elif kind == 5:
            payload = b'{"v": 1, "cmd": "status"}\n'
        elif kind == 6:
            payload = b"\n"
        else:
            payload = b'{"v": 1, "cmd": "' + bytes(rng.randrange(32, 127) for _ in range(40))
            payload += b'"}\n'
        try:
            request_ok = parse_request(payload.rstrip(b"\n"))
        except ControlRefused:
            yield payload
            continue
        if not request_ok.mutating:
            yield payload


def _fuzz(path: Path, count: int, seed: int, answered: Counter[str]) -> None:
    rng = random.Random(seed)
    payloads = _payloads(rng, 70_000)
    sent = 0
    while sent < count:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            try:
                s.connect(str(path))
            except OSError:
                answered["connect failed"] += 1
                time.sleep(0.01)
                continue
            f = s.makefile("rwb")
            for _ in range(50):
                payload = next(payloads)
                sent += 1
                try:
                    f.write(payload)
                    f.flush()
                    line = f.readline()
                except OSError:
                    answered["connection error"] += 1
                    break
                if not line:
                    answered["closed"] += 1
                    break
                try:
                    reply = json.loads(line)
                    answered["ok" if reply.get("ok") else str(reply.get("code"))] += 1
                except ValueError:
                    answered["not JSON"] += 1


def _load_row(
    ctx: Ctx,
    sc: Scenario,
    name: str,
    injected: str,
    load: Callable[[Rig, Path, Counter[str]], None],
    extra_checks: Callable[[Rig, Counter[str]], dict[str, bool]] | None = None,
) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile(name)
    rig.start_node1(prof)
    pid = rig.controller_pid()
    answered: Counter[str] = Counter()
    with Watch(rig) as w, StatusProbe(rig) as probe:
        w.inject()
        worker = threading.Thread(target=load, args=(rig, prof.socket, answered), daemon=True)
        worker.start()
        time.sleep(1.0)  # the load is on
        drain, undrain = _operator(rig)
        worker.join(600.0)
        loaded = w.since()
        time.sleep(1.0)
        same = rig.lab.api_pids("node1") == [pid]
        svc = rig.service() or {}
    row.injected = injected
    fill(row, w, events=("control_shed", "control_busy", "control_failed"))
    if row.log_line.startswith("(no"):
        row.log_line = "(none)"
    outcomes = ", ".join(f"{k} {v}" for k, v in answered.most_common(6))
    row.status += f"; under load: {probe.summary()}"
    row.expected = (
        "the daemon keeps running and answering; the operator's drain and undrain get "
        "through; the route moves only for them"
    )
    row.seen = (
        f"{loaded:.1f} s of load ({outcomes}); operator drain exit {drain}, undrain exit "
        f"{undrain}; daemon {'the same process' if same else 'REPLACED'}; {probe.summary()}"
    )
    row.figures = {
        "answered": dict(answered),
        "status_ms": [round(v * 1000, 1) for v in probe.latencies],
        "load_s": loaded,
    }
    checks = {
        "daemon never died": same,
        "operator drain got through": drain == 0,
        "operator undrain got through": undrain == 0,
        "web back to normal": (svc.get("route"), svc.get("drained")) == ("ANNOUNCED", False),
    }
    if extra_checks is not None:
        checks.update(extra_checks(rig, answered))
    return judge(row, checks)


@scenario("8a", "control socket: fuzzed requests", quick=True)
def fuzzed(ctx: Ctx, sc: Scenario) -> Row:
    total = 5_000 if ctx.quick else 100_000
    parallel = 4

    def load(rig: Rig, path: Path, answered: Counter[str]) -> None:
        threads = [
            threading.Thread(target=_fuzz, args=(path, total // parallel, seed, answered))
            for seed in range(parallel)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return _load_row(
        ctx,
        sc,
        "ctl-fuzz",
        f"{total:,} fuzzed requests on {parallel} connections at a time: random bytes, "
        "invalid JSON, 70 KB lines, wrong types, unknown commands (valid mutating requests "
        "left out: root may drain)",
        load,
    )


@scenario("8b", "control socket: 1,000 concurrent clients")
def concurrent(ctx: Ctx, sc: Scenario) -> Row:
    clients = 1000

    def one(path: Path, answered: Counter[str], go: threading.Event) -> None:
        go.wait()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            try:
                s.connect(str(path))
                s.sendall(b'{"v": 1, "cmd": "status"}\n')
                line = s.makefile("rb").readline()
                reply = json.loads(line) if line else {}
                answered["ok" if reply.get("ok") else str(reply.get("code", "closed"))] += 1
            except (OSError, ValueError) as exc:
                answered[type(exc).__name__] += 1

    def load(rig: Rig, path: Path, answered: Counter[str]) -> None:
        for _ in range(3):  # three waves
            go = threading.Event()
            threads = [
                threading.Thread(target=one, args=(path, answered, go), daemon=True)
                for _ in range(clients)
            ]
            for t in threads:
                t.start()
            go.set()
            for t in threads:
                t.join(60.0)

    return _load_row(
        ctx,
        sc,
        "ctl-many",
        f"{clients:,} clients connecting and asking status at the same instant, three waves",
        load,
    )


@scenario("8c", "control socket: clients that connect and never send", quick=True)
def silent_clients(ctx: Ctx, sc: Scenario) -> Row:
    held = 300
    seconds = 5.0

    def load(rig: Rig, path: Path, answered: Counter[str]) -> None:
        socks = []
        for _ in range(held):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
                answered["connected"] += 1
            except BlockingIOError:
                answered["backlog full"] += 1
            except OSError as exc:
                answered[type(exc).__name__] += 1
            socks.append(s)
        time.sleep(seconds)
        for s in socks:
            with contextlib.suppress(OSError):
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    answered["closed by the daemon"] += 1
            s.close()

    return _load_row(
        ctx,
        sc,
        "ctl-silent",
        f"{held} connections opened and left silent for {seconds:g} s",
        load,
    )


@scenario("8d", "control socket: clients closing mid-reply")
def close_mid_reply(ctx: Ctx, sc: Scenario) -> Row:
    count = 1000

    def load(rig: Rig, path: Path, answered: Counter[str]) -> None:
        for _ in range(count):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                try:
                    s.connect(str(path))
                    s.sendall(b'{"v": 1, "cmd": "status"}\n')
                    s.recv(16)  # the reply has started: leave with the rest unread
                    answered["left mid-reply"] += 1
                except OSError as exc:
                    answered[type(exc).__name__] += 1

    return _load_row(
        ctx,
        sc,
        "ctl-close",
        f"{count:,} clients that ask for status, read 16 bytes of the reply and close",
        load,
    )


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    """The last line the CLI printed (its error message)."""
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return repr(lines[-1]) if lines else "(nothing)"


def _as_nobody(*args: str, socket_path: Path) -> subprocess.CompletedProcess[str]:
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv += [str(ANNOUNCER_BIN), *args, "--socket", str(socket_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@scenario("8e", "control socket: a user outside the control group", quick=True)
def outsider(ctx: Ctx, sc: Scenario) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    prof = rig.new_profile("ctl-outsider")
    rig.start_node1(prof)
    # The lab's directories are private (0700): open the path to the socket, as
    # /run/announcer is, so the socket's own mode and the daemon decide.
    opened = [rig.lab.tmpdir, rig.lab.node_dir("node1"), prof.directory]
    modes = {p: p.stat().st_mode & 0o7777 for p in opened}
    try:
        for p in opened:
            os.chmod(p, 0o711)  # noqa: S103 - search only, as /run/announcer
        with Watch(rig) as w:
            w.inject()
            shipped = _as_nobody("drain", "web", socket_path=prof.socket)
            # an operator's mistake: everyone may connect
            os.chmod(prof.socket, 0o666)  # noqa: S103
            widened = _as_nobody("drain", "web", socket_path=prof.socket)
            status = _as_nobody("status", "--json", socket_path=prof.socket)
            time.sleep(1.0)
    finally:
        for p, mode in modes.items():
            os.chmod(p, mode)
    untouched = not w.router.changes()
    row.injected = (
        "`announcer drain web` as user nobody (not in the control group): with the socket as "
        "shipped (0660), then with the socket made 0666 by mistake"
    )
    fill(row, w, events=("control_denied", "control_refused"))
    row.expected = (
        "refused both times (0660: the kernel refuses the connection; 0666: the daemon "
        "refuses the drain, permission denied, but answers status); the route untouched"
    )
    row.seen = (
        f"as shipped: exit {shipped.returncode} {_said(shipped)}; socket 0666: exit "
        f"{widened.returncode} {_said(widened)}; status as nobody: exit {status.returncode}; "
        f"the router {'saw nothing' if untouched else 'saw changes'}"
    )
    return judge(
        row,
        {
            "refused as shipped": shipped.returncode != 0,
            "refused by the daemon when the socket is open to all": widened.returncode == 1
            and "permission" in (widened.stderr + widened.stdout).lower(),
            "status answered": status.returncode == 0,
            "route untouched": untouched,
        },
    )
