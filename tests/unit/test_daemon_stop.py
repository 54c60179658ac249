"""The daemon's stop with the real check runner on its loop: what is still running then."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

from announcer import config as cfg
from announcer import messages
from announcer.checks import CheckResult, CheckSpec
from announcer.daemon import Daemon
from announcer.log import Logger
from announcer.wire import OnFlushed
from tests.unit.loop import Recorder
from tests.unit.test_loop import config, service


class Connecting:
    """A loop check whose run never ends (a connect that hangs): it runs as a Task. Once
    begun it closes ExaBGP's end of stdin; when cancelled it posts a message, as an output
    flush or a signal may arrive while the runner winds the loop down, and takes a moment
    to end."""

    name = "connecting"

    def __init__(self, stdin_writer: int) -> None:
        self.stdin_writer = stdin_writer
        self.daemon: Daemon | None = None
        self.cancelled = False

    async def arun(self, timeout: float) -> CheckResult:
        os.close(self.stdin_writer)  # stdin ends: the daemon stops while this runs
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled = True
            assert self.daemon is not None
            self.daemon.post(messages.StdinLine(b"done"))
            await asyncio.sleep(0.01)  # its clean-up takes a moment (a TLS close, say)
            raise
        raise AssertionError("not reached")

    def run(self, timeout: float) -> CheckResult:
        raise AssertionError("a loop check runs on the loop")

    def close(self) -> None:
        pass


def test_a_message_while_the_runner_winds_down_does_not_break_the_stop(tmp_path: Path) -> None:
    """A check still running when stdin closes is cancelled as the runner winds the loop
    down; a message posted meanwhile gets no turn (the daemon has stopped), so the stop
    completes: run() returns 0 after closing everything, not with asyncio's "Event loop
    stopped before Future completed"."""
    reader, writer = os.pipe()
    check = Connecting(writer)
    recorders: list[Recorder] = []

    def output(on_flushed: OnFlushed) -> Recorder:
        recorders.append(Recorder(on_flushed))
        return recorders[-1]

    def factory(spec: CheckSpec) -> Connecting:
        return check

    with os.fdopen(reader, "rb") as stdin:
        daemon = Daemon(
            cfg.load(config(tmp_path, service("web", "192.0.2.10/32", "web"))),
            out=io.BytesIO(),
            inp=stdin,
            log=Logger(io.StringIO()),
            check_factory=factory,
            output=output,
        )
        check.daemon = daemon
        assert daemon.run() == 0
    assert check.cancelled
    assert daemon.stopping == "stdin closed"
