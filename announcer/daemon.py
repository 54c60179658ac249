"""The daemon ExaBGP runs: a loop over the parts (docs/contributing.md has the map).

One thread owns all state: it runs an :mod:`asyncio` loop, the HTTP, TCP and DNS
checks' too (:mod:`announcer.runner`), so a result reaches the state machine without
changing threads. Other threads post to its :mod:`~announcer.inbox`: ExaBGP's lines
(ExaBGP blocks if nobody reads them), signals, the control socket's calls, command
checks' results. Each turn dispatches what arrived by type (:attr:`handlers`), runs
what is due (:mod:`~announcer.services`) and sends (:mod:`~announcer.wire`).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from announcer import fleet, status
from announcer import messages as msg
from announcer import reload as rl
from announcer import state as sm
from announcer.addresses import WatcherFactory
from announcer.checks import build_check
from announcer.config import Config
from announcer.drains import MAINTENANCE_POLL
from announcer.errors import ConfigError
from announcer.exabgp import AsyncOutput
from announcer.inbox import Inbox
from announcer.log import Logger
from announcer.rounds import OVERFLOW_WORKERS, CheckRounds, Runner
from announcer.runner import CheckRunner
from announcer.runtime import ServiceRuntime
from announcer.services import CheckFactory, Services
from announcer.watchdog import StallGuard, exit_on_stall
from announcer.wire import OnFlushed, Output, Wire

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics
    from announcer.notify import Notifier

Clock = Callable[[], float]


def _boottime() -> float:
    # Keeps counting through a suspend, unlike CLOCK_MONOTONIC, and is never stepped.
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Daemon:
    """Runs until stdin closes or a terminating signal arrives; see the module docstring.

    Tests drive it without threads or sleeps: :meth:`turn` with a fake ``clock``, a
    ``runner`` that answers at once and an ``output`` that records.
    """

    def __init__(
        self,
        config: Config,
        *,
        out: BinaryIO,
        inp: BinaryIO,
        log: Logger,
        clock: Clock = time.monotonic,
        check_factory: CheckFactory = build_check,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        stall_limit: float | None = None,
        boottime: Clock = _boottime,
        config_error: str | None = None,
        runner: Runner | None = None,
        output: Callable[[OnFlushed], Output] | None = None,
        kernel: WatcherFactory | None = None,
    ) -> None:
        """``config_error``: why the operator's file did not load (``config`` is then the
        last good one); ``kernel`` follows local addresses (None: the guard holds none)."""
        self.log, self.clock, self.notifier, self.stall_limit = log, clock, notifier, stall_limit
        self._inp, self.metrics, self._kernel = inp, metrics, kernel
        self.inbox = Inbox(asyncio.new_event_loop(), self._pump)  # run() runs its loop
        self.post, self.call = self.inbox.post, self.inbox.call
        runtimes: dict[str, ServiceRuntime] = {}

        def async_output(on_flushed: OnFlushed) -> Output:
            return AsyncOutput(out, on_flushed=on_flushed)

        sink = (output or async_output)(lambda err: self.post(msg.Flushed(err)))
        self.wire = wire = Wire(config.settings, sink, runtimes, log, metrics, clock, boottime)
        self._guard: StallGuard | None = None
        workers = config.settings.workers
        runner = runner or CheckRunner(workers, overflow=OVERFLOW_WORKERS, loop=self.inbox.loop)
        self.services = Services(runtimes, wire, runner, check_factory, log, metrics, self.post)
        self.handlers: dict[type[Any], Callable[[Any], object]] = {
            msg.CheckDone: self._on_check_done,
            msg.CheckEvent: self.services.check_event,
            msg.StdinLine: lambda m: self.wire.receive(m.line),
            msg.StdinClosed: lambda _: setattr(self, "stopping", "stdin closed"),
            msg.Flushed: lambda m: self.wire.on_flushed(m.error),
            msg.Signal: self._on_signal_msg,
            msg.Call: Inbox.answer,
            msg.LocalChanged: lambda m: self.services.local_changed(m.local, self.clock()),
            msg.HookDone: self.services.hooks.done,
        }
        """What the loop does with each kind of message."""
        self.started = now = clock()
        self.stopping: str | None = None
        self._ready, self._next_poll = False, 0.0
        for entry in config.services:
            self.services.add(entry.service, now)
        self.services.restore(now, boottime())
        self.configs = rl.ConfigKeeper(config, log, metrics, config_error)
        self.fleet = fleet.attach(self, config.settings.fleet)  # None without a [fleet]

    @property
    def config(self) -> Config:
        return self.configs.config

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Serve until told to stop; returns the process exit status."""
        args = (self._inp, self.post)
        threading.Thread(target=msg.read_lines, args=args, name="stdin", daemon=True).start()
        self._follow_kernel()
        prefixes = sum(len(rt.policy.prefixes) for rt in self.services)
        self.log.info(
            "start", services=len(self.services), prefixes=prefixes, acks=self.wire.writer.acks
        )
        if self.stall_limit is not None:
            self._guard = StallGuard(self.stall_limit, exit_on_stall(self.log)).start()
        self.inbox.loop.call_soon(self.inbox.turn)
        try:
            self.inbox.loop.run_forever()
            if self.inbox.failure is not None:
                raise self.inbox.failure
        finally:
            self.inbox.close()
            if self._guard is not None:
                self._guard.stop()
            self.close()
        self.log.info("stop", reason=self.stopping)
        return 0

    def _pump(self) -> None:
        """The running loop's turn: what arrived, then what is due; then the next timer."""
        self._handle_arrived()
        if self.stopping is not None:
            self.inbox.loop.stop()
            return
        if self._guard is not None:
            self._guard.beat()
        self._run_due()
        self.inbox.wake_at(self.next_wakeup())  # the loop's clock is monotonic too

    def turn(self, wait: float | None = 0.0) -> None:
        """One turn without the loop (tests): run what is due, send, then handle what
        arrived, waiting for it until the next timer (``wait=None``) or at most ``wait``."""
        self._run_due()
        until = self.next_wakeup() - self.clock()
        first = self.inbox.wait(max(0.0, until if wait is None else min(wait, until)))
        if first is not None:
            self._handle(first)
            self._handle_arrived()

    def _handle_arrived(self) -> None:
        """Whatever has arrived, until told to stop."""
        if self.stopping is not None:
            return  # a stop handled just before: the rest stays unread, as it always did
        for message in self.inbox.arrived():
            self._handle(message)
            if self.stopping is not None:
                break

    def _run_due(self) -> None:
        if not self._ready and not len(self.services):
            self._became_ready()  # nothing to check: no first round to wait for
        if self.notifier is not None:
            self.notifier.watchdog()
        now = self.clock()
        poll = now >= self._next_poll
        self.wire.on_timer(now)
        self.services.due(now, self.config.settings, poll)
        if poll:
            self.wire.watch()
            self._next_poll = now + MAINTENANCE_POLL
        self.wire.flush()

    def next_wakeup(self) -> float:
        """When the loop must next run what is due (while nothing arrives)."""
        due = (
            self._next_poll,
            self.services.next_wakeup(self.clock()),
            self.wire.writer.next_deadline(),
            self.wire.next_deadline(),
        )
        return min(t for t in due if t is not None)

    def _follow_kernel(self) -> None:
        """Follow local addresses once a service has the address guard, reading every one
        before the first round closes (pyroute2 costs 0.3 s of start and 14 MB: not without)."""
        if self._kernel is not None and any(rt.policy.guard for rt in self.services):
            self._kernel(lambda m: self.post(msg.LocalChanged(m))).start()
            self._kernel = None

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        self.wire.flush(now=True)
        if not self.wire.output.wait_flushed():
            self.log.error("exit_with_unsent_commands", waited=AsyncOutput.FLUSH_TIMEOUT)
        self.services.rounds.shutdown(list(self.services))
        if self.fleet is not None:
            self.fleet.close()

    # ------------------------------------------------------------ messages

    def _handle(self, message: msg.Message) -> None:
        self.handlers[type(message)](message)

    def _on_check_done(self, done: msg.CheckDone) -> None:
        rt = self.services.runtimes.get(done.service)
        if rt is None or not CheckRounds.collect(rt, done):
            return
        self.services.close_round(rt, self.clock())
        if not self._ready and self.services.first_rounds.done():
            self._became_ready()

    def _became_ready(self) -> None:
        self._ready = True
        if self.notifier is not None:
            self.notifier.ready(status.status_line(self.services.runtimes))

    def _on_signal_msg(self, sig: msg.Signal) -> None:
        if sig.signum != signal.SIGHUP:
            name = signal.Signals(sig.signum).name
            self.log.info("signal", signal=name, action="withdraw all and exit")
            self.withdraw_all()
            self.stopping = name
            return
        self.log.info("signal", signal="SIGHUP", action="reload")
        try:
            self.reload()
        except ConfigError:
            pass  # refused: reload() logged it, and status shows it
        except Exception as err:  # noqa: BLE001 - a signal must never end the process
            # Dying here means ExaBGP respawns us; five deaths in 64 s and it exits,
            # dropping every route. A reload that failed half-way is the lesser harm.
            self.configs.failed(err)

    # ------------------------------------------------------------ operator actions

    def drain(self, name: str, source: sm.DrainSource, reason: str = "", **how: Any) -> bool:
        """Add a drain source to a service; True if this started a drain (``how``: the
        fleet's ``force`` and ``queue``)."""
        return self.services.drain(name, source, reason, self.clock(), **how)

    def undrain(self, name: str, source: sm.DrainSource) -> bool:
        """Remove a drain source; True if the service is no longer drained."""
        return self.services.undrain(name, source, self.clock())

    def commit(self) -> str | None:
        """Save and send what the calls before decided; why the state file was not written."""
        return self.wire.commit()

    def check_now(self, names: list[str]) -> Callable[[], dict[str, Any] | None]:
        """Start a round of each service's checks now; a poll for their results (main thread)."""
        return self.services.check_now(names, self.clock())

    def withdraw_all(self) -> None:
        """Withdraw every prefix that may be on the wire (used on SIGTERM)."""
        self.services.shutdown(self.clock())
        self.wire.flush(now=True)

    def snapshot(self) -> dict[str, Any]:
        """A plain-data picture of every service, for status and tests."""
        now = self.clock()
        return status.snapshot(
            self.services.runtimes,
            now=now,
            uptime=now - self.started,
            neighbors=self.wire.neighbors,
            writer=self.wire.writer,
            notes=status.Notes(self.configs.error, self.wire.state_error, self.configs.note),
        )

    def reload(self) -> dict[str, Any]:
        """Re-read the config; apply the difference, or keep running on the old one.

        A file that does not load raises :class:`ConfigError` (also logged and shown
        in status as ``config_error``); the config running is kept.
        """
        new = self.configs.load()
        plan = rl.plan(self.config, new, self.services.runtimes)
        self.services.reconfigure(plan, self.clock())
        self.configs.applied(plan)
        self._follow_kernel()  # a service with the address guard may be new
        self.wire.dirty = True
        changes = plan.changes()
        self.log.info("reloaded", **{k: len(v) for k, v in changes.items()})
        return {"ok": True, "changes": changes, "note": self.configs.note}
