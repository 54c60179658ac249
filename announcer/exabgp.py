"""Everything about ExaBGP's text API lives here: the command syntax, and the one
writer that sends commands and matches ExaBGP's answers.

ExaBGP reads our stdout line by line and answers each command with ``done`` or
``error`` on our stdin (unless acks are switched off), in order. It also writes
``neighbor <ip> up|down|connected`` when sessions change (``neighbor-changes``)
and ``shutdown`` when it stops. Its ``error`` carries no reason, so every
command is validated here before it is written; a command that fails validation
raises :class:`~announcer.errors.CommandError` and is never sent.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from announcer.errors import CommandError
from announcer.state import Announce, RouteAttributes, WireEffect

_U32 = 2**32 - 1
# ASCII digits only, and \Z (not $, which also matches before a trailing newline).
_COMMUNITY = re.compile(r"^(\d{1,5}):(\d{1,5})\Z", re.ASCII)
_LARGE = re.compile(r"^(\d{1,10}):(\d{1,10}):(\d{1,10})\Z", re.ASCII)


# ---------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how routes are announced: the neighbour selector, next-hop and local AS.

    ``neighbors`` empty means every neighbour (no selector in the command).
    """

    neighbors: tuple[str, ...] = ()
    next_hop: str = "self"
    local_as: int | None = None
    next_hop6: str | None = None
    """Next-hop for IPv6 prefixes; None uses ``next_hop``. An IPv6 route over an IPv4
    session needs an explicit IPv6 next-hop (``self`` is refused there)."""

    def next_hop_for(self, v6: bool) -> str:
        return self.next_hop6 if v6 and self.next_hop6 is not None else self.next_hop


BATCH = 1000
"""Prefixes per ``announce attributes ... nlri`` command (both ExaBGP versions take
10,000; one ack per line; smaller lines keep a rejected batch small)."""


def render_selector(neighbors: Sequence[str]) -> str:
    """``neighbor A`` or ``neighbor A , neighbor B`` (spaces around the comma matter)."""
    out = []
    for n in neighbors:
        try:
            out.append(f"neighbor {ipaddress.ip_address(n)}")
        except ValueError as err:
            raise CommandError(f"neighbour {n!r} is not an IP address") from err
    return " , ".join(out)


def _prefix(prefix: str) -> str:
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError as err:
        raise CommandError(f"bad prefix {prefix!r}: {err}") from err
    return str(net)


def _next_hop(next_hop: str) -> str:
    if next_hop == "self":
        return "self"
    try:
        return str(ipaddress.ip_address(next_hop))
    except ValueError as err:
        raise CommandError(f"bad next-hop {next_hop!r}") from err


def render_attributes(attrs: RouteAttributes, target: Target, *, v6: bool = False) -> str:
    """The attribute words after the prefix, next-hop first."""
    words = [f"next-hop {_next_hop(target.next_hop_for(v6))}"]
    if attrs.med is not None:
        if not 0 <= attrs.med <= _U32:
            raise CommandError(f"med {attrs.med} out of range")
        words.append(f"med {attrs.med}")
    if attrs.local_preference is not None:
        if not 0 <= attrs.local_preference <= _U32:
            raise CommandError(f"local-preference {attrs.local_preference} out of range")
        words.append(f"local-preference {attrs.local_preference}")
    if attrs.as_path_prepend:
        if target.local_as is None:
            raise CommandError("as-path prepend needs the local AS")
        if not 1 <= target.local_as <= _U32:
            raise CommandError(f"local AS {target.local_as} out of range")
        if not 0 < attrs.as_path_prepend <= 16:
            raise CommandError(f"as-path prepend {attrs.as_path_prepend} out of range")
        # ExaBGP sends a given AS path as written, so our own AS is included once
        # plus once per prepend.
        path = " ".join([str(target.local_as)] * (attrs.as_path_prepend + 1))
        words.append(f"as-path [ {path} ]")
    if attrs.communities:
        for c in attrs.communities:
            m = _COMMUNITY.match(c)
            if not m or int(m[1]) > 65535 or int(m[2]) > 65535:
                raise CommandError(f"bad community {c!r}")
        words.append(f"community [ {' '.join(attrs.communities)} ]")
    if attrs.large_communities:
        for c in attrs.large_communities:
            m = _LARGE.match(c)
            if not m or any(int(g) > _U32 for g in m.groups()):
                raise CommandError(f"bad large community {c!r}")
        words.append(f"large-community [ {' '.join(attrs.large_communities)} ]")
    return " ".join(words)


def _with_selector(target: Target, command: str) -> str:
    selector = render_selector(target.neighbors)
    return f"{selector} {command}" if selector else command


def _by_family(prefixes: Iterable[str]) -> list[tuple[bool, list[str]]]:
    """Validated prefixes grouped by family (v4 first), order kept within each."""
    v4: list[str] = []
    v6: list[str] = []
    for p in prefixes:
        text = _prefix(p)
        (v6 if ":" in text else v4).append(text)
    return [(fam, group) for fam, group in ((False, v4), (True, v6)) if group]


def _render(
    verb: str, prefixes: Iterable[str], tail: Callable[[bool], str], target: Target
) -> list[str]:
    """One ``route`` command for a lone prefix, ``attributes ... nlri`` batches otherwise.

    ExaBGP refuses IPv4 and IPv6 prefixes on one ``nlri`` line, so each family
    gets its own lines.
    """
    out: list[str] = []
    for v6, group in _by_family(prefixes):
        words = tail(v6)
        if len(group) == 1:
            out.append(_with_selector(target, f"{verb} route {group[0]} {words}"))
            continue
        for i in range(0, len(group), BATCH):
            nlri = " ".join(group[i : i + BATCH])
            out.append(_with_selector(target, f"{verb} attributes {words} nlri {nlri}"))
    return out


def render_announce(prefixes: Iterable[str], attrs: RouteAttributes, target: Target) -> list[str]:
    """Commands announcing ``prefixes`` with ``attrs``."""
    return _render("announce", prefixes, lambda v6: render_attributes(attrs, target, v6=v6), target)


def render_withdraw(
    prefixes: Iterable[str], target: Target, attrs: RouteAttributes | None = None
) -> list[str]:
    """Commands withdrawing ``prefixes``.

    Pass the attributes the prefixes were announced with: ExaBGP 5.0 can drop a
    withdraw whose attributes differ from a queued announce of the same prefix
    (seen when both arrive before the session is up), and 4.2 ignores a batched
    withdraw without a next-hop.
    """

    def tail(v6: bool) -> str:
        if attrs is not None:
            return render_attributes(attrs, target, v6=v6)
        return f"next-hop {_next_hop(target.next_hop_for(v6))}"

    return _render("withdraw", prefixes, tail, target)


def render_effect(effect: WireEffect, target: Target) -> list[str]:
    """The commands that put one state-machine effect on the wire (a withdraw with the
    attributes its prefixes were last announced with)."""
    if isinstance(effect, Announce):
        return render_announce(effect.prefixes, effect.attributes, target)
    return render_withdraw(effect.prefixes, target, effect.attributes)


# ---------------------------------------------------------------- what ExaBGP says


class MessageKind(enum.Enum):
    DONE = "done"
    ERROR = "error"
    NEIGHBOR = "neighbor"
    SHUTDOWN = "shutdown"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Message:
    """One line ExaBGP wrote to our stdin, classified."""

    kind: MessageKind
    line: str
    neighbor: str | None = None
    status: str | None = None


_SESSION_STATUSES = frozenset({"up", "down", "connected"})


def parse_line(line: str) -> Message:
    """Classify a line from ExaBGP (text encoder)."""
    text = line.strip()
    if text == "done":
        return Message(MessageKind.DONE, text)
    if text == "error":
        return Message(MessageKind.ERROR, text)
    if text == "shutdown" or text.startswith("shutdown "):
        return Message(MessageKind.SHUTDOWN, text)
    words = text.split()
    # ``neighbor <ip> up``, ``... connected``, ``... down - <reason>``: the status is the
    # third word (the reason after ``down -`` can be several words).
    if len(words) >= 3 and words[0] == "neighbor" and words[2] in _SESSION_STATUSES:
        return Message(MessageKind.NEIGHBOR, text, neighbor=words[1], status=words[2])
    return Message(MessageKind.OTHER, text)


# ---------------------------------------------------------------- the writer


class ByteSink(Protocol):
    """Where commands are written: a binary stream, or :class:`AsyncOutput`."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class AsyncOutput:
    """A write-only stream that hands bytes to a thread which writes them to ``out``.

    ExaBGP may read our stdout slowly (a burst of 50,000 prefixes takes it tens of
    seconds): a blocking write must never hold up the main loop, or checks stop and
    the stall guard ends the process. ``on_flushed(error)`` is called from the
    thread each time everything queued has been written (``error`` is the OSError
    that stopped writing, if any).
    """

    FLUSH_TIMEOUT = 5.0
    """On exit, how long to wait for queued commands (e.g. SIGTERM's withdraws) to be
    written (:meth:`wait_flushed`)."""

    def __init__(
        self,
        out: BinaryIO,
        on_flushed: Callable[[OSError | None], None] | None = None,
    ) -> None:
        self._out = out
        self._on_flushed = on_flushed
        self._chunks: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="stdout", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> bool:
        """Something is queued or being written."""
        with self._cond:
            return self._busy or bool(self._chunks)

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        with self._cond:
            self._chunks.append(bytes(data))
            self._cond.notify()
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the thread writes and flushes as soon as it can."""

    def wait_flushed(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Block until everything queued is written (or writing failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._chunks:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return not (self._busy or self._chunks)
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks:
                    self._cond.wait()
                data = b"".join(self._chunks)
                self._chunks.clear()
                self._busy = True
            error: OSError | None = None
            try:
                self._out.write(data)
                self._out.flush()
            except OSError as err:
                error = self.error = err
            except ValueError as err:  # closed
                error = self.error = OSError(str(err))
            with self._cond:
                self._busy = False
                flushed = not self._chunks
                self._cond.notify_all()
            if flushed and self._on_flushed is not None:
                self._on_flushed(error)
            if error is not None:
                return


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command ExaBGP answered with ``error``."""

    command: str
    context: str


ACK_TIMEOUT = 10.0
"""Seconds after which an unanswered ExaBGP command is given up on (4.2 may never answer)."""
NUDGE_AFTER = 2.0
"""Seconds of silence from ExaBGP, with commands unanswered and all written, after which
the last command is written again (:meth:`Writer.nudge`): ExaBGP 4.2 can leave the end of
a burst unread until more bytes arrive. Acks come every few hundred ms even while ExaBGP
works through 50,000 prefixes, so a busy ExaBGP is not nudged. Unanswered commands are
also only given up (:data:`ACK_TIMEOUT`) after this much silence."""


@dataclass(frozen=True, slots=True)
class Nudged:
    """The last unanswered command was written again after ``silent_for`` s of silence."""

    again: Rejected
    silent_for: float
    pending: int


@dataclass(frozen=True, slots=True)
class Expired:
    """Commands unanswered for :data:`ACK_TIMEOUT` were given up (counted as errors)."""

    gone: tuple[Rejected, ...]
    after: float = ACK_TIMEOUT


WriterOutcome = Nudged | Expired


class Writer:
    """The only thing that writes to ExaBGP.

    ``send`` writes and flushes commands; ``receive`` takes each line read from
    stdin (the daemon's reader thread hands them over) and matches ``done`` /
    ``error`` to the oldest unanswered command. ``on_rejected`` is called for
    every ``error`` with the command that caused it.

    It owns its timing: the loop asks :meth:`next_deadline` when to wake up for it
    and calls :meth:`on_timer`, which nudges a silent ExaBGP or gives up on
    commands it never answered. ``writing()`` says whether bytes are still on
    their way (the output thread): ExaBGP cannot answer what it has not read, so
    no timer runs meanwhile.
    """

    def __init__(
        self,
        out: ByteSink,
        *,
        acks: bool = True,
        on_rejected: Callable[[Rejected], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        writing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._out = out
        self._writing = writing
        self.acks = acks
        self._clock = clock
        self._pending: deque[tuple[str, str, float]] = deque()
        self.unanswered = 0
        self._on_rejected = on_rejected
        self.sent = 0
        self.done = 0
        self.errors = 0
        self.unexpected_acks = 0
        self.nudges = 0
        self.last_error: Rejected | None = None
        self._last_ack = -math.inf
        self._last_send = -math.inf
        self._progress = 0  # answers received plus writes made: a new silence starts at each
        self._nudged_for = -1  # the _progress value whose silence was nudged

    @property
    def pending(self) -> int:
        """Commands written and not yet answered."""
        return len(self._pending)

    def pending_for(self, context: str) -> bool:
        """Whether a command sent for ``context`` (a service) is still unanswered."""
        return any(c == context for _, c, _ in self._pending)

    def send(self, commands: Sequence[str], context: str = "") -> None:
        """Write commands (one per line) and flush. Raises OSError if ExaBGP is gone."""
        if not commands:
            return
        for c in commands:
            if "\n" in c or "\r" in c:
                raise CommandError(f"command contains a line break: {c!r}")
        self._out.write("".join(c + "\n" for c in commands).encode())
        self._out.flush()
        self.sent += len(commands)
        if self.acks:
            now = self._clock()
            self._last_send = now
            self._progress += 1
            self._pending.extend((c, context, now) for c in commands)

    def receive(self, line: str) -> Message:
        """Handle one line from ExaBGP; returns it classified."""
        msg = parse_line(line)
        if msg.kind in (MessageKind.DONE, MessageKind.ERROR):
            if not self._pending:
                self.unexpected_acks += 1
                return msg
            command, context, _ = self._pending.popleft()
            self._last_ack = self._clock()
            self._progress += 1
            if msg.kind is MessageKind.DONE:
                self.done += 1
            else:
                self.errors += 1
                self.last_error = Rejected(command, context)
                if self._on_rejected is not None:
                    self._on_rejected(self.last_error)
        return msg

    def expire(self, older_than: float, quiet: float = 0.0) -> list[Rejected]:
        """Give up on commands unanswered for ``older_than`` seconds, unless an ack came in
        the last ``quiet`` seconds (ExaBGP is still working through a burst).

        ExaBGP 4.2 answers some refused commands with nothing at all; without this
        every later ack would be matched to the wrong command. Expired commands
        count as errors and are returned so the caller can report them.
        """
        now = self._clock()
        if now - self._last_ack < quiet:
            return []
        limit = now - older_than
        gone: list[Rejected] = []
        while self._pending and self._pending[0][2] <= limit:
            command, context, _ = self._pending.popleft()
            gone.append(Rejected(command, context))
        if gone:
            self.unanswered += len(gone)
            self.errors += len(gone)
            self.last_error = gone[-1]
        return gone

    @property
    def quiet_since(self) -> float:
        """When ExaBGP last answered or we last wrote, whichever is later."""
        return max(self._last_ack, self._last_send)

    @property
    def last_ack(self) -> float:
        """When the last ``done`` or ``error`` arrived (-inf: never)."""
        return self._last_ack

    @property
    def nudge_due(self) -> bool:
        """Commands are waiting and this silence has not been nudged yet."""
        return bool(self._pending) and self._nudged_for != self._progress

    def nudge(self) -> Rejected | None:
        """Write the last unanswered command again; returns it (None if nothing waits).

        ExaBGP 4.2 reads its API pipe through a buffered file and polls the pipe
        itself: bytes already in the buffer are not seen until more arrive, so the
        end of a burst can sit unread (docs/exabgp-api.md, section 7). Any new byte
        frees it; the last command is the one byte string that is safe to repeat,
        because it is the last: the wire ends in the same state, and the repeat is
        answered like any command.
        """
        if not self._pending:
            return None
        command, context, _ = self._pending[-1]
        self.send([command], context)
        self._nudged_for = self._progress  # once per silence: due again after any progress
        self.nudges += 1
        return Rejected(command, context)

    @property
    def oldest_pending(self) -> float | None:
        """When the oldest unanswered command was sent."""
        return self._pending[0][2] if self._pending else None

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do; None while nothing waits for an
        answer, or while bytes are still being written (their end wakes the loop)."""
        if not self._pending or self._writing():
            return None
        oldest = self._pending[0][2]
        times = [max(oldest + ACK_TIMEOUT, self._last_ack + NUDGE_AFTER)]
        if self.nudge_due:
            times.append(self.quiet_since + NUDGE_AFTER)
        return min(times)

    def on_timer(self, now: float) -> list[WriterOutcome]:
        """Nudge a silent ExaBGP, give up on commands it never answered; what was done."""
        if not self._pending or self._writing():
            return []
        outcomes: list[WriterOutcome] = []
        if self.nudge_due and now - self.quiet_since >= NUDGE_AFTER:
            silent_for = now - self.quiet_since
            again = self.nudge()
            if again is not None:
                outcomes.append(Nudged(again, silent_for, self.pending))
        oldest = self.oldest_pending
        if oldest is not None and now - oldest >= ACK_TIMEOUT:
            gone = self.expire(ACK_TIMEOUT, quiet=NUDGE_AFTER)
            if gone:
                outcomes.append(Expired(tuple(gone)))
        return outcomes
