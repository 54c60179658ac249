"""The check pool grows past its limit while its queue stalls, and shrinks back after.

Found by the fault suite (docs/reliability.md, row 7f): 1,000 checks timing out together
held all 32 threads for their timeouts, so a healthy service's check waited in the queue
past its round's deadline, was counted as hung, and the healthy service was withdrawn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from announcer.workers import Workers


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_stalled_queue_gets_threads_beyond_the_limit() -> None:
    """Both threads blocked: a job queued behind them for longer than ``stall`` makes the
    next submit start an overflow thread, and both waiting jobs run."""
    pool = Workers(2, "t", overflow=10, stall=0.05, idle_exit=60.0)
    release = threading.Event()
    try:
        for _ in range(2):
            pool.submit(release.wait)
        first, second = threading.Event(), threading.Event()
        pool.submit(first.set)
        time.sleep(0.1)  # the queue's oldest job is now older than stall
        pool.submit(second.set)
        assert first.wait(5) and second.wait(5), "queued jobs waited for the blocked ones"
        assert 2 < pool.threads <= 10
    finally:
        release.set()
        pool.shutdown()


def test_without_overflow_the_limit_holds() -> None:
    """``overflow`` unset: the same stall leaves the queued jobs waiting, two threads only."""
    pool = Workers(2, "t", stall=0.05)
    release = threading.Event()
    try:
        for _ in range(2):
            pool.submit(release.wait)
        ran = threading.Event()
        pool.submit(ran.set)
        time.sleep(0.1)
        pool.submit(ran.set)
        assert not ran.wait(0.3)
        assert pool.threads == 2
        release.set()
        assert ran.wait(5)
    finally:
        release.set()
        pool.shutdown()


def test_overflow_threads_end_when_idle() -> None:
    """Once the blocked jobs are done, the overflow threads end after ``idle_exit`` seconds
    without work; the pool is back to its limit and still runs jobs."""
    pool = Workers(1, "t", overflow=5, stall=0.02, idle_exit=0.2)
    release = threading.Event()
    try:
        pool.submit(release.wait)
        for _ in range(3):
            pool.submit(time.sleep, 0.5)
            time.sleep(0.05)
        wait_until(lambda: pool.threads > 1)
        release.set()
        wait_until(lambda: pool.threads == 1, timeout=5.0)
        done = threading.Event()
        pool.submit(done.set)
        assert done.wait(5)
    finally:
        release.set()
        pool.shutdown()


def test_an_idle_thread_keeps_no_reference_to_its_last_job() -> None:
    """After a job, the thread waiting for the next one holds nothing of it (a retired
    check's socket would otherwise stay open until the thread's next job)."""

    class Job:
        def __call__(self) -> None:
            pass

    import weakref

    pool = Workers(1, "t")
    try:
        job = Job()
        ref = weakref.ref(job)
        pool.submit(job)
        wait_until(lambda: pool._idle == 1)
        del job
        wait_until(lambda: ref() is None, timeout=2.0)
    finally:
        pool.shutdown()


def test_overflow_threads_end_under_light_work_too() -> None:
    """Light work spread over the overflow threads (each one picking a job now and then)
    does not keep them: once no job has had to wait for ``idle_exit`` seconds, each ends
    after its next job, and the pool is back to its limit while the work goes on."""
    pool = Workers(1, "t", overflow=8, stall=0.02, idle_exit=0.3)
    release = threading.Event()
    try:
        pool.submit(release.wait)
        for _ in range(4):
            pool.submit(time.sleep, 0.2)
            time.sleep(0.03)
        wait_until(lambda: pool.threads > 2)
        release.set()
        ran = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            done = threading.Event()
            pool.submit(done.set)
            assert done.wait(5)
            ran += 1
            time.sleep(0.02)
        assert ran > 20
        wait_until(lambda: pool.threads == 1, timeout=3.0)
    finally:
        release.set()
        pool.shutdown()


def test_an_urgent_job_does_not_wait_behind_a_stalled_queue() -> None:
    """Every thread busy and slow jobs queued for longer than ``stall``: a job submitted as
    urgent (a check that answered at once last time) gets a thread of its own and runs at
    once, ahead of the whole backlog."""
    pool = Workers(1, "t", overflow=3, stall=0.05, idle_exit=60.0)
    release = threading.Event()
    try:
        pool.submit(release.wait)
        for _ in range(20):
            pool.submit(release.wait)  # a backlog that will not move until released
        time.sleep(0.1)
        ran = threading.Event()
        pool.submit(ran.set, urgent=True)
        assert ran.wait(2.0), "the urgent job waited behind the backlog"
    finally:
        release.set()
        pool.shutdown()
