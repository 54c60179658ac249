"""Hooks: operators' commands run after a service's route changes.

A service (or ``[defaults]``) names commands in its ``[service.hooks]`` table:
``on_change`` for every route change, ``on_up`` (the route became ANNOUNCED),
``on_down`` (the checks said DOWN: withdrawn, or lowered with on_down = "lower"),
``on_drain`` (DRAINING) and ``on_withdraw`` (WITHDRAWN, for any reason). A change
runs the specific ones it matches, then ``on_change``, one after the other.

What decides when a hook runs:

* **After the route change is written.** The observer stages a run when it sees
  the state machine's ``Changed`` note; the run starts once the wire has handed the
  step's commands to ExaBGP's pipe and the output thread reports them written
  (:meth:`Hooks.written`, called by :class:`announcer.wire.Wire`). A hook that
  tells a load balancer "withdrawn" is never ahead of the withdraw itself.
* **Off the main loop.** Each run is a thread; it posts :class:`HookDone` back to the
  daemon's queue, and only the main thread logs, counts and starts what waited. A
  hook that fails or hangs costs its own thread, never a route change.
* **One at a time per service, coalesced.** Changes made while a service's hook
  runs wait as one pending run, replaced by each newer change: the next run sees
  the latest state (``ANNOUNCER_ROUTE_BEFORE`` is the route before the first of
  them, ``ANNOUNCER_COALESCED`` how many changes it stands for).
* **A timeout kills the process group** (the command check's process handling:
  :mod:`announcer.checks.command`). So does the end of a run: a hook's processes
  end with it; a hook that must leave something running starts it as a service.

Commands are argv lists, run without a shell; a string is a shell command and is
taken only with ``shell = true``. The environment is the controller's plus
``ANNOUNCER_*`` variables (:func:`environment`). Under the shipped unit
``NoNewPrivileges=yes`` holds for hooks too: ``sudo`` cannot work there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from announcer import state as sm
from announcer.checks import CheckResult
from announcer.checks.command import CommandCheck
from announcer.checks.specs import CommandCheckSpec
from announcer.log import Logger
from announcer.messages import HookDone

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics
    from announcer.runtime import ServiceRuntime

EVENTS = ("up", "down", "drain", "withdraw", "change")
"""The hook names (``on_<event>``), in the order a change runs them."""

HookCommand = tuple[str, ...] | str
"""An argv list, or (with ``shell = true``) a shell command line."""


class HooksSpec(BaseModel):
    """The ``hooks`` table of a service or of ``[defaults]`` (merged key by key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_change: HookCommand | None = None
    on_up: HookCommand | None = None
    on_down: HookCommand | None = None
    on_drain: HookCommand | None = None
    on_withdraw: HookCommand | None = None
    shell: bool = False
    """Take strings as shell command lines (``/bin/sh -c``); off: argv lists only."""
    timeout: Annotated[float, Field(gt=0, le=3600, strict=True)] = 10.0
    """Seconds one hook command may run; then its process group is killed."""

    @field_validator("on_change", "on_up", "on_down", "on_drain", "on_withdraw")
    @classmethod
    def _check_command(cls, value: HookCommand | None) -> HookCommand | None:
        if isinstance(value, tuple):
            if not value or not value[0].strip():
                raise ValueError("an argv list needs at least the program")
            if any("\x00" in arg for arg in value):
                raise ValueError("must not contain a NUL character")
        elif isinstance(value, str) and (not value.strip() or "\x00" in value):
            raise ValueError("must be a non-empty command line without NUL characters")
        return value

    @model_validator(mode="after")
    def _strings_need_shell(self) -> HooksSpec:
        if self.shell:
            return self
        for event in EVENTS:
            if isinstance(getattr(self, f"on_{event}"), str):
                raise ValueError(
                    f"on_{event}: a string is a shell command line: set shell = true to run "
                    'it with /bin/sh -c, or give the argv as a list (["/usr/bin/prog", "arg"])'
                )
        return self

    def commands_for(self, events: tuple[str, ...]) -> list[HookCommand]:
        """The commands a change matching ``events`` runs, in order."""
        found = [getattr(self, f"on_{event}") for event in EVENTS if event in events]
        return [c for c in found if c is not None]


def events_of(before: sm.Route, after: sm.Route, health: sm.Health) -> tuple[str, ...]:
    """Which hooks a route change from ``before`` to ``after`` matches."""
    out = ["change"]
    if after is sm.Route.ANNOUNCED:
        out.append("up")
    if after is sm.Route.DRAINING:
        out.append("drain")
    if after is sm.Route.WITHDRAWN:
        out.append("withdraw")
    if health is sm.Health.DOWN and after in (sm.Route.WITHDRAWN, sm.Route.LOWERED):
        out.append("down")
    return tuple(e for e in EVENTS if e in out)


@dataclass(frozen=True)
class Run:
    """One run of a service's hooks: the commands, and what they are told."""

    service: str
    commands: tuple[HookCommand, ...]
    timeout: float
    events: tuple[str, ...]
    health: str
    route_before: str
    route: str
    prefixes: tuple[str, ...]
    reason: str
    coalesced: int = 1
    flush: int = 0
    """The wire's flush count when staged: released once a later flush is written."""


def environment(run: Run) -> dict[str, str]:
    """The ``ANNOUNCER_*`` variables a hook gets (added to the controller's environment)."""
    return {
        "ANNOUNCER_SERVICE": run.service,
        "ANNOUNCER_EVENT": " ".join(run.events),
        "ANNOUNCER_HEALTH": run.health,
        "ANNOUNCER_ROUTE_BEFORE": run.route_before,
        "ANNOUNCER_ROUTE": run.route,
        "ANNOUNCER_PREFIXES": " ".join(run.prefixes),
        "ANNOUNCER_REASON": run.reason,
        "ANNOUNCER_COALESCED": str(run.coalesced),
    }


def run_commands(run: Run) -> HookDone:
    """Run a :class:`Run`'s commands one after the other (on a hook thread)."""
    env = environment(run)
    results = []
    for command in run.commands:
        argv = None if isinstance(command, str) else command
        line = command if isinstance(command, str) else None
        spec = CommandCheckSpec(argv=argv, command=line, shell=isinstance(command, str), env=env)
        check = CommandCheck(spec)
        results.append((check.name.removeprefix("command "), check.run(run.timeout)))
    return HookDone(run.service, tuple(results))


Starter = Callable[[Run, Callable[[HookDone], None]], None]
"""Starts a run off the main loop and calls back with its result from that thread."""


def thread_starter(run: Run, done: Callable[[HookDone], None]) -> None:
    def body() -> None:
        try:
            result = run_commands(run)
        except Exception as err:  # noqa: BLE001 - without a HookDone the service's hooks stop
            failed = CheckResult(False, f"hook raised {type(err).__name__}: {err}", 0.0)
            result = HookDone(run.service, (("hook", failed),))
        done(result)

    threading.Thread(target=body, name=f"hook-{run.service}", daemon=True).start()


class Hooks:
    """Stages, starts and coalesces hook runs; see the module docstring.

    Main thread only, except the ``post`` a run's thread calls with its result.
    """

    def __init__(
        self,
        post: Callable[[HookDone], None],
        log: Logger,
        metrics: Metrics | None,
        start: Starter = thread_starter,
    ) -> None:
        self.post, self.log, self.metrics, self.start = post, log, metrics, start
        """Starts a run off the main loop (tests put a recorder here)."""
        self.flushes = 0
        """How many times the wire flushed (see :meth:`flushed`)."""
        self._staged: list[Run] = []
        self._running: set[str] = set()
        self._pending: dict[str, Run] = {}

    def changed(self, rt: ServiceRuntime, note: sm.Changed, reason: str) -> None:
        """A route change (``note``) of ``rt``: stage its hooks, if it has any."""
        spec = rt.service.hooks
        before, after = note.before, note.after
        if spec is None or not isinstance(before, sm.Route) or not isinstance(after, sm.Route):
            return
        events = events_of(before, after, rt.state.health)
        commands = spec.commands_for(events)
        if not commands:
            return
        self._staged.append(
            Run(
                service=rt.name,
                commands=tuple(commands),
                timeout=spec.timeout,
                events=events,
                health=rt.state.health.value,
                route_before=before.value,
                route=after.value,
                prefixes=rt.policy.prefixes,
                reason=reason,
                flush=self.flushes,
            )
        )

    def flushed(self) -> None:
        """The wire handed everything decided so far to the output (commands or none)."""
        self.flushes += 1

    def written(self) -> None:
        """Everything handed to the output is written: start what was staged before."""
        ready = [r for r in self._staged if r.flush < self.flushes]
        if not ready:
            return
        self._staged = [r for r in self._staged if r.flush >= self.flushes]
        for run in ready:
            self._launch(run)

    def _launch(self, run: Run) -> None:
        if run.service in self._running:
            earlier = self._pending.get(run.service)
            if earlier is not None:
                run = replace(
                    run, route_before=earlier.route_before, coalesced=earlier.coalesced + 1
                )
            self._pending[run.service] = run
            return
        self._running.add(run.service)
        self.log.debug("hook_start", service=run.service, events=" ".join(run.events))
        self.start(run, self.post)

    def done(self, done: HookDone) -> None:
        """A run finished (on the main thread): log, count, start what waited."""
        for command, result in done.results:
            outcome = hook_outcome(result)
            fields: dict[str, Any] = {
                "service": done.service,
                "command": command,
                "result": outcome,
                "duration": round(result.duration, 3),
            }
            if outcome == "ok":
                self.log.info("hook", **fields)
            else:
                self.log.warning("hook_failed", **fields, reason=result.reason)
            if self.metrics is not None:
                self.metrics.hook(done.service, outcome)
        self._running.discard(done.service)
        waiting = self._pending.pop(done.service, None)
        if waiting is not None:
            self._launch(waiting)


def hook_outcome(result: CheckResult) -> str:
    """``ok``, ``timeout`` or ``failed``: the ``result`` label of the hook metric."""
    if result.ok:
        return "ok"
    return "timeout" if result.reason.startswith("timeout after") else "failed"
