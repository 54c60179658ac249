"""Fault 12: a planned removal with long-lived connections open.

64 TCP streams from the client to the anycast address, spread over node1 and node2 by the
router's ECMP hash (L4), then node1 taken out: by ``announcer drain`` (lowered, withdrawn
after drain_seconds) or by ``exabgp healthcheck``'s disable file (re-announced with its
disabled metric, MED 500). The router stops sending node1's flows to node1 the moment
node1's path stops being a best path: their packets go to node2, which knows no such
connection and answers with a reset. The rows measure that for both tools.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from functools import partial
from pathlib import Path
from typing import IO, Any

from tests.lab import ANYCAST_V4, PREFIX_V4, wait_until

from .model import Row
from .registry import Ctx, Scenario, fill, judge, scenario
from .rig import PYTHON, Rig, Watch, base_config

STREAM = Path(__file__).with_name("_stream.py")
PORT = 9000
EXABGP = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "exabgp"


class StreamClient:
    """The client half of :mod:`tests.faults._stream`, run in the client namespace."""

    def __init__(self, rig: Rig, count: int) -> None:
        lab = rig.lab
        argv = ["ip", "netns", "exec", lab.ns("client"), str(PYTHON), str(STREAM), "client"]
        argv += ["--host", ANYCAST_V4, "--port", str(PORT), "--count", str(count)]
        argv += ["--lab", lab.id]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        out: IO[str] | None = self.popen.stdout
        assert out is not None
        for line in out:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)

    def find(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return next((e for e in self.events if key in e), None)

    def ended(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if "ended" in e]

    def finish(self) -> dict[str, Any] | None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        wait_until(lambda: self.find("done") or self.popen.poll() is not None, 10.0, what="done")
        done = self.find("done")
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5.0)
        self._thread.join(5.0)
        return done


def _exa_config(rig: Rig, disable: Path) -> Path:
    """``exabgp healthcheck`` as a new user would run it: defaults, plus what the lab needs."""
    directory = rig.lab.node_dir("node1")
    path = directory / "exa-streams.conf"
    path.write_text(
        "\n".join(
            [
                "no-syslog",
                "no-ip-setup",
                "name = web",
                "interval = 1",
                "fast-interval = 0.25",
                "rise = 3",
                "fall = 3",
                "up-metric = 100",
                f"command = curl -sf -o /dev/null --max-time 1 http://{ANYCAST_V4}/health",
                f"disable = {disable}",
                f"ip = {PREFIX_V4}",
                "",
            ]
        )
    )
    return path


def _streams(ctx: Ctx, sc: Scenario, tool: str) -> Row:
    rig, row = ctx.rig, ctx.row(sc)
    lab = rig.lab
    count = 64
    drain_seconds = 4.0
    disable = lab.node_dir("node1") / "exa-disable"
    disable.unlink(missing_ok=True)
    if tool == "announcer":
        rig.start_node1(rig.new_profile("streams", base_config(drain_seconds=drain_seconds)))
    else:
        conf = _exa_config(rig, disable)
        prof = rig.new_profile("streams-exa")
        argv = [str(EXABGP), "healthcheck", "--config", str(conf)]
        rig.start_node1(prof, argv=argv, wait_normal=False)
        lab.wait_fib_nodes(PREFIX_V4, ["node1", "node2"], 30.0)
    servers = []
    for node in ("node1", "node2"):
        argv = [str(PYTHON), str(STREAM), "server", "--host", ANYCAST_V4, "--port", str(PORT)]
        argv += ["--name", node, "--lab", lab.id]
        servers.append(lab.spawn(node, f"stream {node}", argv, lab.node_dir(node) / "stream.log"))
    try:
        for node in ("node1", "node2"):
            listening = ["ss", "-Hltn", f"sport = :{PORT}"]
            wait_until(partial(lab.exec_in, node, listening), 10.0, what=f"stream server on {node}")
        streams = StreamClient(rig, count)
        ready = wait_until(lambda: streams.find("ready"), 30.0, what="streams open")
        assert ready is not None
        spread: dict[str, int] = ready["nodes"]
        with Watch(rig) as w:
            time.sleep(1.0)
            w.inject()
            if tool == "announcer":
                done = rig.cli("drain", "web", "--reason", "fault 12")
                assert done.returncode == 0, done.stderr
            else:
                disable.write_text("maintenance\n")
            w.router.wait(lambda p: p.lowered or p.med == 500 or not p.present, 15.0)
            wait_until(lambda: lab.fib_nodes(PREFIX_V4) == ["node2"], 15.0, what="FIB → node2")
            if tool == "announcer":
                w.router.wait(lambda p: not p.present, drain_seconds + 10.0, what="withdrawn")
            time.sleep(2.0)
            ended = streams.ended()
            finish = streams.finish()
    finally:
        for proc in servers:
            proc.stop(grace=1.0)
        disable.unlink(missing_ok=True)
    moved = next(
        (t for t, nodes in w.router.fib_events() if nodes == ["node2"] and t >= w.t0 - 0.01),
        None,
    )
    per_node: dict[str, dict[str, Any]] = {}
    for node, opened in spread.items():
        mine = [e for e in ended if e["node"] == node]
        resets = [e for e in mine if e["how"] == "reset"]
        after = [e["ended"] - moved for e in resets] if moved is not None else []
        per_node[node] = {
            "open": opened,
            "reset": len(resets),
            "ended_otherwise": len(mine) - len(resets),
            "reset_after_fib_change_s": [round(a, 3) for a in sorted(after)],
        }
    one = per_node.get("node1", {"open": 0, "reset": 0, "reset_after_fib_change_s": []})
    two = per_node.get("node2", {"open": 0, "reset": 0})
    delays = one["reset_after_fib_change_s"]
    how = (
        f"`announcer drain web` (lowered: MED 1000, 65535:0; withdrawn after {drain_seconds:g} s)"
        if tool == "announcer"
        else "`exabgp healthcheck`'s disable file created (re-announced with MED 500)"
    )
    spread_by_node = ", ".join(f"{node} {n}" for node, n in sorted(spread.items()))
    row.injected = f"{count} streams open ({spread_by_node}); then {how}"
    fill(row, w, events=("route",) if tool == "announcer" else ())
    if tool != "announcer":
        row.status = "(exabgp healthcheck has no status command)"
        row.log_line = ""
    lost_established = f"established streams: node1 {one['reset']} of {one['open']} reset"
    lost_established += f", node2 {two['reset']} of {two['open']}"
    row.lost_note = (row.lost_note + "; " if row.lost_note else "") + "new connections"
    row.expected = (
        "new connections: none lost. Established ones: node1's are reset the moment its path "
        "stops being best (the router re-hashes them to node2, which knows no such "
        "connection); node2's are untouched"
    )
    spread_text = f"{min(delays):.3f} to {max(delays):.3f} s after" if delays else "(no reset) vs"
    row.seen = (
        f"{lost_established}; node1's resets {spread_text} the FIB change; "
        f"{row.lost} of {row.requests} new connections lost; {finish and finish.get('open')} "
        "streams still open at the end"
    )
    row.figures = {"streams": per_node, "spread": spread, "fib_moved_at": moved}
    return judge(
        row,
        {
            "streams spread over both nodes": len(spread) == 2,
            "every node1 stream reset": one["reset"] == one["open"],
            "no node2 stream reset": two["reset"] == 0,
            # at the lowering, not at the withdraw drain_seconds later
            "node1's resets at the lowering": bool(delays) and max(delays) < drain_seconds - 1.0,
        },
    )


@scenario("12a", "drain with 64 long-lived connections (announcer drain)", quick=True)
def drain_streams(ctx: Ctx, sc: Scenario) -> Row:
    return _streams(ctx, sc, "announcer")


@scenario("12b", "the same with `exabgp healthcheck`'s disable file")
def disable_streams(ctx: Ctx, sc: Scenario) -> Row:
    return _streams(ctx, sc, "exa")
