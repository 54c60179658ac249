"""announcer's story, live: failover, recovery and a graceful drain in a namespace lab.

Builds the lab of ``tests/lab`` (a BIRD router, two anycast nodes running ExaBGP
with the real ``announcer run`` as their API process, and a client, each in its
own network namespace), then walks a scripted story while a client loop keeps
making requests:

1. healthy   - both nodes announce: the router spreads clients over both (ECMP)
2. failure   - node1's web server stops: announcer withdraws, traffic moves to node2
3. recovery  - it comes back: re-announced after `rise` passing checks
4. drain     - ``announcer drain web`` on node1: lowered first, withdrawn later, no failures
5. undrain   - back to ECMP

The view shows what the router sees (BIRD's MED, local-pref, communities; which
nodes are in the kernel FIB), each controller's own view (``announcer status``)
and who answered the client. On a terminal it redraws in place; otherwise it
prints plain lines. Everything is torn down at the end, on Ctrl-C too.

Needs root (network namespaces); ``sudo make demo`` sets everything up and runs it.
Only addresses inside the lab's own namespaces are used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.lab import (  # noqa: E402 - needs the repository on sys.path first
    ANYCAST_V4,
    ANYCAST_V6,
    EXABGP_BINARIES,
    NODES,
    PREFIX_V4,
    PREFIX_V6,
    BirdPath,
    ClientLoop,
    ClientLoopStats,
    Lab,
    announcer_available,
    cleanup_stale,
    wait_until,
)
from tests.lab import controller as ctl  # noqa: E402
from tests.lab.watch import FibChange, FibWatcher, cut_by_rehash  # noqa: E402

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
FAMILIES = (
    ("v4", PREFIX_V4, f"http://{ANYCAST_V4}/"),
    ("v6", PREFIX_V6, f"http://[{ANYCAST_V6}]/"),
)
DRAIN_SECONDS = 4.0
HOLD = 2.5
"""Seconds each settled state stays on screen."""
REFRESH = 0.25
PLAIN_EVERY = 2.0
"""Without a terminal: a line whenever the picture changes, else every this many seconds."""
CONFIG = ctl.scenario_config(drain_seconds=DRAIN_SECONDS, dampening=True)


# --- what is needed ----------------------------------------------------------------------------


def missing_requirements(exabgp: str) -> list[str]:
    """What stops the demo from running here, each with what to do about it."""
    if os.geteuid() != 0:
        return [
            "the demo needs root: it creates network namespaces and veth links and runs "
            "BIRD and ExaBGP (BGP, port 179) inside them",
            "run it as:  sudo make demo   (sets everything up, then runs this script)",
        ]
    problems = []
    for tool in ("ip", "bird", "birdc"):
        if shutil.which(tool, path=SBIN) is None:
            problems.append(f"`{tool}` not found: run scripts/bootstrap.sh (sudo make demo does)")
    binary = EXABGP_BINARIES[exabgp]
    if not binary.exists():
        problems.append(f"no ExaBGP {exabgp} at {binary}: run scripts/bootstrap.sh")
    if not announcer_available():
        problems.append("`.venv/bin/announcer run` is not usable: run scripts/bootstrap.sh")
    return problems


# --- the picture -------------------------------------------------------------------------------


@dataclass
class Picture:
    """One sample of everything shown."""

    elapsed: float
    paths: dict[str, dict[str, BirdPath]] = field(default_factory=dict)
    """Per family (``v4``/``v6``): BIRD's path per node."""
    fib: dict[str, tuple[str, ...]] = field(default_factory=dict)
    controllers: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    failed: int = 0
    cut: int = 0


def route_cell(path: BirdPath | None, in_fib: bool) -> str:
    """How the router sees one node's path, e.g. ``med 100 lp 100 65001:100 65001:0:1 best FIB``.

    ``best`` is BIRD's best path; ``FIB`` means the router's kernel forwards to this
    node (both nodes are in the FIB while the paths are equal: ECMP).
    """
    if path is None:
        return "(no route)"
    words = [f"med {path.med}", f"lp {path.local_pref}"]
    words += [f"{a}:{b}" for a, b in path.communities]
    words += [f"{a}:{b}:{c}" for a, b, c in path.large_communities]
    if path.primary:
        words.append("best")
    if in_fib:
        words.append("FIB")
    return " ".join(words)


def controller_cell(status: dict[str, Any] | None) -> str:
    """The controller's own view of ``web``: health, route and a drain countdown."""
    if status is None:
        return "?"
    svc = status.get("services", {}).get(ctl.SERVICE)
    if not isinstance(svc, dict):
        return "?"
    text = f"{svc.get('health')} {svc.get('route')}"
    left = svc.get("drain_left")
    if svc.get("route") == "DRAINING" and isinstance(left, int | float):
        text += f" {left:.1f}s"
    return text


def has_controller_view(picture: Picture) -> bool:
    """True once a controller answers ``status`` on its control socket."""
    return any(status is not None for status in picture.controllers.values())


class Display:
    """Captions (kept) and the live picture (redrawn on a terminal, plain lines otherwise)."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._lock = threading.Lock()
        self._drawn = 0
        self._last: Picture | None = None
        self._last_key: tuple[object, ...] | None = None
        self._last_plain = 0.0

    def caption(self, text: str) -> None:
        """A line that stays: what is happening and why it matters."""
        self._keep(f"\n>>> {text}")

    def note(self, text: str) -> None:
        """A result line under the current caption."""
        self._keep(f"    {text}")

    def _keep(self, text: str) -> None:
        with self._lock:
            self._erase()
            self.out.write(text + "\n")
            if self.tty and self._last is not None:
                self._draw_table(self._last)
            self.out.flush()

    def update(self, picture: Picture) -> None:
        """Show a new sample."""
        with self._lock:
            self._last = picture
            if self.tty:
                self._erase()
                self._draw_table(picture)
            else:
                key = self._key(picture)
                if key != self._last_key or picture.elapsed - self._last_plain >= PLAIN_EVERY:
                    self.out.write(self._plain_line(picture) + "\n")
                    self._last_key, self._last_plain = key, picture.elapsed
            self.out.flush()

    def finish(self) -> None:
        """Leave the last table on screen; later lines go below it."""
        with self._lock:
            self._drawn = 0
            self._last = None

    def _key(self, p: Picture) -> tuple[object, ...]:
        cells = [
            route_cell(p.paths[f].get(n), n in p.fib[f]) for f, _, _ in FAMILIES for n in NODES
        ]
        ctls = [controller_cell(p.controllers.get(n)).rsplit(" ", 1)[0] for n in NODES]
        return (*cells, *ctls, p.failed)

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
        self._drawn = 0

    def _draw_table(self, p: Picture) -> None:
        show_ctl = has_controller_view(p)
        head = f"  {'node':<6} {'prefix':<17} {'as the router sees it':<44}"
        if show_ctl:
            head += f" {'announcer status':<22}"
        lines = ["", head + " answered"]
        for node in NODES:
            for i, (fam, prefix, _) in enumerate(FAMILIES):
                row = f"  {node if i == 0 else '':<6} {prefix:<17}"
                row += f" {route_cell(p.paths[fam].get(node), node in p.fib[fam]):<44}"
                if show_ctl:
                    row += f" {controller_cell(p.controllers.get(node)) if i == 0 else '':<22}"
                row += f" {p.answered.get(node, 0):>8}" if i == 0 else ""
                lines.append(row.rstrip())
        lines.append(
            f"  client: {p.requests} requests, {p.failed} failed"
            + (f", {p.cut} cut in flight at a route change" if p.cut else "")
            + f"   (t={p.elapsed:.1f}s)"
        )
        self.out.write("\n".join(lines) + "\n")
        self._drawn = len(lines)

    def _plain_line(self, p: Picture) -> str:
        lines = []
        for i, node in enumerate(NODES):
            head = f"  [{p.elapsed:5.1f}s] " if i == 0 else " " * 11
            row = f"{head}{node}"
            if has_controller_view(p):
                row += f" {controller_cell(p.controllers.get(node)):<22}"
            for fam, _, _ in FAMILIES:
                row += f" | {fam} {route_cell(p.paths[fam].get(node), node in p.fib[fam]):<36}"
            lines.append(row.rstrip())
        answered = ", ".join(f"{n} {p.answered.get(n, 0)}" for n in NODES)
        client = f"{' ' * 11}client: answered {answered}; failed {p.failed}"
        if p.cut:
            client += f", {p.cut} cut in flight at a route change"
        lines.append(client)
        return "\n".join(lines)


class Monitor:
    """Samples the lab every :data:`REFRESH` seconds and hands each picture to the display."""

    def __init__(
        self, lab: Lab, loops: Sequence[ClientLoop], fib: FibWatcher, display: Display
    ) -> None:
        self.lab = lab
        self.loops = loops
        self.fib = fib
        self.display = display
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def stats(self) -> ClientLoopStats:
        """Every request of every client loop so far."""
        return ClientLoopStats.of([r for loop in self.loops for r in loop.stats().results])

    def sample(self) -> Picture:
        picture = Picture(elapsed=time.monotonic() - self.started)
        for fam, prefix, _ in FAMILIES:
            picture.paths[fam] = self.lab.bird_paths_by_node(prefix)
            picture.fib[fam] = self.fib.current(prefix)
        for node in NODES:
            picture.controllers[node] = ctl.status(self.lab, node)
        stats = self.stats()
        changes = self.fib.changes()
        cut = sum(1 for r in stats.errors if cut_by_rehash(r, changes))
        picture.answered = dict(stats.per_node)
        picture.requests, picture.failed, picture.cut = stats.total, stats.failures - cut, cut
        return picture

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.display.update(self.sample())
            except Exception as exc:  # noqa: BLE001 - a failed sample must not end the view
                self.display.note(f"(view: {exc!r})")
            self._stop.wait(REFRESH)


# --- the story ---------------------------------------------------------------------------------


class Story:
    """The scripted steps, with their captions and the figures they show."""

    def __init__(self, lab: Lab, display: Display, monitor: Monitor, fib: FibWatcher) -> None:
        self.lab = lab
        self.display = display
        self.monitor = monitor
        self.fib = fib
        self.failover: dict[str, float] = {}
        self.failure_window = (0.0, 0.0)
        """Wall-clock start and end of the unplanned failure's detection window."""

    def hold(self, seconds: float = HOLD) -> None:
        """Let the viewer look (the view keeps refreshing meanwhile)."""
        time.sleep(seconds)

    def requests_since(self, wall: float) -> ClientLoopStats:
        return self.monitor.stats().between(wall, float("inf"))

    def wait_requests(self, wall: float, count: int) -> None:
        wait_until(lambda: self.requests_since(wall).total >= count, 20.0, what="client requests")

    def healthy(self) -> None:
        self.display.caption(
            "HEALTHY: both nodes pass their checks and announce the anycast prefixes with MED 100. "
            "The router installs one ECMP route over both, so clients are spread across them."
        )
        since = time.time()
        wait_until(
            lambda: set(self.requests_since(since).per_node) == set(NODES),
            15.0,
            what="answers from both nodes",
        )
        self.hold()

    def failure(self) -> None:
        self.display.caption(
            "FAILURE: node1's web server is killed. announcer on node1 sees `fall`=2 failed checks "
            "and withdraws; only then does the router stop sending clients there."
        )
        stopped_wall, stopped = time.time(), time.monotonic()
        mark = self.fib.mark()
        self.lab.stop_http("node1")
        moved: dict[str, FibChange] = {}
        for fam, prefix, _ in FAMILIES:
            moved[fam] = self.fib.wait_for(prefix, ["node2"], 10.0, after=mark)
            self.failover[fam] = moved[fam].seen - stopped
        gone = max(c.first_after for c in moved.values())
        self.failure_window = (stopped_wall, gone)
        self.wait_requests(gone, 50)
        lost = ClientLoopStats.of(
            [
                r
                for r in self.monitor.stats().results
                if r.started < gone and r.started + r.elapsed >= stopped_wall
            ]
        )
        after = self.requests_since(gone)
        self.display.note(
            "node1's path left the router's FIB after "
            + " / ".join(f"{s:.3f} s ({f})" for f, s in self.failover.items())
            + f"; {lost.failures} requests failed in that window (an unplanned failure "
            f"costs that much), {after.failures} of {after.total} since"
        )
        self.hold()

    def recovery(self) -> None:
        self.display.caption(
            "RECOVERY: node1's web server is back. After `rise`=2 passing checks announcer "
            "announces again and the router returns to ECMP."
        )
        started = time.monotonic()
        mark = self.fib.mark()
        self.lab.start_http("node1")
        for _, prefix, _ in FAMILIES:
            self.fib.wait_for(prefix, NODES, 10.0, after=mark)
        since = time.time()
        wait_until(
            lambda: set(self.requests_since(since).per_node) == set(NODES), 15.0, what="ECMP"
        )
        self.display.note(f"back in the FIB {time.monotonic() - started:.2f} s after the restart")
        self.hold()

    def drain(self) -> None:
        via = "announcer drain web" if ctl.control_ready(self.lab, "node1") else "maintenance file"
        self.display.caption(
            f"DRAIN node1 ({via}) for planned work: the route is first LOWERED (MED 1000 + "
            "GRACEFUL_SHUTDOWN 65535:0, which the router turns into local-pref 0), so the "
            "router moves clients to node2 while node1 still answers ..."
        )
        started_wall = time.time()
        ctl.drain(self.lab, "node1", reason="demo: planned work")
        for fam, prefix, _ in FAMILIES:
            self.lab.wait_paths(
                prefix,
                lambda paths: "node1" in paths and paths["node1"].graceful_shutdown,
                10.0,
                what=f"node1 lowered ({fam})",
            )
            self.lab.wait_fib_nodes(prefix, ["node2"], 10.0)
        self.display.note(f"... and only after drain_seconds ({DRAIN_SECONDS:g} s) is it withdrawn")
        for _, prefix, _ in FAMILIES:
            self.lab.wait_path_nodes(prefix, ["node2"], DRAIN_SECONDS + 10.0)
        stats = self.requests_since(started_wall)
        cut = sum(1 for r in stats.errors if cut_by_rehash(r, self.fib.changes()))
        text = f"node1 withdrawn; failed requests during the drain: {stats.failures - cut}"
        text += f" of {stats.total}"
        if cut:
            text += (
                f" ({cut} more cut in flight at the instant the router re-hashed: "
                "routing cannot move an open connection)"
            )
        self.display.note(text)
        self.hold()

    def undrain(self) -> None:
        self.display.caption(
            "UNDRAIN: the work is done; node1 announces normally again and the router is back "
            "to ECMP."
        )
        mark = self.fib.mark()
        ctl.undrain(self.lab, "node1")
        for _, prefix, _ in FAMILIES:
            self.fib.wait_for(prefix, NODES, 10.0, after=mark)
        since = time.time()
        wait_until(
            lambda: set(self.requests_since(since).per_node) == set(NODES), 15.0, what="ECMP"
        )
        self.hold()


def run(exabgp: str, out: TextIO, tty: bool) -> int:
    """Build the lab, tell the story, tear down; the exit status."""
    began = time.monotonic()
    cleanup_stale()
    lab = Lab(exabgp)
    story: Story | None = None
    monitor: Monitor | None = None
    interrupted = False
    display = Display(out, tty)
    try:
        display.caption(
            f"Building the lab {lab.id}: a BIRD router (AS 65000), node1 and node2 (AS 65001) "
            f"running ExaBGP {lab.exabgp_version} with announcer as its API process, and a "
            "client, each in its own network namespace."
        )
        lab.start({node: ctl.controller_argv(lab, node, CONFIG) for node in NODES})
        for _, prefix, _ in FAMILIES:
            lab.wait_fib_nodes(prefix, NODES, 15.0)
        timing = CONFIG["defaults"]
        display.note(
            f"ready in {time.monotonic() - began:.1f} s; checks every {timing['interval']} s "
            f"({timing['fast_interval']} s while changing), rise {timing['rise']}, "
            f"fall {timing['fall']}, drain_seconds {timing['drain_seconds']}"
        )
        fib = FibWatcher(lab, [prefix for _, prefix, _ in FAMILIES], max_seconds=300).start()
        loops = [
            lab.client_loop(url, timeout=1.0, pause=0.01, max_seconds=300).start()
            for _, _, url in FAMILIES
        ]
        monitor = Monitor(lab, loops, fib, display).start()
        story = Story(lab, display, monitor, fib)
        story.healthy()
        story.failure()
        story.recovery()
        story.drain()
        story.undrain()
        stats = monitor.stats()
        monitor.stop()
        display.update(monitor.sample())
        display.finish()
        changes = fib.stop()
        start, end = story.failure_window
        # in flight when the server was killed, or sent to node1 before its path left
        in_window = [r for r in stats.errors if r.started < end and r.started + r.elapsed >= start]
        cut = [r for r in stats.errors if r not in in_window and cut_by_rehash(r, changes)]
        elsewhere = stats.failures - len(in_window) - len(cut)
        display.caption(
            "SUMMARY: failover "
            + ", ".join(f"{f} {s:.3f} s" for f, s in story.failover.items())
            + f"; {stats.total} requests, answered "
            + ", ".join(f"{n} {stats.per_node.get(n, 0)}" for n in NODES)
            + f"; failed: {len(in_window)} in the unplanned failure's detection window, "
            + f"{elsewhere} anywhere else"
            + (f" ({len(cut)} cut in flight at a route change)" if cut else "")
        )
    except KeyboardInterrupt:
        interrupted = True
        display.caption("Interrupted: tearing the lab down.")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the teardown
            signal.signal(sig, signal.SIG_IGN)
        if monitor is not None:
            monitor.stop()
        display.finish()
        display.caption("TEARDOWN: stopping every process and deleting the namespaces.")
        lab.stop()  # raises if anything is left behind
        display.note(
            f"lab {lab.id} removed, nothing left behind; total {time.monotonic() - began:.1f} s"
        )
    return 130 if interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--exabgp", choices=sorted(EXABGP_BINARIES), default="5.0", help="ExaBGP version to run"
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain lines even on a terminal (no redrawing)"
    )
    args = parser.parse_args(argv)
    problems = missing_requirements(args.exabgp)
    if problems:
        for problem in problems:
            sys.stderr.write(f"demo: {problem}\n")
        return 1

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    tty = sys.stdout.isatty() and not args.plain
    return run(args.exabgp, sys.stdout, tty)


if __name__ == "__main__":
    raise SystemExit(main())
