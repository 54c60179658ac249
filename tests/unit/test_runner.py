"""CheckRunner: loop checks on the one loop thread, the rest on the pool; on_done exactly once
per submit, whatever the check does, shutdown included."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from announcer.checks import CheckResult
from announcer.runner import STOPPED, CheckRunner


class Results:
    """Collects on_done calls: result and calling thread, per submit id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[int, list[tuple[CheckResult, str]]] = {}

    def callback(self, key: int) -> Any:
        def on_done(result: CheckResult) -> None:
            with self.lock:
                self.seen.setdefault(key, []).append((result, threading.current_thread().name))

        return on_done

    def wait(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            assert time.monotonic() < deadline, f"{len(self.seen)} of {count} answered"
            time.sleep(0.005)


class BlockingCheck:
    """A check with only run(): it belongs on the thread pool."""

    name = "blocking"

    def __init__(self, behave: Any = None) -> None:
        self.behave = behave

    def run(self, timeout: float) -> CheckResult:
        if self.behave is not None:
            return self.behave()  # type: ignore[no-any-return]
        return CheckResult(True, "ran", 0.0)

    def close(self) -> None:
        pass


class AsyncCheck(BlockingCheck):
    """A check with arun(): it belongs on the loop."""

    name = "async"

    def __init__(self, behave: Any = None, hang: bool = False) -> None:
        super().__init__(behave)
        self.hang = hang

    async def arun(self, timeout: float) -> CheckResult:
        if self.hang:
            await asyncio.Event().wait()
        return self.run(timeout)


@pytest.fixture
def runner() -> Iterator[CheckRunner]:
    pool = CheckRunner(4, overflow=8)
    try:
        yield pool
    finally:
        pool.shutdown()


def test_loop_checks_run_on_the_loop_thread_and_others_on_the_pool(runner: CheckRunner) -> None:
    """A check with arun() runs on the thread "check-loop"; one with only run() on a pool
    thread "check-<n>"; every submit is answered exactly once."""
    results = Results()
    for i in range(200):
        check = AsyncCheck() if i % 2 else BlockingCheck()
        runner.submit(check, 1.0, results.callback(i), urgent=i % 3 == 0)
    results.wait(200)
    time.sleep(0.05)  # a second answer would have come by now
    assert all(len(calls) == 1 for calls in results.seen.values())
    for i, [(result, thread)] in results.seen.items():
        assert result == CheckResult(True, "ran", 0.0)
        if i % 2:
            assert thread == "check-loop"
        else:
            assert thread.startswith("check-") and thread != "check-loop"


def test_a_check_that_raises_becomes_a_failed_result(runner: CheckRunner) -> None:
    """An exception from run() or arun() is answered as a failed result naming it."""

    def explode() -> CheckResult:
        raise ValueError("bad")

    results = Results()
    runner.submit(AsyncCheck(explode), 1.0, results.callback(0))
    runner.submit(BlockingCheck(explode), 1.0, results.callback(1))
    results.wait(2)
    expected = CheckResult(False, "check raised ValueError: bad", 0.0)
    assert [results.seen[i][0][0] for i in (0, 1)] == [expected, expected]


def test_a_raising_on_done_is_reported_and_the_runner_goes_on(
    runner: CheckRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_done must not raise; if it does, threading.excepthook hears of it and later checks
    still run, on the loop and on the pool."""
    hooked: list[type[BaseException] | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args.exc_type))

    def bad(result: CheckResult) -> None:
        raise RuntimeError("callback bug")

    runner.submit(AsyncCheck(), 1.0, bad)
    runner.submit(BlockingCheck(), 1.0, bad)
    results = Results()
    runner.submit(AsyncCheck(), 1.0, results.callback(0))
    runner.submit(BlockingCheck(), 1.0, results.callback(1))
    results.wait(2)
    deadline = time.monotonic() + 5
    while len(hooked) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert hooked == [RuntimeError, RuntimeError]


def test_shutdown_answers_every_check_once() -> None:
    """A loop check still running, a pool job still queued, and a submit after shutdown each
    get one STOPPED answer; the pool job already running finishes with its own result."""
    runner = CheckRunner(1, overflow=1)
    release = threading.Event()
    results = Results()

    def held() -> CheckResult:
        release.wait(5)
        return CheckResult(True, "finished", 0.0)

    runner.submit(AsyncCheck(hang=True), 60.0, results.callback(0))
    runner.submit(BlockingCheck(held), 1.0, results.callback(1))
    time.sleep(0.05)  # the blocking check holds the only thread
    runner.submit(BlockingCheck(), 1.0, results.callback(2))
    runner.shutdown()
    runner.submit(AsyncCheck(), 1.0, results.callback(3))
    runner.submit(BlockingCheck(), 1.0, results.callback(4))
    runner.shutdown()  # twice is harmless
    results.wait(4)
    release.set()
    results.wait(5)
    stopped = CheckResult(False, STOPPED, 0.0)
    assert {i: [r for r, _ in calls] for i, calls in results.seen.items()} == {
        0: [stopped],
        1: [CheckResult(True, "finished", 0.0)],
        2: [stopped],
        3: [stopped],
        4: [stopped],
    }


def test_slow_loop_checks_do_not_hold_each_other_up(runner: CheckRunner) -> None:
    """A hundred checks each waiting 0.2 s on the loop all finish in about 0.2 s: they wait
    together, not in turn."""

    class Sleeper(AsyncCheck):
        async def arun(self, timeout: float) -> CheckResult:
            await asyncio.sleep(0.2)
            return CheckResult(True, "slept", 0.2)

    results = Results()
    started = time.monotonic()
    for i in range(100):
        runner.submit(Sleeper(), 1.0, results.callback(i))
    results.wait(100)
    assert time.monotonic() - started < 1.0


def test_checks_due_at_once_start_in_submit_order(runner: CheckRunner) -> None:
    """A burst is started in the order it was submitted, a batch per turn of the loop, and
    every check of it is answered."""
    started: list[int] = []

    class Recorder(AsyncCheck):
        def __init__(self, key: int) -> None:
            super().__init__()
            self.key = key

        async def arun(self, timeout: float) -> CheckResult:
            started.append(self.key)
            await asyncio.sleep(0)
            return CheckResult(True, "ok", 0.0)

    results = Results()
    for i in range(500):
        runner.submit(Recorder(i), 1.0, results.callback(i))
    results.wait(500)
    assert started == list(range(500))


def test_shutdown_answers_checks_not_started_yet() -> None:
    """Checks the loop has taken but not started when it stops are answered STOPPED too."""
    runner = CheckRunner(1, overflow=1)
    results = Results()
    for i in range(2000):
        runner.submit(AsyncCheck(hang=True), 60.0, results.callback(i))  # none times out first
    runner.shutdown()
    results.wait(2000)
    assert all(len(calls) == 1 for calls in results.seen.values())
    assert {calls[0][0].reason for calls in results.seen.values()} == {STOPPED}


class StartingCheck(AsyncCheck):
    """A loop check that can also begin a run as callbacks: ``start`` answers at once, says
    no (so arun runs), or raises, by ``mode``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def start(self, timeout: float, on_done: Any) -> bool:
        if self.mode == "raise":
            raise ValueError("start bug")
        if self.mode == "decline":
            return False
        on_done(CheckResult(True, "started", 0.0))
        return True


def test_checks_that_start_themselves_need_no_task(runner: CheckRunner) -> None:
    """A check whose start() takes the run is answered by it; one whose start() declines runs
    arun(); one whose start() raises is answered as a failed result naming the error."""
    results = Results()
    for i, mode in enumerate(("take", "decline", "raise")):
        runner.submit(StartingCheck(mode), 1.0, results.callback(i))
    results.wait(3)
    assert [results.seen[i][0][0] for i in range(3)] == [
        CheckResult(True, "started", 0.0),
        CheckResult(True, "ran", 0.0),
        CheckResult(False, "check raised ValueError: start bug", 0.0),
    ]


def test_an_urgent_loop_check_starts_before_those_already_waiting() -> None:
    """Checks submitted at once start in submit order, BATCH per loop turn, except that an
    urgent one starts ahead of every check still waiting (a thousand slow checks due at
    once must not make a quick one late)."""
    started: list[int] = []
    entered, release = threading.Event(), threading.Event()

    class Recording(AsyncCheck):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        async def arun(self, timeout: float) -> CheckResult:
            if self.n < 0:  # holds the whole loop (no await) while the others are submitted
                entered.set()
                release.wait(5)
            started.append(self.n)
            return CheckResult(True, "ok", 0.0)

    runner = CheckRunner(1, overflow=1)
    results = Results()
    runner.submit(Recording(-1), 60.0, results.callback(-1))
    assert entered.wait(5)
    for i in range(200):
        runner.submit(Recording(i), 60.0, results.callback(i))
    runner.submit(Recording(999), 60.0, results.callback(999), urgent=True)
    release.set()
    results.wait(202)
    runner.shutdown()
    assert started[:2] == [-1, 999]
    assert started[2:] == list(range(200))
