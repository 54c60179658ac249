"""The process check: healthy while a process is alive, and its death is an event.

The process is the one a pid file names (``pid_file``) or a systemd unit's main
process (``unit``: ``MainPID`` from ``systemctl show``). Each run finds the process
again (so a rewritten pid file or a restarted unit is followed) and keeps a pidfd on
it (``os.pidfd_open``, Linux 5.3): a pidfd names *that* process, never a later one
that reuses its pid, and becomes readable when it exits. With :meth:`watch` (the
daemon calls it for checks marked ``immediate``) the pidfd is also a reader on the
check loop (:mod:`announcer.runner`), so the death is reported the moment the kernel
knows it, with no polling and no CPU while the process lives.

Pid reuse: a pid file can outlive its process, and its pid can be given to another
one. A pid whose process started after the file was last written is refused (the
start time comes from ``/proc/PID/stat``; where ``/proc`` hides it, e.g. another
user's process under ``ProtectProc=invisible``, this one test is skipped: the pidfd
still tells the death of the process it was opened on).

``grace``: a death followed within that many seconds by a new live process (the
unit's new main PID, or the pid file rewritten) is no failure; the event is held
until the grace ends and is dropped if a new process is found then.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from typing import ClassVar

from announcer.checks._text import first_line, one_line, seconds, timeout_reason
from announcer.checks.aio import run_blocking, timed_arun
from announcer.checks.base import CheckResult, Clock, monotonic
from announcer.checks.specs import ProcessCheckSpec

__all__ = ["OnEvent", "ProcessCheck", "started_at"]

OnEvent = Callable[[CheckResult, float], None]
"""Called from the check loop's thread with a failed result and when (the check's clock)
the failure happened."""

REUSE_SLACK = 1.0
"""Seconds a process may seem to start after its pid file was written: the boot time in
``/proc/stat`` is whole seconds, so computed start times are that coarse."""
GRACE_LOOKUP = 5.0
"""Seconds the look for a new process at the end of a grace may take."""
UNIT_RECHECK = 60.0
"""Seconds between asking systemd for a unit's MainPID while the process followed lives.
Asking is a ``systemctl`` process (milliseconds of CPU), too dear for every round at no
idle cost; its death needs no asking (the pidfd's event, and a fresh ask at the next
round), so this only bounds how late a new main process that took over while the old
one still runs is followed."""


class _Failed(Exception):
    """A run's failure, already worded (turned into the result's reason)."""


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (wall clock, whole-second precision), or None where
    ``/proc`` does not show it (gone, or hidden by ``hidepid``/``ProtectProc=``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
        # Field 22, counted after the command name, which may hold spaces and ')'.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _exited(pidfd: int) -> bool:
    """A pidfd is readable once its process has exited (zombie or reaped)."""
    return bool(select.select([pidfd], [], [], 0)[0])


class ProcessCheck:
    """Runs a :class:`ProcessCheckSpec`. Its state (the pidfd, the reader, a grace under
    way) lives on the loop that runs :meth:`arun`; :meth:`close` may come from any thread."""

    SYSTEMCTL: ClassVar[str] = "systemctl"
    """The program asked for a unit's main PID (tests put a stand-in on ``PATH``)."""

    def __init__(self, spec: ProcessCheckSpec, *, clock: Clock = monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._pid: int | None = None
        """The process followed (also after it died, until another is found)."""
        self._pidfd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._on_event: OnEvent | None = None
        self._grace: asyncio.Task[None] | None = None
        self._grace_until: float | None = None
        self._asked: float | None = None
        """When systemd was last asked for the unit's MainPID."""

    @property
    def name(self) -> str:
        spec = self._spec
        return f"process {spec.pid_file}" if spec.unit is None else f"process unit {spec.unit}"

    def watch(self, on_event: OnEvent) -> None:
        """Report the followed process's death through ``on_event`` as it happens (from the
        next run on, which opens the pidfd on the loop)."""
        self._on_event = on_event

    def run(self, timeout: float) -> CheckResult:
        return run_blocking(lambda: self.arun(timeout))

    async def arun(self, timeout: float) -> CheckResult:
        def translate(exc: Exception) -> str | None:
            if isinstance(exc, _Failed):
                return str(exc)
            if isinstance(exc, TimeoutError):
                return timeout_reason(timeout)
            return None

        async def body(start: float) -> tuple[bool, str]:
            try:
                return True, await asyncio.wait_for(self._look(), timeout)
            except _Failed as failed:
                if self._grace_until is not None and self._clock() < self._grace_until:
                    return True, one_line(f"within grace {seconds(self._spec.grace)}s: {failed}")
                raise

        return await timed_arun(self._clock, body, translate)

    def close(self) -> None:
        """Drop the pidfd, its reader and a grace under way; safe to call twice, from any
        thread."""
        self._on_event = None
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                loop.call_soon_threadsafe(self._stop)
                return
            except RuntimeError:
                pass  # the loop closed meanwhile: nothing runs there any more
        self._stop()

    def _stop(self) -> None:
        if self._grace is not None and not self._grace.done():
            self._grace.cancel()
        self._drop()

    # ------------------------------------------------------------ finding the process

    async def _look(self) -> str:
        """Find the process and follow it: the reason of a pass, or :class:`_Failed`."""
        self._loop = asyncio.get_running_loop()
        pid, written = await self._target()
        if pid == self._pid and self._pidfd is not None:
            if not _exited(self._pidfd):
                return f"pid {pid} alive"
            self._drop()  # dead, and its reader (if any) has not run yet
            if self._spec.grace > 0 and self._grace_until is None:
                self._grace_until = self._clock() + self._spec.grace
            raise _Failed(f"pid {pid} exited")
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise _Failed(f"{self._source()} names pid {pid}: no such process") from None
        try:
            began = started_at(pid) if written is not None else None
            if began is not None and written is not None and began > written + REUSE_SLACK:
                raise _Failed(
                    f"{self._source()} names pid {pid}, whose process started after the file"
                    " was written (a reused pid)"
                )
            if _exited(fd):
                raise _Failed(f"{self._source()} names pid {pid}, which has exited")
        except BaseException:
            os.close(fd)
            raise
        self._follow(pid, fd)
        return f"pid {pid} alive"

    def _source(self) -> str:
        spec = self._spec
        return f"pid file {spec.pid_file}" if spec.unit is None else f"unit {spec.unit}"

    async def _target(self) -> tuple[int, float | None]:
        """The pid to follow, and when the pid file naming it was written (None: a unit)."""
        if self._spec.pid_file is not None:
            return _read_pid_file(self._spec.pid_file)
        now = self._clock()
        fresh = self._asked is not None and now - self._asked < UNIT_RECHECK
        if fresh and self._pid is not None and self._pidfd is not None:
            return self._pid, None  # still the main process while it lives (see UNIT_RECHECK)
        pid = await self._main_pid()
        self._asked = now
        return pid, None

    async def _main_pid(self) -> int:
        unit = self._spec.unit
        try:
            proc = await asyncio.create_subprocess_exec(
                self.SYSTEMCTL,
                "show",
                "--property=MainPID,ActiveState",
                "--",
                str(unit),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise _Failed(one_line(f"cannot run systemctl: {exc.strerror or exc}")) from None
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
            raise
        if proc.returncode != 0:
            why = first_line(err.decode(errors="replace")) or f"exit status {proc.returncode}"
            raise _Failed(one_line(f"systemctl show {unit}: {why}"))
        props = dict(line.partition("=")[::2] for line in out.decode(errors="replace").splitlines())
        pid = props.get("MainPID", "").strip()
        if not pid.isdigit():
            raise _Failed(one_line(f"systemctl show {unit}: no MainPID in its answer"))
        if int(pid) == 0:
            state = props.get("ActiveState", "").strip() or "unknown"
            raise _Failed(f"unit {unit} has no main process ({state})")
        return int(pid)

    # ------------------------------------------------------------ following it

    def _follow(self, pid: int, fd: int) -> None:
        self._drop()
        self._pid, self._pidfd = pid, fd
        self._grace_until = None  # a new live process ends a grace
        if self._on_event is not None and self._loop is not None:
            self._loop.add_reader(fd, self._died)
            self._reading = True

    def _drop(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is None:
            return
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        self._reading = False
        os.close(fd)

    def _died(self) -> None:
        """The pidfd's reader (the loop's thread): the followed process has exited."""
        at = self._clock()
        pid = self._pid
        self._drop()
        if self._spec.grace <= 0:
            self._emit(f"pid {pid} exited", at)
            return
        self._grace_until = at + self._spec.grace
        if self._grace is None or self._grace.done():
            self._grace = asyncio.get_running_loop().create_task(self._after_grace(pid, at))

    async def _after_grace(self, pid: int | None, at: float) -> None:
        """A grace's end: a new live process by now means a restart, no failure."""
        await asyncio.sleep(max(0.0, at + self._spec.grace - self._clock()))
        self._grace_until = None
        try:
            await asyncio.wait_for(self._look(), GRACE_LOOKUP)
        except (_Failed, TimeoutError, OSError) as exc:
            why = str(exc) if isinstance(exc, _Failed) else type(exc).__name__
            grace = seconds(self._spec.grace)
            self._emit(f"pid {pid} exited; no new process within grace {grace}s: {why}", at)

    def _emit(self, reason: str, at: float) -> None:
        on_event = self._on_event
        if on_event is not None:
            on_event(CheckResult(False, one_line(reason), 0.0), at)


def _read_pid_file(path: str) -> tuple[int, float]:
    try:
        with open(path, "rb") as f:
            written = os.fstat(f.fileno()).st_mtime
            text = f.read(64).decode("ascii", errors="replace")
    except FileNotFoundError:
        raise _Failed(f"pid file {path} missing") from None
    except OSError as exc:
        why = (exc.strerror or type(exc).__name__).lower()
        raise _Failed(one_line(f"cannot read pid file {path}: {why}")) from None
    word = text.split()[0] if text.split() else ""
    if not word:
        raise _Failed(f"pid file {path} is empty")
    if not word.isdigit() or int(word) <= 0:
        raise _Failed(one_line(f"pid file {path} does not hold a pid: {word!r}"))
    return int(word), written
