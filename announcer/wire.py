"""The wire: what the daemon puts in front of ExaBGP, and the state file that backs it.

Effects of the state machine are queued with :meth:`Wire.apply` and sent by
:meth:`Wire.flush`, write-ahead: the state file is written first, listing the prefixes
about to change as in flight; the commands then go to the output thread, and once it
reports everything written the state is written again without them. If we die in
between, the next run re-sends just those prefixes (:mod:`announcer.restore`). The
state file is also watched: changed or removed behind our back, it is written again.

Writes are spaced (:data:`SAVE_SPACING`): the daemon's thread also runs the checks, and
a thousand services changing at once (a rise after start) wrote the whole file for
every turn, back to back, while no check's answer was read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from announcer import exabgp, persist
from announcer import state as sm
from announcer.config import Settings
from announcer.errors import CommandError
from announcer.exabgp import Message, MessageKind, Rejected
from announcer.log import Logger
from announcer.runtime import ServiceRuntime

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics

Clock = Callable[[], float]
OnFlushed = Callable[[OSError | None], None]


class Output(Protocol):
    """Where commands go: :class:`announcer.exabgp.AsyncOutput` (a thread writing to
    stdout) or a test's stand-in. ``on_flushed`` is given to its factory."""

    @property
    def backlog(self) -> bool: ...

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def wait_flushed(self, timeout: float = ...) -> bool: ...


class FlushListener(Protocol):
    """Told when the wire hands its commands over, and when they are all written
    (:class:`announcer.hooks.Hooks`: hooks run only after their route change is out;
    :class:`announcer.observer.EventWrites`: how long after an event its withdraw was out)."""

    def flushed(self) -> None: ...

    def written(self) -> None: ...


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of ``path``, None if it is not there (or unreadable):
    any write or replacement by someone else changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


SAVE_SPACING = 3.0
"""After a write of the state file that took t seconds of CPU, changes wait until 3 t later
to be written (and sent) together: at most a quarter of the loop's time goes to the state
file. CPU, not wall time: waiting for the disk (fsync) holds no check back, and a slow
disk must not delay a withdraw. A change after a quiet moment goes out at once; with a few
services a write takes well under a millisecond. An operator's action and a stop are
never held."""


class Wire:
    def __init__(
        self,
        settings: Settings,
        output: Output,
        services: Mapping[str, ServiceRuntime],
        log: Logger,
        metrics: Metrics | None,
        clock: Clock,
        boottime: Clock,
    ) -> None:
        self.state_dir = settings.state_dir
        self.services = services
        self.log, self.metrics, self.clock, self.boottime = log, metrics, clock, boottime
        self.target = exabgp.Target(
            neighbors=settings.neighbors,
            next_hop=settings.next_hop,
            local_as=settings.local_as,
            next_hop6=settings.next_hop6,
        )
        self.output = output
        self.writer = exabgp.Writer(
            output,
            acks=settings.acks,
            on_rejected=self._rejected,
            clock=clock,
            writing=lambda: output.backlog,
        )
        self.identity = persist.parent_identity()
        self.boot_id = persist.boot_id()
        self.neighbors: dict[str, str] = {}
        """ExaBGP's sessions, as its neighbour messages last said (address: up/down...)."""
        self.dirty = False
        """The state file is to be written at the next flush."""
        self.state_error: str | None = None
        """Why the last write of the state file failed; None when it succeeded."""
        self._written: tuple[int, int, int] | None = None
        self._deferred: list[tuple[str, tuple[str, ...], list[str]]] = []
        self._inflight: set[str] = set()
        self._write_error_logged = False
        self._save_after = -float("inf")  # the next write waits until then (SAVE_SPACING)
        self.cpu_clock: Clock = time.thread_time
        """This thread's CPU time, for SAVE_SPACING (a test on a fake clock sets its own)."""
        self.listeners: list[FlushListener] = []

    @property
    def state_file(self) -> Path:
        return self.state_dir / persist.STATE_FILE

    # ------------------------------------------------------------ sending

    @property
    def queued(self) -> int:
        """Commands applied and not yet sent (the next :meth:`flush` sends them)."""
        return sum(len(commands) for _, _, commands in self._deferred)

    def apply(self, service: str, effect: sm.WireEffect) -> None:
        """Queue an effect; :meth:`flush` records the new state, then sends."""
        owner = self.services.get(service)
        if isinstance(effect, sm.Withdraw) and owner is not None and owner.retiring:
            # A retiring service never withdraws a prefix a live service now announces.
            held = {
                p
                for name, rt in self.services.items()
                if name != service and not rt.retiring
                for p in rt.state.wire_prefixes
            }
            if held.intersection(effect.prefixes):
                kept = tuple(p for p in effect.prefixes if p not in held)
                if not kept:
                    return
                effect = sm.Withdraw(kept, effect.attributes)
        try:
            commands = exabgp.render_effect(effect, self.target)
        except CommandError as err:
            self.log.error("invalid_command", service=service, why=str(err))
            return
        self._deferred.append((service, effect.prefixes, commands))
        self.dirty = True

    def flush(self, *, now: bool = False) -> None:
        """Write ahead, then send (see the module docstring); held until
        :meth:`next_deadline` while the last write's spacing lasts, unless ``now``."""
        if not now and self.next_deadline() is not None:
            return
        self._send()
        for listener in self.listeners:
            listener.flushed()
            if not self.output.backlog:
                listener.written()

    def _send(self) -> None:
        if not self._deferred:
            if self.dirty:
                self.save()
            return
        batch, self._deferred = self._deferred, []
        self._inflight.update(p for _, prefixes, _ in batch for p in prefixes)
        self.save()
        for service, _, commands in batch:
            try:
                self.writer.send(commands, context=service)
            except OSError as err:
                # ExaBGP is gone; stdin will close and we exit then.
                self._write_failed(str(err), service)
                continue
            if self.metrics is not None:
                self.metrics.commands(self.writer.sent)
            for c in commands:
                self.log.debug("sent", service=service, command=c)

    def next_deadline(self) -> float | None:
        """When held changes are to be written and sent; None when nothing is held."""
        held = self.dirty or self._deferred
        return self._save_after if held and self.clock() < self._save_after else None

    def commit(self) -> str | None:
        """Record and send what was decided, now (a control request's answer must say
        whether its drain was saved); returns why the state file could not be written."""
        self.dirty = True
        self.flush(now=True)
        return self.state_error

    def on_flushed(self, error: OSError | None) -> None:
        if error is not None:
            self._write_failed(str(error))
            return
        if not self.output.backlog:
            if self._inflight:
                self._inflight.clear()
                self.dirty = True
            for listener in self.listeners:
                listener.written()

    def _write_failed(self, why: str, service: str | None = None) -> None:
        if not self._write_error_logged:
            self.log.error("write_failed", service=service, why=why)
            self._write_error_logged = True

    def _rejected(self, rejected: Rejected) -> None:
        self.log.error("exabgp_error", service=rejected.context, command=rejected.command)

    # ------------------------------------------------------------ what ExaBGP says

    def receive(self, line: str) -> Message:
        """A line from ExaBGP: an ack (matched by the writer), a neighbour's state, ..."""
        message = self.writer.receive(line)
        kind = message.kind
        if self.metrics is not None and kind in (MessageKind.DONE, MessageKind.ERROR):
            self.metrics.acks(self.writer.done, self.writer.errors)
        if kind is MessageKind.NEIGHBOR and message.neighbor:
            self.neighbors[message.neighbor] = message.status or ""
            self.log.info("neighbor", neighbor=message.neighbor, status=message.status)
        elif kind is MessageKind.SHUTDOWN:
            self.log.info("exabgp_shutdown", line=message.line)
        elif kind is MessageKind.OTHER and message.line:
            self.log.debug("exabgp_said", line=message.line)
        return message

    def on_timer(self, now: float) -> None:
        """Nudge ExaBGP, or give up on commands it never answered (logged)."""
        for outcome in self.writer.on_timer(now):
            if isinstance(outcome, exabgp.Nudged):
                self.log.warning(
                    "exabgp_nudge",
                    service=outcome.again.context,
                    command=outcome.again.command,
                    silent_for=round(outcome.silent_for, 3),
                    pending=outcome.pending,
                )
            elif isinstance(outcome, exabgp.Expired):
                for gone in outcome.gone:
                    self.log.error(
                        "exabgp_no_answer",
                        service=gone.context,
                        command=gone.command,
                        after=outcome.after,
                    )

    # ------------------------------------------------------------ the state file

    def read(self) -> tuple[persist.Snapshot | None, bool]:
        """What the previous run left, and whether the file could be read."""
        try:
            return persist.read(self.state_dir), True
        except ValueError as err:
            self.log.error(
                "state_unreadable",
                why=str(err),
                action="every configured prefix may be announced: asserting the wire "
                "once the first checks decide",
            )
            return None, False

    def save(self) -> None:
        self.dirty = False
        wall, boottime, now, cpu = time.time(), self.boottime(), self.clock(), self.cpu_clock()
        try:
            self._save(wall, boottime, now)
        finally:
            self._save_after = self.clock() + SAVE_SPACING * (self.cpu_clock() - cpu)

    def _save(self, wall: float, boottime: float, now: float) -> None:
        services: dict[str, persist.ServiceRecord] = {}
        for name, rt in self.services.items():
            st = rt.state
            left = None if st.drain_deadline is None else st.drain_deadline - now
            services[name] = persist.ServiceRecord(
                route=st.route,
                prefixes=st.wire_prefixes,
                attributes=st.wire_attributes,
                operator_drain=sm.DrainSource.OPERATOR in rt.drain_sources,
                drain_reason=st.drain_reason,
                drain_deadline=None if left is None else wall + left,
                drain_boottime=None if left is None else boottime + left,
            )
        snapshot = persist.Snapshot(
            exabgp=self.identity,
            services=services,
            inflight=tuple(sorted(self._inflight)),
            boot_id=self.boot_id,
        )
        try:
            persist.write(self.state_dir, snapshot)
        except OSError as err:
            why = f"cannot write {self.state_file}: {err}"
            if why != self.state_error:
                self.log.error("state_write_failed", why=why)
            self.state_error = why
        else:
            if self.state_error is not None:
                self.log.info("state_write_ok", after=self.state_error)
            self.state_error = None
            self._written = file_identity(self.state_file)
        if self.metrics is not None:
            self.metrics.state_saved(self.state_error is None)

    def watch(self) -> None:
        """Write the state file again if anything else changed or removed it since our last
        write (truncated, corrupted, replaced, deleted): the controller ExaBGP starts after us
        reads it, and a drain missing from it would be announced again."""
        if self._written is None or self.dirty:
            return  # never written (or failing: status shows state_error), or about to be
        found = file_identity(self.state_file)
        if found == self._written:
            return
        self.log.error(
            "state_file_changed" if found is not None else "state_file_missing",
            path=str(self.state_file),
            action="written again from memory (drains included)",
        )
        self.dirty = True
