"""P6a: what the fleet guard adds between the decision to withdraw and the command.

Two real daemons (announcer.daemon.Daemon, its real check runner, clock and loop) in
this process, the same config but one has a ``[fleet]`` against the 3-member etcd, and
a peer node (the real fleet thread, :class:`FleetWorker`) keeps announcing so that the
guard allows the withdraw. A trial, on each daemon in turn: the check passes until
the route is announced, then fails; the time runs from the moment the check returns
the failure that takes the service down (``fall = 1``: the decision) to the moment the
withdraw command is handed to the output (a stand-in for ExaBGP's pipe that answers
``done`` to each command, as ExaBGP does). Without a fleet that is the state machine
and the wire; with one, also a question to the fleet thread, a read of the peers and
one etcd transaction, and the answer back through the loop's queue.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from announcer import config as cfg
from announcer import messages as msg
from announcer.checks import CheckResult, CheckSpec
from announcer.daemon import Daemon
from announcer.fleet.etcd import EtcdClient
from announcer.fleet.records import Keys, Record
from announcer.fleet.store import FleetStore
from announcer.fleet.worker import FleetWorker
from announcer.log import Logger
from announcer.wire import OnFlushed
from tests.bench.common import log, summary
from tests.unit.loop import Recorder

PREFIX = "192.0.2.10/32"


class FlipCheck:
    """A check the benchmark flips; stamps when it first returns a failure."""

    name = "flip"

    def __init__(self) -> None:
        self.ok = True
        self.failed_at: float | None = None

    def run(self, timeout: float) -> CheckResult:
        if self.ok:
            return CheckResult(True, "ok", 0.0)
        if self.failed_at is None:
            self.failed_at = time.monotonic()
        return CheckResult(False, "flipped", 0.0)

    def close(self) -> None:
        pass


class StampedOutput(Recorder):
    """Stands in for ExaBGP's pipe: stamps each command, answers ``done`` to each."""

    def __init__(self, on_flushed: OnFlushed) -> None:
        super().__init__(on_flushed)
        self.post: Callable[[msg.Message], None] | None = None
        self.stamped: list[tuple[float, str]] = []

    def write(self, data: bytes) -> int:
        now = time.monotonic()
        for line in data.decode().splitlines():
            self.stamped.append((now, line))
            if self.post is not None:
                self.post(msg.StdinLine("done\n"))
        return super().write(data)

    def last(self, verb: str, after: float) -> float | None:
        for at, line in reversed(self.stamped):
            if at >= after and line.startswith(verb):
                return at
        return None


class BenchNode:
    """One daemon on its own loop thread, its check and its output at hand."""

    def __init__(self, folder: Path, fleet: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "announcer.toml"
        path.write_text(
            f'state_dir = "{folder / "state"}"\ninclude = ""\n'
            "[defaults]\ninterval = 0.2\nfast_interval = 0.1\nrise = 1\nfall = 1\n"
            # No dampening: every trial is a flap on purpose.
            f"timeout = 0.1\ndrain_seconds = 1\n[defaults.dampening]\nchanges = 0\n{fleet}"
            f'[[service]]\nname = "web"\nprefixes = ["{PREFIX}"]\n'
            '[[service.checks]]\ntype = "file"\npath = "web"\n'
        )
        self.check = FlipCheck()
        self.outputs: list[StampedOutput] = []
        self.log = io.StringIO()

        def factory(spec: CheckSpec) -> FlipCheck:
            return self.check

        def output(on_flushed: OnFlushed) -> StampedOutput:
            self.outputs.append(StampedOutput(on_flushed))
            return self.outputs[-1]

        self.daemon = Daemon(
            cfg.load(path),
            out=io.BytesIO(),
            inp=io.BytesIO(),
            log=Logger(self.log),
            check_factory=factory,
            output=output,
        )
        self.out = self.outputs[0]
        self.out.post = self.daemon.post
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-daemon", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # Daemon.run's loop without its stdin reader (the output answers for ExaBGP).
        while not self._stop.is_set():
            self.daemon.turn(wait=0.05)

    def trial(self, timeout: float = 10.0) -> float:
        """One announce, then a failure: seconds from the decision to the withdraw written."""
        self.check.ok, self.check.failed_at = True, None
        _until(self._announced, timeout, "announced")
        time.sleep(random.uniform(0.3, 0.5))
        self.check.ok = False
        failed = _until(lambda: self.check.failed_at, timeout, "the failing check")
        withdrawn = _until(lambda: self.out.last("withdraw", failed), timeout, "the withdraw")
        return float(withdrawn - failed)

    def _announced(self) -> bool:
        return bool(self.out.stamped) and self.out.stamped[-1][1].startswith("announce")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.daemon.close()


def _until(value: Callable[[], Any], timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = value()
        if got is not None and got is not False:
            return got
        time.sleep(0.002)
    raise TimeoutError(f"P6a: {what} not seen within {timeout:g} s")


def run(urls: list[str], folder: Path, trials: int, out: dict[str, Any]) -> dict[str, Any]:
    """``trials`` trials on each daemon, alternating, in the same minutes."""
    endpoints = ", ".join(f'"{u}"' for u in urls)
    fleet = (
        f'[fleet]\nendpoints = [{endpoints}]\ngroup = "p6a"\nnode = "guarded"\nlease_seconds = 10\n'
    )
    # The peer that keeps announcing: the real fleet thread and lease, no daemon.
    peer_store = FleetStore(EtcdClient(urls), Keys("/announcer/", "p6a"), "peer", 10)
    peer = FleetWorker(peer_store, lambda m: None, Logger(io.StringIO())).start()
    peer.publish("web", Record(node="peer", route="ANNOUNCED", health="UP", announcing=True))
    nodes = {
        "off": BenchNode(folder / "off", ""),
        "on": BenchNode(folder / "on", fleet),
    }
    samples: dict[str, list[float]] = {"off": [], "on": []}
    out.update({"trials": trials, "etcd_members": len(urls)})
    try:
        for i in range(trials):
            for key in ("off", "on") if i % 2 == 0 else ("on", "off"):
                samples[key].append(nodes[key].trial())
        guard = nodes["on"].daemon.fleet
        out["guard_log_lines"] = sum(
            1 for line in nodes["on"].log.getvalue().splitlines() if "event=fleet_guard" in line
        )
        out["guard_reachable"] = guard.reachable if guard is not None else None
    finally:
        for node in nodes.values():
            node.close()
        peer.stop()
    off, on = summary(samples["off"]), summary(samples["on"])
    out.update({"off": off, "on": on, "samples": samples})
    if off.get("n") and on.get("n"):
        out["added_p50"] = on["p50"] - off["p50"]
        out["added_p99"] = on["p99"] - off["p99"]
    log(
        f"P6a: p99 off {off.get('p99', float('nan')) * 1000:.1f} ms, "
        f"on {on.get('p99', float('nan')) * 1000:.1f} ms"
    )
    return out
