"""The services the daemon looks after: their runtimes, each stepped through the state
machine, and everything a step sets off (timers, the wire, logs and metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from announcer import restore
from announcer import state as sm
from announcer.addresses import Local, presence
from announcer.checks import Check, CheckResult, CheckSpec
from announcer.config import Service, Settings
from announcer.drains import Drains
from announcer.errors import IllegalTransition
from announcer.hooks import Hooks
from announcer.log import Logger
from announcer.managed import ManagedAddresses
from announcer.messages import CheckEvent, Message
from announcer.observer import EventWrites, Observer
from announcer.reload import ReloadPlan
from announcer.rounds import CheckRounds, FirstRounds, Runner, combine
from announcer.runtime import EventSeen, ServiceRuntime
from announcer.status import checked_view
from announcer.timers import TimerKind, Timers
from announcer.wire import Wire

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics

CheckFactory = Callable[[CheckSpec], Check]
_NOT_YET = CheckResult(False, "no result yet", 0.0)
_RUN, _DEADLINE = TimerKind.RUN, TimerKind.DEADLINE  # per timer: a global reads 6x quicker on 3.11


class FleetHook(Protocol):
    """The fleet guard's side of a step (announcer.fleet.guard): questions to ask, and
    this node's state to publish when it changed."""

    def ask(self, rt: ServiceRuntime, effect: sm.AskWithdraw) -> None: ...

    def stepped(self, rt: ServiceRuntime) -> None: ...


def _build_checks(
    service: Service, factory: CheckFactory, post: Callable[[Message], None]
) -> list[Check]:
    """The service's checks; the ``immediate`` ones that have events (``watch``) post
    them to the loop as :class:`CheckEvent` messages."""
    checks = [factory(spec) for spec in service.checks]
    for index, (spec, check) in enumerate(zip(service.checks, checks, strict=True)):
        watch = getattr(check, "watch", None)
        if spec.immediate and watch is not None:
            watch(_event_poster(post, service.name, index, check))
    return checks


def _event_poster(
    post: Callable[[Message], None], name: str, index: int, check: Check
) -> Callable[[Any, float], None]:
    return lambda result, at: post(CheckEvent(name, index, check, result, at))


class Services:
    def __init__(
        self,
        runtimes: dict[str, ServiceRuntime],
        wire: Wire,
        runner: Runner,
        check_factory: CheckFactory,
        log: Logger,
        metrics: Metrics | None,
        post: Callable[[Message], None],
    ) -> None:
        self.runtimes = runtimes
        """Shared with the wire, which reads them for the state file."""
        self.wire, self.log, self.metrics = wire, log, metrics
        self.rounds = CheckRounds(runner, post)
        self._post = post
        self._check_factory = check_factory
        self.timers = Timers(self.runtimes.get)
        self.hooks = Hooks(post, log, metrics)
        self.observer = Observer(log, metrics, self.hooks)
        self.event_writes = EventWrites(log, metrics, wire.clock)
        # Hooks start once their route change is written; an event's delay is taken then.
        wire.listeners = [self.hooks, self.event_writes]
        self.drains = Drains(self.step, self.timers, log, metrics)
        self.local: Local | None = None
        """What the kernel delivers here; None until known (then nothing is held)."""
        self.managed = ManagedAddresses(wire.writer, lambda: wire.queued, log)
        self.fleet: FleetHook | None = None
        self._retiring: set[str] = set()
        """Services a reload removed, until they are dropped (see :meth:`drop_retired`)."""
        self.first_rounds = FirstRounds(self.runtimes)
        self._own_files: list[ServiceRuntime] | None = None  # with a maintenance file of their own

    def __iter__(self) -> Iterator[ServiceRuntime]:
        return iter(list(self.runtimes.values()))

    def __len__(self) -> int:
        return len(self.runtimes)

    # ------------------------------------------------------------ lifecycle

    def add(self, service: Service, now: float) -> None:
        checks = _build_checks(service, self._check_factory, self._post)
        rt = ServiceRuntime(service, service.policy(), checks, sm.initial(now), now)
        rt.busy = [False] * len(checks)
        self.runtimes[service.name] = rt
        self._own_files = None
        self.first_rounds.add(service.name)
        self.timers.at(now, TimerKind.RUN, service.name)
        self._present(rt, now)

    def _replace(self, service: Service, now: float, *, new_checks: bool) -> None:
        """A reload changed the service: new policy (and checks), then a Reconfigure."""
        rt = self.runtimes[service.name]
        if new_checks:
            rt.close_checks()
            rt.checks = _build_checks(service, self._check_factory, self._post)
            rt.busy, rt.round, rt.next_run = [False] * len(rt.checks), None, now
            self.timers.at(now, TimerKind.RUN, service.name)
        rt.service, rt.policy, self._own_files = service, service.policy(), None
        self._present(rt, now)  # first: a new prefix without its address is never sent
        self.step(rt, sm.Reconfigure(now))

    def reconfigure(self, plan: ReloadPlan, now: float) -> None:
        """Execute a reload's plan (see :mod:`announcer.reload`)."""
        for name in plan.removed:
            self.runtimes[name].retiring = True
            self._retiring.add(name)
            self.log.info("reload", service=name, action="removed: drain, then withdraw")
            self.drain(name, sm.DrainSource.REMOVED, "removed from the config", now)
        for svc in plan.added:
            self.add(svc, now)
            self.log.info("reload", service=svc.name, action="added")
        for name in plan.revived:
            self.runtimes[name].retiring = False
            self._retiring.discard(name)
            self.undrain(name, sm.DrainSource.REMOVED, now)
        for svc in plan.changed:
            self.log.info("reload", service=svc.name, action="changed")
            self._replace(svc, now, new_checks=svc.name in plan.new_checks)

    def drop_retired(self) -> None:
        """Forget retiring services once nothing of theirs is on the wire."""
        for name in list(self._retiring):
            rt = self.runtimes[name]
            if not rt.state.wire_prefixes:
                self._retiring.discard(name)
                rt.close_checks()
                del self.runtimes[rt.name]
                self._own_files = None
                if self.metrics is not None:
                    self.metrics.remove_service(rt.name)
                self.wire.dirty = True
                self.log.info("retired", service=rt.name)

    def restore(self, now: float, boottime: float) -> None:
        """Take over from the previous run (see :mod:`announcer.restore`)."""
        snap, readable = self.wire.read()
        clocks = restore.Clocks(now, boottime, time.time(), self.wire.boot_id)
        policies = {name: rt.policy for name, rt in self.runtimes.items()}
        plan = restore.plan(
            snap, readable=readable, identity=self.wire.identity, policies=policies, clocks=clocks
        )
        for name, restored in plan.services.items():
            rt = self.runtimes[name]
            if restored.drained:
                rt.drain_sources.add(sm.DrainSource.OPERATOR)
            rt.state = st = sm.initial(now, restored)
            self._arm_state(rt, None)
            self.drains.watch(rt, now)
            self.log.info(
                "restore",
                service=name,
                route=sm.shown_route(st),
                believed=st.route.value,
                drained=st.drained,
            )
        if plan.withdraw:
            self.log.info("restore", withdraw=len(plan.withdraw), why="no longer configured")
            self.wire.apply("restore", sm.Withdraw(plan.withdraw))
        self.wire.dirty = True
        self.log.info("restored", wire=plan.wire, same_exabgp=plan.wire == "same_exabgp")
        if self.metrics is not None:
            for rt in self:
                self.metrics.set_state(rt.name, rt.state.health.value, sm.shown_route(rt.state))

    # ------------------------------------------------------------ time and checks

    def due(self, now: float, settings: Settings, poll: bool) -> None:
        """Run the timers due by ``now`` (and, with ``poll``, look at maintenance files)."""
        if self._retiring:  # not a scan of every service: this runs on every turn
            self.drop_retired()
        self.managed.due(now, self.runtimes)
        if poll:
            if self._own_files is None:
                self._own_files = [rt for rt in self if rt.service.maintenance_file is not None]
            self.drains.poll_maintenance(settings, self, self._own_files, now)
        for kind, rt in self.timers.due(now):
            if kind is _RUN:
                rnd = self.rounds.start(rt, now)
                self.timers.at(rnd.deadline, _DEADLINE, rt.name)
                self.timers.at(rt.next_run, _RUN, rt.name)
                if None not in rnd.results:  # CheckRounds.complete, once per check
                    self.close_round(rt, now)
            elif kind is _DEADLINE:
                self.close_round(rt, now)
            elif kind is TimerKind.STATE:
                self.step(rt, sm.Tick(now))
            else:
                self.drains.poll_idle(rt, now)

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`due` next has something to do (timers, address removals)."""
        times = (self.timers.next_wakeup(), self.managed.next_deadline(now))
        due = [t for t in times if t is not None]
        return min(due) if due else None

    def close_round(self, rt: ServiceRuntime, now: float) -> None:
        closed = CheckRounds.close(rt, now)
        if closed is None:
            return
        if closed.news or self.metrics is not None:  # else the observer has nothing to do
            self.observer.round_closed(rt, closed)
        # Steady and passing again: only the time changes (a fleet publishes every step).
        if closed.ok and self.fleet is None and (new := sm.passed(rt.policy, rt.state, now)):
            rt.state = new
        else:
            self.step(rt, sm.CheckOutcome(closed.ok, now))
        # The interval may have changed with the health (fast while RISING/FALLING). The
        # run armed at the round's start stands unless it came up while the round was open.
        run = closed.started + rt.interval
        if run < rt.next_run or rt.next_run <= now:
            rt.next_run = min(rt.next_run, run)
            self.timers.at(rt.next_run, TimerKind.RUN, rt.name)

    def check_event(self, event: CheckEvent) -> None:
        """An ``immediate`` check's failure as it happened: combined at once with the other
        checks' latest results (no new round; the schedule is unchanged), and if that fails
        the service's ``require``, the state machine's :class:`~announcer.state.EventFailure`
        (DOWN without waiting for ``fall``)."""
        rt = self.runtimes.get(event.service)
        if rt is None or event.index >= len(rt.checks) or rt.checks[event.index] is not event.check:
            return  # the service or the check is gone (a reload): its event is stale
        n = len(rt.checks)
        # Before the first round closes nothing is known of the others: counted as failed.
        latest = list(rt.last_results) if len(rt.last_results) == n else [_NOT_YET] * n
        latest[event.index] = event.result
        if rt.round is not None:  # a pass this open round got before the death is stale now
            rt.round.results[event.index] = event.result
        ok, reason = combine(rt.service.require, latest)
        seen = EventSeen(rt.checks[event.index].name, event.result.reason, event.at, not ok)
        rt.last_event, rt.last_results = seen, latest
        self.observer.event(rt, seen)
        if ok:
            return
        rt.check_failures += 1
        rt.last_ok, rt.last_reason = False, reason
        before = rt.state.route
        self.step(rt, sm.EventFailure(max(event.at, rt.state.updated)), cause="event")
        if rt.state.route is not before:
            seen.route = f"{before.value} -> {rt.state.route.value}"
            self.event_writes.staged(rt, seen)

    def check_now(self, names: list[str], now: float) -> Callable[[], dict[str, Any] | None]:
        """Start a round of each service's checks now (``announcer check``), counted like any
        round; the schedule starts again from it. An open round is not doubled: its results
        answer. Returns a poll (main thread): the rounds' results once all closed, or None."""
        rounds: dict[str, int] = {}
        for name in names:
            rt = self.runtimes[name]
            if rt.round is None:
                rnd = self.rounds.start(rt, now)
                # Not the next slot of the old schedule: that one could overlap this round.
                rt.next_run = now + rt.interval
                self.timers.at(rnd.deadline, TimerKind.DEADLINE, rt.name)
                self.timers.at(rt.next_run, TimerKind.RUN, rt.name)
                if CheckRounds.complete(rnd):
                    self.close_round(rt, now)
            rounds[name] = rt.round.number if rt.round is not None else rt.rounds

        def poll() -> dict[str, Any] | None:
            out: dict[str, Any] = {}
            for name, number in rounds.items():
                rt = self.runtimes.get(name)
                if rt is not None and rt.round is not None and rt.round.number <= number:
                    return None
                out[name] = None if rt is None else checked_view(rt, number)
            return out

        return poll

    # ------------------------------------------------------------ the machine

    def step(self, rt: ServiceRuntime, event: sm.Event, cause: str | None = None) -> None:
        """Feed one event to a service's state machine and act on what it says (``cause``:
        what set it off when not a round, for the log)."""
        before = rt.state
        try:
            rt.state, effects, notes = sm.step(rt.policy, before, event)
        except IllegalTransition as err:
            self.log.warning("refused", service=rt.name, input=type(event).__name__, why=str(err))
            raise
        self._arm_state(rt, before)
        self.drains.watch(rt, event.now)
        self.observer.stepped(rt, notes, event.now, cause)
        if effects or (notes and any(isinstance(n, sm.DrainChanged) for n in notes)):
            self.wire.dirty = True
        added = True
        for effect in effects:
            if isinstance(effect, sm.AskWithdraw):
                if self.fleet is not None:  # else unanswered: the machine's timeout decides
                    self.fleet.ask(rt, effect)
                continue
            if isinstance(effect, sm.Announce):
                added &= self.managed.before_announce(rt, effect.prefixes)
            self.wire.apply(rt.name, effect)
            if isinstance(effect, sm.Withdraw):
                self.managed.after_withdraw(rt, effect.prefixes)
        if self.fleet is not None:
            self.fleet.stepped(rt)
        if not added:
            self._present(rt, event.now)  # an address we could not add: the guard withdraws

    # ------------------------------------------------------------ the address guard

    def local_changed(self, local: Local, now: float) -> None:
        """The kernel's addresses or local routes changed (the netlink thread's news)."""
        self.local = local
        for rt in self:
            self._present(rt, now)

    def _present(self, rt: ServiceRuntime, now: float) -> None:
        if not rt.policy.guard or (self.local is None and not self.managed.failed):
            return
        ours = self.managed.ours(rt)
        self.step(rt, sm.Present(now, presence(self.local, rt.policy.prefixes, ours)))

    def _arm_state(self, rt: ServiceRuntime, before: sm.ServiceState | None) -> None:
        deadline = sm.next_deadline(rt.state)
        if deadline is not None and (before is None or deadline != sm.next_deadline(before)):
            self.timers.at(deadline, TimerKind.STATE, rt.name)

    def drain(self, name: str, source: sm.DrainSource, reason: str, now: float, **how: Any) -> bool:
        return self.drains.drain(self.runtimes[name], source, reason, now, **how)

    def undrain(self, name: str, source: sm.DrainSource, now: float) -> bool:
        return self.drains.undrain(self.runtimes[name], source, now)

    def shutdown(self, now: float) -> None:
        """Withdraw every prefix that may be on the wire."""
        for rt in self:
            self.step(rt, sm.Shutdown(now))
