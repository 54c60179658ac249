"""What reaches the daemon's loop, through its one queue, from other threads.

Check results (from the check runner), lines and the end of ExaBGP's stdin (from the
reader thread), the output thread's "all written", signals, calls from the control
socket, the kernel's address changes (the netlink thread), the fleet thread's answers
and the end of a hook run. The daemon dispatches them by type
(:attr:`announcer.daemon.Daemon.handlers`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from announcer.addresses import Local
from announcer.checks import CheckResult


@dataclass(slots=True)
class CheckDone:
    """One check of one round finished (not frozen, unlike the others: one is made per
    check, and a frozen dataclass's ``__init__`` costs three times as much)."""

    service: str
    round: int
    index: int
    result: CheckResult


@dataclass(frozen=True)
class CheckEvent:
    """An ``immediate`` check reported a failure as it happened (between rounds)."""

    service: str
    index: int
    check: object
    """The check that reported it: an event of a check a reload replaced is dropped."""
    result: CheckResult
    at: float
    """When the check saw it (its clock, the daemon's)."""


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
class LocalChanged:
    """The kernel's local addresses or local routes changed (the address guard)."""

    local: Local


@dataclass(frozen=True)
class FleetAnswer:
    """The fleet guard's answer to a service's question (see announcer.fleet)."""

    service: str
    allowed: bool | None
    """None: unknown (etcd could not be reached)."""
    announcing: int
    latency: float
    why: str = ""


@dataclass(frozen=True)
class FleetView:
    """The group as just read from etcd: service -> node -> peer (None: unreadable)."""

    services: Mapping[str, Mapping[str, Any]] | None
    error: str = ""
    slots: Mapping[str, list[str]] | None = None
    """Who holds each service's drain slots."""


@dataclass(frozen=True)
class FleetSlot:
    """A drain slot taken (``granted``), not free (False), or not known (None)."""

    service: str
    granted: bool | None
    holders: tuple[str, ...] = ()
    ahead: int = 0
    forced: bool = False
    why: str = ""


@dataclass(frozen=True)
class HookDone:
    """A service's hook run finished (see :mod:`announcer.hooks`)."""

    service: str
    results: tuple[tuple[str, CheckResult], ...]
    """Per command run: its text and its outcome (a timeout reads ``timeout after Ns``)."""


Message = (
    CheckDone
    | CheckEvent
    | StdinLine
    | StdinClosed
    | Flushed
    | Signal
    | Call
    | FleetAnswer
    | FleetView
    | FleetSlot
    | LocalChanged
    | HookDone
)


def read_lines(inp: BinaryIO, post: Callable[[Message], None]) -> None:
    """Post each line ExaBGP writes to our stdin, then its end (the stdin thread's work:
    ExaBGP blocks if nobody reads)."""
    try:
        for raw in iter(inp.readline, b""):
            post(StdinLine(raw.decode(errors="replace")))
    except (OSError, ValueError):
        pass
    post(StdinClosed())
