"""``status --watch`` (announcer/watch.py) with a scripted daemon: appended blocks when
stdout is not a terminal, a daemon that stops answering shown and asked again, the
first failure ending it, Ctrl-C ending it with exit 0."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import pytest

from announcer.errors import ControlError
from announcer.watch import watch


class Daemon:
    """Answers status requests from a script: a dict, or an error to raise."""

    def __init__(self, *answers: dict[str, Any] | ControlError) -> None:
        self.answers = list(answers)
        self.closed = 0

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if isinstance(answer, ControlError):
            raise answer
        return answer

    def close(self) -> None:
        self.closed += 1


def render(result: Mapping[str, Any]) -> str:
    return f"route {result['route']}\n"


def stop_after(n: int) -> Any:
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) >= n:
            raise KeyboardInterrupt

    return sleep


def test_blocks_are_appended_and_a_lost_daemon_is_asked_again() -> None:
    """Each refresh is appended after a ``---`` line; a daemon that stops answering is
    shown as such (on a new connection next time) and the watch goes on; Ctrl-C: 0."""
    daemon = Daemon(
        {"route": "DRAINING"}, ControlError("the daemon did not answer"), {"route": "WITHDRAWN"}
    )
    out = io.StringIO()
    status = watch(
        daemon,
        {},
        render,
        interval=1.0,
        as_json=False,
        out=out,
        sleep=stop_after(3),  # type: ignore[arg-type]
    )
    assert status == 0
    lines = out.getvalue().splitlines()
    assert [line for line in lines if not line.startswith("--- ")] == [
        "route DRAINING",
        "announcer: the daemon did not answer; asking again every 1s",
        "route WITHDRAWN",
    ]
    assert sum(line.startswith("--- ") for line in lines) == 3
    assert daemon.closed == 1


def test_the_first_failure_ends_the_watch() -> None:
    """A daemon not reachable at the start is an error (exit status 3), as for status."""
    daemon = Daemon(ControlError("no daemon at /run/x", code=3))
    with pytest.raises(ControlError):
        watch(daemon, {}, render, interval=1.0, as_json=False, out=io.StringIO())  # type: ignore[arg-type]


def test_json_watch_writes_one_object_a_line() -> None:
    """With --json each refresh is one JSON object on one line."""
    out = io.StringIO()
    daemon = Daemon({"route": "ANNOUNCED"}, {"route": "DRAINING"})
    watch(daemon, {}, render, interval=0.5, as_json=True, out=out, sleep=stop_after(2))  # type: ignore[arg-type]
    assert out.getvalue() == '{"route": "ANNOUNCED"}\n{"route": "DRAINING"}\n'


def test_interval_without_watch_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--interval`` only means something with ``--watch``: exit 2, saying so, and
    nothing is sent."""
    from announcer import cli

    assert cli.main(["status", "--interval", "2", "--socket", "/nonexistent"]) == 2
    assert capsys.readouterr().err.endswith("announcer status: --interval goes with --watch\n")
