"""Processes by PID, read from /proc.

PID 1 on the test machines reaps orphans late, so a dead process can linger as a
zombie for a second or two: "alive" here means "exists and is not a zombie".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc/PID/stat, or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces or parentheses
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0]


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is neither a zombie nor dead."""
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X", "x")


def parent_pid(pid: int) -> int | None:
    """The parent PID of ``pid``, or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split(" ")[1])


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (empty if it is gone or a zombie)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    """Every PID currently listed in /proc."""
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of ``pid``."""
    return sorted(p for p in all_pids() if parent_pid(p) == pid and is_alive(p))


def pids_with_marker(marker: str) -> list[int]:
    """Live processes (other than this one) with ``marker`` anywhere in their argv."""
    me = os.getpid()
    return sorted(
        pid
        for pid in all_pids()
        if pid != me and is_alive(pid) and any(marker in arg for arg in cmdline(pid))
    )


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each live PID, ignoring the ones that are already gone."""
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every PID is gone or a zombie; return those still alive at the deadline."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = [pid for pid in pending if is_alive(pid)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.01)


def kill_pids(pids: Iterable[int], *, grace: float = 3.0) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return PIDs that survived both."""
    pending = [pid for pid in pids if is_alive(pid)]
    if not pending:
        return []
    if grace > 0:
        signal_pids(pending, signal.SIGTERM)
        pending = wait_gone(pending, grace)
    signal_pids(pending, signal.SIGKILL)
    return wait_gone(pending, 3.0)


@dataclass
class Managed:
    """A process the lab started (its direct child), with a role name and a log file."""

    role: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        """The PID (the real program: ``ip netns exec`` execs, it does not fork)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process runs (reaps it if it has ended)."""
        return self.popen.poll() is None and is_alive(self.pid)

    def stop(self, *, grace: float = 3.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Send ``sig``, then SIGKILL after ``grace`` seconds; reap; return the exit code."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                if sig != signal.SIGKILL:
                    self.popen.send_signal(signal.SIGCONT)  # a stopped process cannot end
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5.0)
        return self.popen.poll()

    def kill(self) -> int | None:
        """SIGKILL at once and reap."""
        return self.stop(grace=5.0, sig=signal.SIGKILL)
