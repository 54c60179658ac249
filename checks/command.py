"""The command check: run a local program; exit status 0 means healthy.

The command runs in a session (and so a process group) of its own, with stdin
from ``/dev/null``. Its outcome is the exit status of the process started, and
its reason the first non-blank line of its stdout, else of its stderr, else
``exit N`` (``killed by SIGNAME`` if a signal ended it).

Nothing a command does can hold a run past its timeout: output is read with
``select`` against the deadline rather than until end-of-file, so children that
keep the pipes open do not matter. When the started process exits, what is
already in the pipes is read for a short grace period; then, and also on a
timeout, the whole process group is sent SIGKILL and the process is reaped. A
check therefore never leaves processes behind in its group, even on success.
(The group is signalled while its leader is not yet reaped, so its id cannot
have been reused by an unrelated process.) Descendants that left the group
(``setsid``) are found through the process tree and killed too, as long as a
parent of theirs still runs when the check ends (a check that times out); one
detached on purpose by a command that already exited belongs to init by then.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import signal
import subprocess
from dataclasses import dataclass, field

from announcer.checks._text import first_line, one_line, timeout_reason
from announcer.checks.base import CheckResult, Clock, monotonic, timed_run
from announcer.checks.specs import CommandCheckSpec

__all__ = ["CommandCheck"]

MAX_OUTPUT = 64 * 1024
"""Bytes kept of each of stdout and stderr; more is read and dropped so the command never
blocks on a full pipe."""

EXIT_GRACE = 0.2
"""Seconds to keep reading pipes after the process exited, for output still in flight."""

POLL_INTERVAL = 0.02
"""How often to look for the exit where the OS offers no pidfd to wait on."""

REAP_WAIT = 1.0
"""Seconds to wait at most for the killed process to be reaped."""

_READ_SIZE = 64 * 1024


@dataclass
class _Output:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exited: bool = False
    timed_out: bool = False


class CommandCheck:
    """Runs a :class:`CommandCheckSpec`; see the module docstring for process handling."""

    def __init__(self, spec: CommandCheckSpec, *, clock: Clock = monotonic) -> None:
        self._spec = spec
        self._clock = clock

    @property
    def name(self) -> str:
        if self._spec.shell:
            return one_line(f"command sh -c {shlex.quote(self._spec.command or '')}")
        return one_line(f"command {shlex.join(self._spec.argv or ())}")

    def run(self, timeout: float) -> CheckResult:
        return timed_run(self._clock, lambda start: self._run(start + timeout, timeout))

    def close(self) -> None:
        """Nothing is kept between runs."""

    def _run(self, deadline: float, timeout: float) -> tuple[bool, str]:
        spec = self._spec
        args: str | list[str] = (spec.command or "") if spec.shell else list(spec.argv or ())
        env = None if spec.env is None else {**os.environ, **spec.env}
        try:
            process = subprocess.Popen(
                args,
                shell=spec.shell,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd=spec.cwd,
            )
        except OSError as exc:
            what = exc.filename if exc.filename is not None else args
            detail = (exc.strerror or type(exc).__name__).lower()
            return False, one_line(f"cannot run: {what}: {detail}")
        try:
            output = self._collect(process, deadline)
        finally:
            _kill_and_reap(process)
        if output.timed_out:
            return False, timeout_reason(timeout)
        status = process.returncode
        reason = (
            first_line(output.stdout.decode(errors="replace"))
            or first_line(output.stderr.decode(errors="replace"))
            or _describe_status(status)
        )
        return status == 0, reason

    def _collect(self, process: subprocess.Popen[bytes], deadline: float) -> _Output:
        """Read output until the process exits (plus a grace period) or the deadline passes."""
        output = _Output()
        buffers: dict[int, bytearray] = {}
        with contextlib.ExitStack() as stack:
            selector = stack.enter_context(selectors.DefaultSelector())
            for stream, buffer in (
                (process.stdout, output.stdout),
                (process.stderr, output.stderr),
            ):
                if stream is not None:
                    selector.register(stream.fileno(), selectors.EVENT_READ)
                    buffers[stream.fileno()] = buffer
            pidfd = _open_pidfd(process.pid)
            if pidfd is not None:
                stack.callback(os.close, pidfd)
                selector.register(pidfd, selectors.EVENT_READ)
            stop_at = deadline
            while True:
                if not output.exited and _has_exited(process.pid):
                    output.exited = True
                    stop_at = min(self._clock() + EXIT_GRACE, deadline)
                    if pidfd is not None:
                        selector.unregister(pidfd)
                if output.exited and not buffers:
                    break
                wait = stop_at - self._clock()
                if wait <= 0:
                    output.timed_out = not output.exited
                    break
                if pidfd is None and not output.exited:
                    wait = min(wait, POLL_INTERVAL)
                for key, _ in selector.select(wait):
                    fd = int(key.fd)
                    if fd == pidfd:
                        continue
                    data = os.read(fd, _READ_SIZE)
                    if not data:
                        selector.unregister(fd)
                        del buffers[fd]
                    elif len(buffers[fd]) < MAX_OUTPUT:
                        buffers[fd] += data[: MAX_OUTPUT - len(buffers[fd])]
        return output


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (so its group id stays reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _children(pid: int) -> list[int]:
    """Live children of ``pid`` (every thread's ``/proc/PID/task/TID/children``); empty when
    the kernel does not say (no such process, or no CONFIG_PROC_CHILDREN)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh,
            ):
                kids += [int(k) for k in fh.read().split()]
    return kids


def _freeze_descendants(pid: int) -> list[int]:
    """SIGSTOP every descendant of ``pid`` (so none forks meanwhile) and return them.

    Descendants that left the check's session (``setsid``) escape the group kill; they are
    found through the process tree while their parents still hold them.
    """
    frozen: list[int] = []
    for _ in range(4):  # a process forked just before it was stopped is found next pass
        todo, fresh = [pid], []
        while todo:
            for kid in _children(todo.pop()):
                todo.append(kid)
                if kid not in frozen:
                    fresh.append(kid)
        if not fresh:
            break
        for kid in fresh:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(kid, signal.SIGSTOP)
        frozen += fresh
    return frozen


def _kill_and_reap(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group, the process (should it have left the group) and every
    descendant that left the group (``setsid``); reap the process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGSTOP)
    strays = _freeze_descendants(process.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        process.kill()
    for pid in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # Bounded: a process stuck in the kernel (say, on a dead NFS mount) cannot die at once;
    # Popen then reaps it later by itself.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=REAP_WAIT)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _describe_status(status: int) -> str:
    if status >= 0:
        return f"exit {status}"
    try:
        return f"killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"killed by signal {-status}"
