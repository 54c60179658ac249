"""The check thread pool: jobs run, threads start only as needed, shutdown drops the queue."""

from __future__ import annotations

import threading
import time

import pytest

from announcer.workers import Workers


def wait_until(pred: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)


def test_jobs_run_with_their_arguments() -> None:
    """submit(fn, *args) calls fn(*args) on a worker thread, not the caller's."""
    pool = Workers(4, "t")
    seen: list[tuple[int, str, str]] = []
    for i in range(20):
        assert pool.submit(
            lambda n, s: seen.append((n, s, threading.current_thread().name)), i, "x"
        )
    wait_until(lambda: len(seen) == 20)
    assert sorted(n for n, _, _ in seen) == list(range(20))
    assert all(name.startswith("t-") for _, _, name in seen)
    pool.shutdown()


def test_an_idle_thread_is_reused_instead_of_starting_another() -> None:
    """Jobs submitted one after another, each finished before the next, share one thread."""
    pool = Workers(8, "t")
    for _ in range(10):
        done = threading.Event()
        pool.submit(done.set)
        assert done.wait(5)
        wait_until(lambda: pool._idle == 1)  # the worker is back waiting
    assert pool.threads == 1
    pool.shutdown()


def test_a_hung_job_holds_one_thread_and_others_still_run() -> None:
    """While jobs block, new ones get new threads up to the limit, and no further."""
    pool = Workers(3, "t")
    release = threading.Event()
    for _ in range(2):
        pool.submit(release.wait)
    ran = threading.Event()
    pool.submit(ran.set)
    assert ran.wait(5), "a free thread should have run the job"
    blocked = [threading.Event() for _ in range(2)]
    for event in blocked:
        pool.submit(event.set)
    wait_until(lambda: blocked[0].is_set() or blocked[1].is_set())
    assert pool.threads == 3
    release.set()
    wait_until(lambda: all(e.is_set() for e in blocked))
    assert pool.threads == 3
    pool.shutdown()


def test_shutdown_drops_queued_jobs_and_refuses_new_ones() -> None:
    """After shutdown, queued jobs never run, submit returns False, threads end."""
    pool = Workers(1, "t")
    release = threading.Event()
    pool.submit(release.wait)
    late: list[int] = []
    pool.submit(late.append, 1)
    pool.shutdown()
    assert pool.submit(late.append, 2) is False
    release.set()
    wait_until(lambda: not any(t.is_alive() for t in pool._threads))
    assert late == []


def test_a_raising_job_is_reported_and_the_thread_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception reaches threading.excepthook; the same thread runs the next job."""
    hooked: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args.exc_value))

    def boom() -> None:
        raise RuntimeError("boom")

    pool = Workers(1, "t")
    pool.submit(boom)
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(5)
    assert [str(e) for e in hooked] == ["boom"]
    assert pool.threads == 1
    pool.shutdown()


def test_limit_must_be_positive() -> None:
    """A pool of no threads would never run anything: refused at once."""
    with pytest.raises(ValueError, match="at least 1"):
        Workers(0, "t")
