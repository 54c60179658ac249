"""Check rounds: start one for a service, collect its checks' results, close it.

A round runs every check of a service once. It closes when all have answered, or at
its deadline (the timeout plus :data:`GRACE`), counting a check that did not answer
as failed. A check that ignores its timeout cannot stall anything: it is not started
again until the stuck run returns (each later round counts it as failed meanwhile),
so a hung check holds at most one worker. Results that arrive after their round
closed are dropped. :func:`combine` applies the service's ``require`` rule.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from announcer.checks import Check, CheckResult, OnDone
from announcer.messages import CheckDone
from announcer.runtime import Round, ServiceRuntime

GRACE = 0.5
"""How long after its timeout a check may take before its round is closed without it."""
QUICK_CHECK = 0.05
"""Seconds under which a check's last run counts as quick: it must not queue behind slow ones
(see :meth:`announcer.workers.Workers.submit`)."""
OVERFLOW_WORKERS = 1024
"""Check threads at most while checks queue up behind ones that sit out their timeouts
(``workers`` threads otherwise; see :mod:`announcer.workers`): a service's check must not
wait, and fail, because a thousand others time out at once."""


class Runner(Protocol):
    """Runs checks off the loop; ``on_done`` is called once per submit, from any thread
    (:class:`announcer.runner.CheckRunner`; tests pass one that answers at once)."""

    def submit(
        self, check: Check, timeout: float, on_done: OnDone, *, urgent: bool = False
    ) -> None: ...

    def shutdown(self) -> None: ...


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


def _hung(rt: ServiceRuntime, rnd: Round, now: float) -> CheckResult:
    """The result of a check that did not answer before its round closed."""
    timeout = rt.service.effective_timeout
    return CheckResult(False, f"no result within {timeout:g}s (check hung)", now - rnd.started)


@dataclass(slots=True)
class Closed:
    """A round's outcome: its results (a missing one as failed) and the combined verdict."""

    ok: bool
    reason: str
    results: list[CheckResult]
    started: float
    news: bool
    """The verdict changed, or a failure's reason did (worth a log line)."""


class FirstRounds:
    """Whether every service has closed a round yet (the daemon is ready then)."""

    def __init__(self, runtimes: dict[str, ServiceRuntime]) -> None:
        self._runtimes = runtimes
        self._unchecked: deque[str] = deque()  # may not have closed one, in order added

    def add(self, name: str) -> None:
        self._unchecked.append(name)

    def done(self) -> bool:
        """Every service has closed a round. Each is looked at until its first round has
        closed, not again: asked after every result until then, a scan of all services
        would be quadratic (2 million looks at N = 2,000)."""
        unchecked, runtimes = self._unchecked, self._runtimes
        while unchecked:
            rt = runtimes.get(unchecked[0])
            if rt is not None and (rt.rounds == 0 or (rt.rounds == 1 and rt.round is not None)):
                return False
            unchecked.popleft()
        return True


class CheckRounds:
    """Starts rounds on a :class:`Runner`; results come back as :class:`CheckDone`
    messages through ``post`` (the daemon's queue)."""

    def __init__(self, runner: Runner, post: Callable[[CheckDone], None]) -> None:
        self.runner = runner
        self._post = post

    def start(self, rt: ServiceRuntime, now: float) -> Round:
        """Start a round; its results arrive later (or are already all in: see
        :meth:`complete`, true when every check is still stuck in an older run)."""
        rt.rounds += 1
        timeout = rt.service.effective_timeout
        checks, busy, last_results = rt.checks, rt.busy, rt.last_results
        rnd = Round(rt.rounds, now, now + timeout + GRACE, [None] * len(checks))
        rt.round = rnd
        # Fixed rate from the round's start, so a slow check does not drift the schedule.
        rt.next_run = max(rt.next_run + rt.interval, now)
        quick = min(QUICK_CHECK, timeout / 4)
        for i, check in enumerate(checks):
            if busy[i]:
                rnd.results[i] = CheckResult(False, "previous run still running (check hung)", 0.0)
                continue
            busy[i] = True
            # A check that answered at once last time must not queue behind checks that
            # sit out their timeouts (the runner gives it a thread of its own then).
            urgent = i < len(last_results) and last_results[i].duration < quick
            self.runner.submit(check, timeout, self._poster(rt.name, rnd.number, i), urgent=urgent)
        return rnd

    def _poster(self, name: str, number: int, index: int) -> OnDone:
        return lambda result: self._post(CheckDone(name, number, index, result))

    @staticmethod
    def collect(rt: ServiceRuntime, msg: CheckDone) -> bool:
        """Record a result; True when it completes its round."""
        if msg.index < len(rt.busy):
            rt.busy[msg.index] = False
        rnd = rt.round
        if rnd is None or rnd.number != msg.round:
            return False  # a late result of a round already closed
        results = rnd.results
        results[msg.index] = msg.result
        return None not in results  # complete(), without its call

    @staticmethod
    def complete(rnd: Round) -> bool:
        return None not in rnd.results

    @staticmethod
    def close(rt: ServiceRuntime, now: float) -> Closed | None:
        """Close the open round (a missing result counts as failed) and record it."""
        rnd = rt.round
        if rnd is None:
            return None
        rt.round = None
        results = rnd.results
        if None in results:
            results = [r if r is not None else _hung(rt, rnd, now) for r in results]
        done: list[CheckResult] = results  # type: ignore[assignment]  # None is out (a cast is a call)
        require = rt.service.require
        if len(done) == 1 and done[0].ok and require in {"all", "any"}:
            ok, reason = True, done[0].reason  # nearly every round: one check, passing
        else:
            ok, reason = combine(require, done)
        news = ok != rt.last_ok or (reason != rt.last_reason and not ok)
        rt.last_results = done
        # One check nearly always: its duration, without a generator's calls.
        rt.last_duration = (
            done[0].duration if len(done) == 1 else max((r.duration for r in done), default=0.0)
        )
        if not ok:
            rt.check_failures += 1
        rt.last_ok, rt.last_reason = ok, reason
        return Closed(ok, reason, done, rnd.started, news)

    def shutdown(self, runtimes: list[ServiceRuntime]) -> None:
        self.runner.shutdown()
        for rt in runtimes:
            rt.close_checks()
