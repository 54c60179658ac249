"""The daemon ExaBGP runs: schedules checks, feeds the state machine, writes effects.

One main thread owns all state. Everything else talks to it through one queue:

* check runs happen in a bounded thread pool and post their results;
* a reader thread drains stdin (ExaBGP blocks if nobody reads it) and posts lines;
* signal handlers post signals (``SimpleQueue.put`` is safe to call from them).

The main loop waits on the queue until the next thing is due (a check round, a
round's deadline, a drain deadline, a maintenance-file poll), handles what
arrived, and hands every effect to the one :class:`~announcer.exabgp.Writer`.

A check that ignores its timeout cannot stall anything: its round is closed as
failed at the round's deadline, and that check is not started again until the
stuck run returns (each later round counts it as failed meanwhile), so a hung
check holds at most one worker.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO

from announcer import persist, restore
from announcer import state as sm
from announcer.attributes import to_json as attributes_json
from announcer.checks import Check, CheckResult, CheckSpec, build_check
from announcer.config import LAST_GOOD_FILE, Config, Service, load, save_last_good
from announcer.connections import count_established
from announcer.errors import CommandError, ConfigError, IllegalTransition
from announcer.exabgp import (
    AsyncOutput,
    MessageKind,
    Nudged,
    Rejected,
    Target,
    Writer,
    render_effect,
)
from announcer.log import Logger
from announcer.runner import CheckRunner
from announcer.watchdog import StallGuard, exit_on_stall

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics
    from announcer.notify import Notifier

Clock = Callable[[], float]
CheckFactory = Callable[[CheckSpec], Check]


def _boottime() -> float:
    # Keeps counting through a suspend, unlike CLOCK_MONOTONIC, and is never stepped.
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# How long after its timeout a check may take before its round is closed without it.
GRACE = 0.5
QUICK_CHECK = 0.05
"""Seconds under which a check's last run counts as quick (see :meth:`Workers.submit`)."""
OVERFLOW_WORKERS = 1024
"""Check threads at most while checks queue up behind ones that sit out their timeouts
(``workers`` threads otherwise; see :mod:`announcer.workers`): a service's check must not
wait, and fail, because a thousand others time out at once."""
MAINTENANCE_POLL = 0.5
IDLE_POLL = 1.0
"""Seconds between connection counts of a draining service (the first one after this too)."""


@dataclass
class Round:
    """One run of all of a service's checks."""

    number: int
    started: float
    deadline: float
    results: list[CheckResult | None]


@dataclass
class ServiceRuntime:
    """A service as the daemon runs it."""

    service: Service
    policy: sm.Policy
    checks: list[Check]
    state: sm.ServiceState
    next_run: float
    round: Round | None = None
    rounds: int = 0
    busy: list[bool] = field(default_factory=list)
    """Per check: a run is still executing (maybe past its round)."""
    drain_sources: set[sm.DrainSource] = field(default_factory=set)
    last_ok: bool | None = None
    last_reason: str = ""
    last_duration: float = 0.0
    last_results: list[CheckResult] = field(default_factory=list)
    transitions: int = 0
    check_failures: int = 0
    connections: int | None = None
    next_idle_poll: float | None = None
    retiring: bool = False
    """Removed from the config by a reload: drained, then dropped once withdrawn."""

    @property
    def interval(self) -> float:
        fast = self.state.health in (sm.Health.INIT, sm.Health.RISING, sm.Health.FALLING)
        return self.service.fast_interval if fast else self.service.interval


@dataclass(frozen=True)
class _CheckDone:
    service: str
    round: int
    index: int
    result: CheckResult


@dataclass(frozen=True)
class _StdinLine:
    line: str


@dataclass(frozen=True)
class _StdinClosed:
    pass


@dataclass(frozen=True)
class _Flushed:
    """The output thread wrote everything queued (or failed to)."""

    error: OSError | None


@dataclass(frozen=True)
class _Signal:
    signum: int


@dataclass(frozen=True)
class _Call:
    """Run a function on the main thread (used by the control socket and tests)."""

    fn: Callable[[], Any]
    reply: queue.SimpleQueue[tuple[bool, Any]]


_Msg = _CheckDone | _StdinLine | _StdinClosed | _Signal | _Call | _Flushed


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, None if it is not there (or unreadable):
    any write or replacement by someone else changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def combine(require: str | int, results: list[CheckResult]) -> tuple[bool, str]:
    """Apply a service's ``require`` rule to its checks' results."""
    passed = sum(1 for r in results if r.ok)
    if require == "all":
        ok = passed == len(results)
    elif require == "any":
        ok = passed >= 1
    else:
        ok = passed >= int(require)
    failed = [r.reason for r in results if not r.ok]
    if ok:
        reason = results[0].reason if len(results) == 1 else f"{passed}/{len(results)} checks ok"
    else:
        reason = "; ".join(failed) if failed else "no check passed"
    return ok, reason


class Daemon:
    """Runs until stdin closes or a terminating signal arrives; see the module docstring."""

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
    ) -> None:
        """``config_error``: why the operator's file did not load at start; ``config`` is
        then the last good one (:func:`announcer.config.load_last_good`), run until a
        reload of the file succeeds."""
        self.config = config
        self.notifier = notifier
        self.metrics = metrics
        self.stall_limit = stall_limit
        self._ready = False
        self.log = log
        self.clock = clock
        self._inp = inp
        self._queue: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self._pool = CheckRunner(config.settings.workers, overflow=OVERFLOW_WORKERS)
        self._check_factory = check_factory
        s = config.settings
        self.target = Target(
            neighbors=s.neighbors, next_hop=s.next_hop, local_as=s.local_as, next_hop6=s.next_hop6
        )
        self.output = AsyncOutput(out, on_flushed=lambda err: self._queue.put(_Flushed(err)))
        self.writer = Writer(
            self.output,
            acks=s.acks,
            on_rejected=self._rejected,
            clock=clock,
            writing=lambda: self.output.backlog,
        )
        self._inflight: set[str] = set()
        self._write_error_logged = False
        self.services: dict[str, ServiceRuntime] = {}
        self.neighbors: dict[str, str] = {}
        self.started = clock()
        self._stopping: str | None = None
        self._next_maintenance_poll = 0.0
        self._timers: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._retiring = False
        self._dirty = False
        self._deferred: list[tuple[str, tuple[str, ...], list[str]]] = []
        self._last_good_note: str | None = None
        self.config_error: str | None = None
        if config_error is not None:
            self._last_good_note = (
                f"running on the last good config, kept in {s.state_dir / LAST_GOOD_FILE}"
            )
            self.config_error = f"{config_error}\n{self._last_good_note}"
        self.reload_note: str | None = None
        self.identity = persist.parent_identity()
        self._boot_id = persist.boot_id()
        self._boottime = boottime
        self.state_error: str | None = None
        """Why the last write of the state file failed; None when it succeeded."""
        self._state_written: tuple[int, int, int] | None = None
        """The state file as our last write left it (see :meth:`_check_state_file`)."""
        now = self.clock()
        for entry in config.services:
            self._add(self._runtime(entry.service, now))
        self._restore(now)
        if metrics is not None:
            for name, rt in self.services.items():
                metrics.set_state(name, rt.state.health.value, sm.shown_route(rt.state))
            metrics.config_ok(config_error is None)
        if config_error is None:
            self._keep_last_good(config)

    # ------------------------------------------------------------ setup

    def _runtime(self, service: Service, now: float) -> ServiceRuntime:
        checks = [self._check_factory(spec) for spec in service.checks]
        return ServiceRuntime(
            service=service,
            policy=service.policy(),
            checks=checks,
            state=sm.initial(now),
            next_run=now,
            busy=[False] * len(checks),
        )

    def _add(self, rt: ServiceRuntime) -> None:
        self.services[rt.service.name] = rt
        self._at(rt.next_run, "run", rt.service.name)

    def _at(self, when: float, kind: str, name: str) -> None:
        """Arm a timer. Timers are checked against the runtime when they fire, so a
        superseded one is simply skipped: nothing is ever cancelled."""
        heapq.heappush(self._timers, (when, next(self._seq), kind, name))

    def _restore(self, now: float) -> None:
        """Take over from the previous run (see :mod:`announcer.restore`)."""
        readable = True
        try:
            snap = persist.read(self.config.settings.state_dir)
        except ValueError as err:
            self.log.error(
                "state_unreadable",
                why=str(err),
                action="every configured prefix may be announced: asserting the wire "
                "once the first checks decide",
            )
            snap, readable = None, False
        clocks = restore.Clocks(
            now=now, boottime=self._boottime(), wall=time.time(), boot_id=self._boot_id
        )
        policies = {name: rt.policy for name, rt in self.services.items()}
        plan = restore.plan(
            snap, readable=readable, identity=self.identity, policies=policies, clocks=clocks
        )
        for name, restored in plan.services.items():
            rt = self.services[name]
            if restored.drained:
                rt.drain_sources.add(sm.DrainSource.OPERATOR)
            rt.state = sm.initial(now, restored)
            deadline = sm.next_deadline(rt.state)
            if deadline is not None:
                self._at(deadline, "state", name)
            if rt.state.route is sm.Route.DRAINING:
                rt.next_idle_poll = now + IDLE_POLL
                self._at(rt.next_idle_poll, "idle", name)
            self.log.info(
                "restore",
                service=name,
                route=sm.shown_route(rt.state),
                believed=rt.state.route.value,
                drained=rt.state.drained,
            )
        if plan.withdraw:
            self.log.info("restore", withdraw=len(plan.withdraw), why="no longer configured")
            self._apply("restore", sm.Withdraw(plan.withdraw))
        self._dirty = True
        self.log.info("restored", wire=plan.wire, same_exabgp=plan.wire == "same_exabgp")

    def _save_state(self) -> None:
        self._dirty = False
        inflight = tuple(sorted(self._inflight))
        wall, boottime, now = time.time(), self._boottime(), self.clock()
        services: dict[str, persist.ServiceRecord] = {}
        for name, rt in self.services.items():
            st = rt.state
            left = None if st.drain_deadline is None else st.drain_deadline - now
            services[name] = persist.ServiceRecord(
                route=st.route,
                prefixes=st.wire_prefixes,
                attributes=st.wire_attributes,
                operator_drain=sm.DrainSource.OPERATOR in rt.drain_sources,
                drain_reason=st.drain_reason,
                drain_deadline=None if left is None else wall + left,
                drain_boottime=None if left is None else boottime + left,
            )
        snapshot = persist.Snapshot(
            exabgp=self.identity, services=services, inflight=inflight, boot_id=self._boot_id
        )
        try:
            persist.write(self.config.settings.state_dir, snapshot)
        except OSError as err:
            why = f"cannot write {self.config.settings.state_dir / persist.STATE_FILE}: {err}"
            if why != self.state_error:
                self.log.error("state_write_failed", why=why)
            self.state_error = why
        else:
            if self.state_error is not None:
                self.log.info("state_write_ok", after=self.state_error)
            self.state_error = None
            self._state_written = _file_identity(
                self.config.settings.state_dir / persist.STATE_FILE
            )
        if self.metrics is not None:
            self.metrics.state_saved(self.state_error is None)

    def _check_state_file(self) -> None:
        """Write the state file again if anything else changed or removed it since our last
        write (truncated, corrupted, replaced, deleted): the controller ExaBGP starts after us
        reads it, and a drain missing from it would be announced again."""
        if self._state_written is None or self._dirty:
            return  # never written (or failing: status shows state_error), or about to be
        path = self.config.settings.state_dir / persist.STATE_FILE
        found = _file_identity(path)
        if found == self._state_written:
            return
        self.log.error(
            "state_file_changed" if found is not None else "state_file_missing",
            path=str(path),
            action="written again from memory (drains included)",
        )
        self._dirty = True

    def commit(self) -> str | None:
        """Record and send what the calls before decided, now (a control request's
        answer must say whether its drain was saved); returns why the state file
        could not be written, or None."""
        self._dirty = True
        self._flush()
        return self.state_error

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        """Serve until told to stop; returns the process exit status."""
        reader = threading.Thread(target=self._read_stdin, name="stdin", daemon=True)
        reader.start()
        self.log.info(
            "start",
            services=len(self.services),
            prefixes=sum(len(r.policy.prefixes) for r in self.services.values()),
            acks=self.writer.acks,
        )
        if not self.services:
            # Nothing to check, so no first round to wait for: ready now (a Type=notify
            # unit with the shipped, empty config must not time out).
            self._ready = True
            if self.notifier is not None:
                self.notifier.ready(self._status_line())
        guard = None
        if self.stall_limit is not None:
            guard = StallGuard(self.stall_limit, exit_on_stall(self.log)).start()
        try:
            while self._stopping is None:
                if guard is not None:
                    guard.beat()
                if self.notifier is not None:
                    self.notifier.watchdog()
                now = self.clock()
                self._due(now)
                self._flush()
                wait = max(0.0, self._next_wakeup() - self.clock())
                try:
                    msg = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue
                self._handle(msg)
                # Handle whatever else already arrived before scheduling again.
                while self._stopping is None:
                    try:
                        self._handle(self._queue.get_nowait())
                    except queue.Empty:
                        break
        finally:
            if guard is not None:
                guard.stop()
            if self.notifier is not None:
                self.notifier.stopping()
            self._flush()
            if not self.output.wait_flushed():
                self.log.error("exit_with_unsent_commands", waited=AsyncOutput.FLUSH_TIMEOUT)
            self._pool.shutdown()
            for rt in self.services.values():
                for check in rt.checks:
                    check.close()
        self.log.info("stop", reason=self._stopping)
        return 0

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the main thread and return its result (from any other thread)."""
        reply: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._queue.put(_Call(fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._queue.put(_Signal(signum))

    def _read_stdin(self) -> None:
        try:
            for raw in iter(self._inp.readline, b""):
                self._queue.put(_StdinLine(raw.decode(errors="replace")))
        except (OSError, ValueError):
            pass
        self._queue.put(_StdinClosed())

    def _stale(self, when: float, kind: str, name: str) -> bool:
        """Whether a timer can no longer do anything. Every change of what a timer watches
        arms a new timer, so a stale one never becomes live again and can be dropped."""
        rt = self.services.get(name)
        if rt is None:
            return True
        if kind == "run":
            return rt.next_run != when or rt.round is not None
        if kind == "deadline":
            return rt.round is None or rt.round.deadline != when
        if kind == "state":
            return sm.next_deadline(rt.state) != when
        return rt.next_idle_poll != when

    def _next_wakeup(self) -> float:
        # Drop stale timers at the head (a round that closed early leaves its deadline
        # behind): waking up for them was a third of the wake-ups of a fast check.
        timers = self._timers
        while timers and self._stale(timers[0][0], timers[0][2], timers[0][3]):
            heapq.heappop(timers)
        times = [self._next_maintenance_poll]
        # While the output thread still writes, its end (a _Flushed message) wakes us.
        writer_due = self.writer.next_deadline()
        if writer_due is not None:
            times.append(writer_due)
        if self._timers:
            times.append(self._timers[0][0])
        return min(times)

    def _due(self, now: float) -> None:
        if self._retiring:
            self._drop_retired()
        for outcome in self.writer.on_timer(now):
            if isinstance(outcome, Nudged):
                self.log.warning(
                    "exabgp_nudge",
                    service=outcome.again.context,
                    command=outcome.again.command,
                    silent_for=round(outcome.silent_for, 3),
                    pending=outcome.pending,
                )
                continue
            for gone in outcome.gone:
                self.log.error(
                    "exabgp_no_answer",
                    service=gone.context,
                    command=gone.command,
                    after=outcome.after,
                )
        if now >= self._next_maintenance_poll:
            self._poll_maintenance(now)
            self._check_state_file()
            self._next_maintenance_poll = now + MAINTENANCE_POLL
        while self._timers and self._timers[0][0] <= now:
            when, _, kind, name = heapq.heappop(self._timers)
            if self._stale(when, kind, name):
                continue  # superseded, or a round still open (it re-arms "run" when it closes)
            rt = self.services[name]
            if kind == "run":
                self._start_round(rt, now)
            elif kind == "deadline":
                self._close_round(rt, now, late=True)
            elif kind == "state":
                self._step(rt, sm.Tick(now))
            else:
                self._poll_idle(rt, now)

    # ------------------------------------------------------------ checks

    def _start_round(self, rt: ServiceRuntime, now: float) -> None:
        rt.rounds += 1
        timeout = rt.service.effective_timeout
        rnd = Round(rt.rounds, now, now + timeout + GRACE, [None] * len(rt.checks))
        rt.round = rnd
        # Fixed rate from the round's start, so a slow check does not drift the schedule.
        rt.next_run = max(rt.next_run + rt.interval, now)
        name = rt.service.name
        self._at(rnd.deadline, "deadline", name)
        self._at(rt.next_run, "run", name)
        for i, check in enumerate(rt.checks):
            if rt.busy[i]:
                rnd.results[i] = CheckResult(False, "previous run still running (check hung)", 0.0)
                continue
            rt.busy[i] = True
            # A check that answered at once last time must not queue behind checks that
            # sit out their timeouts (the pool gives it a thread of its own then).
            last = rt.last_results[i] if i < len(rt.last_results) else None
            urgent = last is not None and last.duration < min(QUICK_CHECK, timeout / 4)
            done = functools.partial(self._run_check, name, rnd.number, i)
            self._pool.submit(check, timeout, done, urgent=urgent)
        if all(r is not None for r in rnd.results):
            self._close_round(rt, now, late=False)

    def _run_check(self, name: str, number: int, index: int, result: CheckResult) -> None:
        self._queue.put(_CheckDone(name, number, index, result))

    def _on_check_done(self, msg: _CheckDone) -> None:
        rt = self.services.get(msg.service)
        if rt is None:
            return
        if msg.index < len(rt.busy):
            rt.busy[msg.index] = False
        rnd = rt.round
        if rnd is None or rnd.number != msg.round:
            return  # a late result of a round already closed
        rnd.results[msg.index] = msg.result
        if all(r is not None for r in rnd.results):
            self._close_round(rt, self.clock(), late=False)

    def _close_round(self, rt: ServiceRuntime, now: float, *, late: bool) -> None:
        rnd = rt.round
        if rnd is None:
            return
        rt.round = None
        timeout = rt.service.effective_timeout
        results = [
            r
            if r is not None
            else CheckResult(
                False, f"no result within {timeout:g}s (check hung)", now - rnd.started
            )
            for r in rnd.results
        ]
        ok, reason = combine(rt.service.require, results)
        if self.metrics is not None:
            for spec, r in zip(rt.service.checks, results, strict=False):
                self.metrics.observe_check(
                    rt.service.name, r.ok, r.reason, r.duration, kind=spec.type
                )
        rt.last_results = results
        rt.last_duration = max((r.duration for r in results), default=0.0)
        if not ok:
            rt.check_failures += 1
        if ok != rt.last_ok or (reason != rt.last_reason and not ok):
            self.log.event(
                "info" if ok else "warning",
                "check",
                service=rt.service.name,
                ok=ok,
                reason=reason,
                duration=round(rt.last_duration, 4),
            )
        rt.last_ok, rt.last_reason = ok, reason
        self._step(rt, sm.CheckOutcome(ok, now))
        if not self._ready and all(r.rounds and r.round is None for r in self.services.values()):
            self._ready = True
            if self.notifier is not None:
                self.notifier.ready(self._status_line())
        # The interval may have changed with the health (fast while RISING/FALLING).
        rt.next_run = min(rt.next_run, rnd.started + rt.interval)
        self._at(rt.next_run, "run", rt.service.name)

    # ------------------------------------------------------------ state and wire

    def _step(self, rt: ServiceRuntime, event: sm.Event) -> None:
        before = rt.state
        try:
            after, effects = sm.step(rt.policy, before, event)
        except IllegalTransition as err:
            self.log.warning(
                "refused", service=rt.service.name, input=type(event).__name__, why=str(err)
            )
            raise
        rt.state = after
        deadline = sm.next_deadline(after)
        if deadline is not None and deadline != sm.next_deadline(before):
            self._at(deadline, "state", rt.service.name)
        if after.route is sm.Route.DRAINING and rt.next_idle_poll is None:
            # Count connections while draining (the first count after IDLE_POLL).
            rt.next_idle_poll = event.now + IDLE_POLL
            self._at(rt.next_idle_poll, "idle", rt.service.name)
        if self.metrics is not None:
            self.metrics.set_state(rt.service.name, after.health.value, sm.shown_route(after))
            if after.route is not before.route:
                self.metrics.transition(rt.service.name, before.route.value, after.route.value)
            self.metrics.dampened(rt.service.name, after.held_until is not None)
        if (
            effects
            or after.drained is not before.drained
            or after.drain_deadline != before.drain_deadline
        ):
            self._dirty = True
        name = rt.service.name
        if after.health is not before.health:
            self.log.info(
                "health",
                service=name,
                **{"from": before.health.value, "to": after.health.value},
                reason=rt.last_reason,
            )
        if after.route is not before.route:
            rt.transitions += 1
            self.log.info(
                "route",
                service=name,
                **{"from": before.route.value, "to": after.route.value},
                reason=after.drain_reason if after.drained else rt.last_reason,
            )
        if after.held_until is not None and before.held_until is None:
            self.log.warning(
                "dampened",
                service=name,
                hold=round(after.held_until - event.now, 3),
                strikes=after.strikes,
            )
        elif after.held_until is None and before.held_until is not None:
            self.log.info("dampening_released", service=name)
        for effect in effects:
            self._apply(name, effect, before.wire_attributes)

    def _apply(
        self, service: str, effect: sm.Effect, announced: sm.RouteAttributes | None = None
    ) -> None:
        """Queue an effect; :meth:`_flush` records the new state, then sends."""
        owner = self.services.get(service)
        if isinstance(effect, sm.Withdraw) and owner is not None and owner.retiring:
            # A retiring service never withdraws a prefix a live service now announces.
            held = {
                p
                for name, rt in self.services.items()
                if name != service and not rt.retiring
                for p in rt.state.wire_prefixes
            }
            if held.intersection(effect.prefixes):
                effect = sm.Withdraw(tuple(p for p in effect.prefixes if p not in held))
                if not effect.prefixes:
                    return
        try:
            commands = render_effect(effect, self.target, announced)
        except CommandError as err:
            self.log.error("invalid_command", service=service, why=str(err))
            return
        self._deferred.append((service, effect.prefixes, commands))
        self._dirty = True

    def _flush(self) -> None:
        """Write ahead, then send: the state file never claims less than the wire.

        The state is written first, listing the prefixes about to change as in
        flight; the commands then go to the output thread, and once it reports
        everything written the state is written again without them. If we die in
        between, the next run re-sends just those prefixes (see :meth:`_restore`).
        """
        if not self._deferred:
            if self._dirty:
                self._save_state()
            return
        batch, self._deferred = self._deferred, []
        self._inflight.update(p for _, prefixes, _ in batch for p in prefixes)
        self._save_state()
        for service, _, commands in batch:
            try:
                self.writer.send(commands, context=service)
            except OSError as err:
                # ExaBGP is gone; stdin will close and we exit then.
                if not self._write_error_logged:
                    self.log.error("write_failed", service=service, why=str(err))
                    self._write_error_logged = True
                continue
            if self.metrics is not None:
                self.metrics.commands(self.writer.sent)
            for c in commands:
                self.log.debug("sent", service=service, command=c)

    def _on_flushed(self, error: OSError | None) -> None:
        if error is not None:
            if not self._write_error_logged:
                self.log.error("write_failed", why=str(error))
                self._write_error_logged = True
            return
        if not self.output.backlog and self._inflight:
            self._inflight.clear()
            self._dirty = True

    def _rejected(self, rejected: Rejected) -> None:
        self.log.error("exabgp_error", service=rejected.context, command=rejected.command)

    # ------------------------------------------------------------ drains

    def drain(self, name: str, source: sm.DrainSource, reason: str = "") -> bool:
        """Add a drain source to a service; True if this started a drain."""
        rt = self.services[name]
        first = not rt.drain_sources
        if self.metrics is not None and source not in rt.drain_sources:
            self.metrics.drain(name, source)
        rt.drain_sources.add(source)
        if first:
            self._step(rt, sm.Drain(self.clock(), reason or source))
        return first

    def undrain(self, name: str, source: sm.DrainSource) -> bool:
        """Remove a drain source; True if the service is no longer drained."""
        rt = self.services[name]
        if source not in rt.drain_sources:
            return False
        rt.drain_sources.discard(source)
        if not rt.drain_sources:
            self._step(rt, sm.Undrain(self.clock()))
            return True
        return False

    def _poll_idle(self, rt: ServiceRuntime, now: float) -> None:
        """Count connections while draining (shown in status); with ``drain_until_idle``,
        withdraw once the prefixes have no (or few enough) connections left."""
        rt.next_idle_poll = None
        if rt.state.route is not sm.Route.DRAINING:
            if self.metrics is not None:
                self.metrics.connections(rt.service.name, None)
            return
        rt.connections = count_established(rt.service.prefixes)
        if self.metrics is not None:
            self.metrics.connections(rt.service.name, rt.connections)
        if (
            rt.service.drain_until_idle
            and rt.connections is not None
            and rt.connections <= rt.service.drain_idle_threshold
        ):
            self.log.info("drain_idle", service=rt.service.name, connections=rt.connections)
            self._step(rt, sm.DrainIdle(now))
            return
        rt.next_idle_poll = now + IDLE_POLL
        self._at(rt.next_idle_poll, "idle", rt.service.name)

    def _poll_maintenance(self, now: float) -> None:
        glob_file = self.config.settings.maintenance_file
        global_on = glob_file is not None and os.path.lexists(glob_file)
        for name, rt in self.services.items():
            own = rt.service.maintenance_file
            on = global_on or (own is not None and os.path.lexists(own))
            active = sm.DrainSource.MAINTENANCE in rt.drain_sources
            if on and not active:
                path = glob_file if global_on else own
                self.log.info("maintenance", service=name, file=str(path), present=True)
                self.drain(name, sm.DrainSource.MAINTENANCE, f"maintenance file {path}")
            elif active and not on:
                self.log.info("maintenance", service=name, present=False)
                self.undrain(name, sm.DrainSource.MAINTENANCE)

    # ------------------------------------------------------------ messages

    def _handle(self, msg: _Msg) -> None:
        if isinstance(msg, _CheckDone):
            self._on_check_done(msg)
        elif isinstance(msg, _StdinLine):
            self._on_stdin(msg.line)
        elif isinstance(msg, _StdinClosed):
            self._stopping = "stdin closed"
        elif isinstance(msg, _Flushed):
            self._on_flushed(msg.error)
        elif isinstance(msg, _Signal):
            self._on_signal_msg(msg.signum)
        else:
            try:
                msg.reply.put((True, msg.fn()))
            except Exception as err:  # noqa: BLE001 - handed back to the caller
                msg.reply.put((False, err))

    def _on_stdin(self, line: str) -> None:
        message = self.writer.receive(line)
        if self.metrics is not None and message.kind in (MessageKind.DONE, MessageKind.ERROR):
            self.metrics.acks(self.writer.done, self.writer.errors)
        if message.kind is MessageKind.NEIGHBOR and message.neighbor:
            self.neighbors[message.neighbor] = message.status or ""
            self.log.info("neighbor", neighbor=message.neighbor, status=message.status)
        elif message.kind is MessageKind.SHUTDOWN:
            self.log.info("exabgp_shutdown", line=message.line)
        elif message.kind is MessageKind.OTHER and message.line:
            self.log.debug("exabgp_said", line=message.line)

    def _on_signal_msg(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.log.info("signal", signal="SIGHUP", action="reload")
            try:
                self.reload()
            except ConfigError:
                pass  # refused: reload() logged it, and status shows it
            except Exception as err:  # noqa: BLE001 - a signal must never end the process
                # Dying here means ExaBGP respawns us; five deaths in 64 s and it exits,
                # dropping every route. A reload that failed half-way is the lesser harm.
                self.config_error = f"reload failed: {type(err).__name__}: {err}"
                self.log.error(
                    "reload_failed", why=self.config_error, action="still running; reload again"
                )
                if self.metrics is not None:
                    self.metrics.config_ok(False)
            return
        self.log.info("signal", signal=signal.Signals(signum).name, action="withdraw all and exit")
        self.withdraw_all()
        self._stopping = signal.Signals(signum).name

    # ------------------------------------------------------------ reload

    RESTART_KEYS = (
        "neighbor",
        "next_hop",
        "next_hop6",
        "local_as",
        "acks",
        "state_dir",
        "control_socket",
        "control_group",
        "workers",
        "log_format",
    )

    def reload(self) -> dict[str, Any]:
        """Re-read the config; apply the difference, or keep running on the old one.

        A file that does not load raises :class:`ConfigError` (also logged and shown
        in status as ``config_error``); the config running is kept.
        """
        try:
            new = load(self.config.path)
        except ConfigError as err:
            note = [] if self._last_good_note is None else [self._last_good_note]
            refused = ConfigError([*err.problems, *note])
            self.config_error = str(refused)
            for problem in err.problems:
                self.log.error("reload_failed", problem=problem)
            self.log.error(
                "reload_failed",
                action="still running on the "
                + ("last good config" if self._last_good_note else "previous config"),
            )
            if self.metrics is not None:
                self.metrics.config_ok(False)
            raise refused from err
        # What the file says now, before the settings that need a restart are held back
        # below: a process respawned on a broken file is to run what this file said.
        self._keep_last_good(new)
        now = self.clock()
        old_settings = self.config.settings
        kept = [
            k for k in self.RESTART_KEYS if getattr(old_settings, k) != getattr(new.settings, k)
        ]
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "same": []}
        wanted = {e.service.name: e.service for e in new.services}
        for name, old in list(self.services.items()):
            if name not in wanted and not old.retiring:
                old.retiring = True
                self._retiring = True
                changes["removed"].append(name)
                self.log.info("reload", service=name, action="removed: drain, then withdraw")
                self.drain(name, sm.DrainSource.REMOVED, "removed from the config")
        for name, svc in wanted.items():
            found = self.services.get(name)
            if found is None:
                self._add(self._runtime(svc, now))
                changes["added"].append(name)
                self.log.info("reload", service=name, action="added")
                continue
            rt = found
            if rt.retiring:
                rt.retiring = False
                self.undrain(name, sm.DrainSource.REMOVED)
            if svc == rt.service:
                changes["same"].append(name)
                continue
            changes["changed"].append(name)
            if svc.checks != rt.service.checks:
                for check in rt.checks:
                    check.close()
                rt.checks = [self._check_factory(spec) for spec in svc.checks]
                rt.busy = [False] * len(rt.checks)
                rt.round = None  # results of the old checks' round are dropped
                rt.next_run = now
                self._at(now, "run", name)
            rt.service = svc
            rt.policy = svc.policy()
            self.log.info("reload", service=name, action="changed")
            self._step(rt, sm.Reconfigure(now))
        # Settings that shape every command or the process itself need a restart.
        if kept:
            self.reload_note = "restart needed to apply: " + ", ".join(kept)
            self.log.warning("reload", note=self.reload_note)
            settings = new.settings.model_copy(update={k: getattr(old_settings, k) for k in kept})
            new = Config(
                path=new.path, settings=settings, defaults=new.defaults, services=new.services
            )
        else:
            self.reload_note = None
        self.config = new
        self.config_error = None
        self._last_good_note = None
        if self.metrics is not None:
            self.metrics.config_ok(True)
        self._dirty = True
        self.log.info("reloaded", **{k: len(v) for k, v in changes.items()})
        return {"ok": True, "changes": changes, "note": self.reload_note}

    def _keep_last_good(self, config: Config) -> None:
        """Keep a config that loaded, for a later start whose file does not load."""
        try:
            save_last_good(config)
        except Exception as err:  # noqa: BLE001 - a copy is never worth a crash
            # Only the fallback for a broken file at the next start is lost.
            self.log.warning(
                "last_good_config_not_saved", state_dir=str(config.settings.state_dir), why=str(err)
            )

    def _drop_retired(self) -> None:
        self._retiring = any(rt.retiring for rt in self.services.values())
        for name, rt in list(self.services.items()):
            if rt.retiring and not rt.state.wire_prefixes:
                for check in rt.checks:
                    check.close()
                del self.services[name]
                if self.metrics is not None:
                    self.metrics.remove_service(name)
                self._dirty = True
                self.log.info("retired", service=name)

    def withdraw_all(self) -> None:
        """Withdraw every prefix that may be on the wire (used on SIGTERM)."""
        now = self.clock()
        for rt in self.services.values():
            self._step(rt, sm.Shutdown(now))
        self._flush()

    # ------------------------------------------------------------ status

    def _status_line(self) -> str:
        counts: dict[str, int] = {}
        for rt in self.services.values():
            route = sm.shown_route(rt.state)
            counts[route] = counts.get(route, 0) + 1
        parts = [f"{n} {route.lower()}" for route, n in sorted(counts.items())]
        return f"{len(self.services)} services: " + (", ".join(parts) or "none")

    def snapshot(self) -> dict[str, Any]:
        """A plain-data picture of every service, for status and tests."""
        now = self.clock()
        out: dict[str, Any] = {
            "uptime": round(now - self.started, 3),
            "neighbors": dict(self.neighbors),
            "exabgp": {
                "sent": self.writer.sent,
                "done": self.writer.done,
                "error": self.writer.errors,
                "pending": self.writer.pending,
                "last_error": self.writer.last_error.command if self.writer.last_error else None,
            },
            "config_error": self.config_error,
            "state_error": self.state_error,
            "reload_note": self.reload_note,
            "services": {},
        }
        for name, rt in self.services.items():
            st = rt.state
            out["services"][name] = {
                "health": st.health.value,
                "route": sm.shown_route(st),
                "prefixes": list(rt.policy.prefixes),
                "wire_prefixes": list(st.wire_prefixes),
                "attributes": attributes_json(st.wire_attributes),
                "drained": st.drained,
                "drain_sources": sorted(rt.drain_sources),
                "drain_reason": st.drain_reason,
                "drain_left": None
                if st.drain_deadline is None
                else round(max(0.0, st.drain_deadline - now), 3),
                "health_for": round(now - st.health_since, 3),
                "route_for": round(now - st.route_since, 3),
                "last_ok": rt.last_ok,
                "last_reason": rt.last_reason,
                "last_duration": round(rt.last_duration, 4),
                "checks_run": rt.rounds,
                "check_failures": rt.check_failures,
                "transitions": rt.transitions,
                "retiring": rt.retiring,
                "connections": rt.connections,
                "dampened_for": None
                if st.held_until is None
                else round(max(0.0, st.held_until - now), 3),
            }
        return out
