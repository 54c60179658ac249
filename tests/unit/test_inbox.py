"""The daemon's inbox: posts wake the running loop once per batch, a signal wakes it out
of its wait, timers keep the earliest turn, calls run on the loop's thread."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from announcer import messages as msg
from announcer.inbox import Inbox


class Turns:
    """An inbox on a fresh loop whose turns record what had arrived."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.inbox = Inbox(self.loop, self.turn)
        self.turns: list[list[msg.Message]] = []
        self.stop_after = 1

    def turn(self) -> None:
        self.turns.append(list(self.inbox.arrived()))
        if len(self.turns) >= self.stop_after:
            self.loop.stop()

    def run(self, safety: float = 10.0) -> None:
        """Run until the expected turns happened (or ``safety`` seconds: then they did not)."""
        self.loop.call_later(safety, self.loop.stop)
        self.loop.run_forever()


@pytest.fixture
def turns() -> Iterator[Turns]:
    t = Turns()
    yield t
    t.loop.close()


def test_posts_before_the_loop_runs_wait_for_its_first_turn(turns: Turns) -> None:
    """Posting to a loop that is not running schedules nothing; the messages are there
    for the first turn, in order."""
    turns.inbox.post(msg.StdinLine("a"))
    turns.inbox.post(msg.StdinLine("b"))
    turns.loop.call_soon(turns.turn)
    turns.run()
    assert turns.turns == [[msg.StdinLine("a"), msg.StdinLine("b")]]


def test_posts_from_the_loops_own_callback_make_one_turn(turns: Turns) -> None:
    """Two results posted from one callback on the loop (as a check's are) give one turn
    that has both, not two."""
    turns.stop_after = 2

    def callback() -> None:
        turns.inbox.post(msg.StdinLine("a"))
        turns.inbox.post(msg.StdinLine("b"))
        turns.loop.call_later(0.05, turns.turn)  # a later turn: finds nothing new

    turns.loop.call_soon(callback)
    turns.run()
    assert turns.turns == [[msg.StdinLine("a"), msg.StdinLine("b")], []]


def test_a_post_from_another_thread_wakes_the_waiting_loop(turns: Turns) -> None:
    """A loop waiting with no timer is woken by a post from another thread."""
    turns.loop.call_soon(
        lambda: threading.Thread(target=turns.inbox.post, args=(msg.StdinClosed(),)).start()
    )
    turns.run()
    assert turns.turns == [[msg.StdinClosed()]]


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
def test_a_signal_wakes_the_loop_out_of_its_wait(turns: Turns) -> None:
    """A signal that arrives while the loop waits with no timer is handled at once: the
    handler runs inside the wait, so it must wake the loop itself (a plain call_soon
    would wait for the next timer; here there is none before the safety stop)."""
    previous = signal.getsignal(signal.SIGHUP)
    start = turns.loop.time()
    try:
        turns.inbox.catch_signals()
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGHUP)).start()
        turns.run(safety=10.0)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert turns.turns == [[msg.Signal(signal.SIGHUP)]]
    # Not a speed goal: a turn left for the next timer would come only with the safety stop.
    assert turns.loop.time() - start < 5.0


def test_wake_at_keeps_the_earliest_turn(turns: Turns) -> None:
    """A later wake-up leaves an earlier one in place; an earlier one replaces it; the
    turn comes once, at the earliest."""
    now = turns.loop.time()
    turns.inbox.wake_at(now + 30.0)
    turns.inbox.wake_at(now + 0.05)
    turns.inbox.wake_at(now + 20.0)
    turns.stop_after = 1
    turns.run(safety=5.0)
    assert turns.turns == [[]]


def test_call_runs_on_the_loops_thread_and_hands_back_result_or_error(turns: Turns) -> None:
    """call() from another thread runs the function on the loop's thread; its value comes
    back, and so does what it raised."""
    seen: list[object] = []
    turns.inbox = Inbox(
        turns.loop,
        lambda: [Inbox.answer(m) for m in turns.inbox.arrived() if isinstance(m, msg.Call)],
    )

    def caller() -> None:
        seen.append(turns.inbox.call(threading.current_thread))
        try:
            turns.inbox.call(lambda: 1 / 0)
        except ZeroDivisionError as err:
            seen.append(err)
        turns.loop.call_soon_threadsafe(turns.loop.stop)

    turns.loop.call_soon(lambda: threading.Thread(target=caller).start())
    turns.run()
    assert seen[0] is threading.main_thread()
    assert isinstance(seen[1], ZeroDivisionError)


def test_a_turn_that_raises_stops_the_loop_and_is_kept(turns: Turns) -> None:
    """What a turn raises is not left to asyncio's handler (which logs and goes on, with
    the daemon's timer never set again): the loop stops and the error is kept, for the
    daemon's run to raise (ExaBGP then starts a fresh controller)."""

    def broken() -> None:
        raise RuntimeError("a bug")

    inbox = Inbox(turns.loop, broken)
    turns.loop.call_soon(inbox.turn)
    turns.run()
    assert isinstance(inbox.failure, RuntimeError)
    assert str(inbox.failure) == "a bug"


def test_a_closed_inbox_gives_no_more_turns(turns: Turns) -> None:
    """Once closed (the daemon's loop has ended), neither a post nor the timer set before
    runs the owner's turn, though the loop runs again (the check runner winding down)."""
    turns.inbox.wake_at(turns.loop.time() + 0.01)
    turns.inbox.close()

    def callback() -> None:
        turns.inbox.post(msg.StdinLine("late"))
        turns.loop.call_later(0.05, turns.loop.stop)

    turns.loop.call_soon(callback)
    turns.run()
    assert turns.turns == []
