"""Drive the daemon's loop deterministically: a fake clock, a runner that answers at
once, an output that records, and ExaBGP's acks fed as messages. No threads, no sleeps.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from announcer import config as cfg
from announcer.addresses import WatcherFactory
from announcer.checks import CheckResult, CheckSpec, OnDone
from announcer.daemon import Daemon
from announcer.log import Logger
from announcer.messages import StdinLine
from announcer.wire import OnFlushed

START = 1000.0


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedCheck:
    """A check whose answer the test sets; ``hang`` keeps its runs unanswered."""

    ok: bool = True
    hang: bool = False
    runs: int = 0
    name: str = "scripted"

    def run(self, timeout: float) -> CheckResult:
        self.runs += 1
        return CheckResult(self.ok, "ok" if self.ok else "scripted failure", 0.001)

    def close(self) -> None:
        pass


@dataclass
class AtOnce:
    """A runner that runs each check on the caller's thread (or holds it, when hung)."""

    held: list[tuple[ScriptedCheck, OnDone]] = field(default_factory=list)

    def submit(self, check: Any, timeout: float, on_done: OnDone, *, urgent: bool = False) -> None:
        if getattr(check, "hang", False):
            self.held.append((check, on_done))
            return
        on_done(check.run(timeout))

    def release(self) -> None:
        """The hung runs return at last."""
        held, self.held = self.held, []
        for check, on_done in held:
            on_done(check.run(0.0))

    def shutdown(self) -> None:
        pass


class Recorder:
    """Stands in for the output thread: keeps every command line, reports each write."""

    def __init__(self, on_flushed: OnFlushed) -> None:
        self.on_flushed = on_flushed
        self.lines: list[str] = []
        self.backlog = False

    def write(self, data: bytes) -> int:
        self.lines.extend(data.decode().splitlines())
        self.on_flushed(None)
        return len(data)

    def flush(self) -> None:
        pass

    def wait_flushed(self, timeout: float = 0.0) -> bool:
        return True


class Loop:
    """A daemon on a fake clock. ExaBGP answers every command with ``done`` unless
    ``acks`` is False."""

    def __init__(
        self,
        path: Path,
        checks: dict[str, ScriptedCheck],
        acks: bool = True,
        kernel: WatcherFactory | None = None,
    ) -> None:
        self.clock = Clock()
        self.runner = AtOnce()
        self.log = io.StringIO()
        self.acks = acks
        self.recorders: list[Recorder] = []
        self._acked = 0

        def factory(spec: CheckSpec) -> ScriptedCheck:
            return checks[getattr(spec, "path", "")]

        def output(on_flushed: OnFlushed) -> Recorder:
            self.recorders.append(Recorder(on_flushed))
            return self.recorders[-1]

        self.daemon = Daemon(
            cfg.load(path),
            out=io.BytesIO(),
            inp=io.BytesIO(),
            log=Logger(self.log, level="debug"),
            clock=self.clock,
            boottime=self.clock,
            check_factory=factory,
            runner=self.runner,
            output=output,
            kernel=kernel,
        )
        # The state file's write spacing counts CPU time, which the fake clock never lets
        # pass: none here unless a test sets a clock of its own.
        self.daemon.wire.cpu_clock = lambda: 0.0

    @property
    def sent(self) -> list[str]:
        return self.recorders[0].lines

    def turn(self) -> None:
        self.daemon.turn(wait=0.0)
        if self.acks:
            while self._acked < len(self.sent):
                self._acked += 1
                self.daemon.post(StdinLine("done\n"))
            self.daemon.turn(wait=0.0)

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` pass, turning the loop at every moment something is due."""
        end = self.clock.now + seconds
        self.turn()
        while (due := self.daemon.next_wakeup()) <= end:
            self.clock.now = max(self.clock.now, due)
            self.turn()
        self.clock.now = end
        self.turn()

    def status(self, service: str) -> dict[str, Any]:
        out: dict[str, Any] = self.daemon.snapshot()["services"][service]
        return out

    def run(self, fn: Callable[[], Any]) -> Any:
        """What the control socket does: a call on the loop's thread."""
        return fn()
