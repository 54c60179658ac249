"""What reaches the daemon's loop, through its one queue, from other threads.

Check results (from the check runner), lines and the end of ExaBGP's stdin (from the
reader thread), the output thread's "all written", signals, calls from the control
socket, and the end of a hook run. The daemon dispatches them by type
(:attr:`announcer.daemon.Daemon.handlers`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from announcer.checks import CheckResult


@dataclass(frozen=True)
class CheckDone:
    """One check of one round finished."""

    service: str
    round: int
    index: int
    result: CheckResult


@dataclass(frozen=True)
class StdinLine:
    """A line ExaBGP wrote to us (an ack, a neighbour's state, ...)."""

    line: str


@dataclass(frozen=True)
class StdinClosed:
    """ExaBGP closed our stdin: it is going away, and so do we."""


@dataclass(frozen=True)
class Flushed:
    """The output thread wrote everything queued (or failed to)."""

    error: OSError | None


@dataclass(frozen=True)
class Signal:
    signum: int


@dataclass(frozen=True)
class Call:
    """Run a function on the main thread (used by the control socket and tests)."""

    fn: Callable[[], Any]
    reply: queue.SimpleQueue[tuple[bool, Any]]


@dataclass(frozen=True)
class HookDone:
    """A service's hook run finished (see :mod:`announcer.hooks`)."""

    service: str
    results: tuple[tuple[str, CheckResult], ...]
    """Per command run: its text and its outcome (a timeout reads ``timeout after Ns``)."""


Message = CheckDone | StdinLine | StdinClosed | Flushed | Signal | Call | HookDone
