"""A command check that times out leaves no process behind, not even children that left its
session with ``setsid``.

Found by the fault suite (docs/reliability.md, row 7b): a check running
``sh -c "trap '' TERM; setsid sleep N & setsid sleep N & sleep N"`` left its two setsid'd
sleeps running after every timeout (killing the process group does not reach them), two
more processes every round.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from announcer.checks import CommandCheckSpec, build_check

needs_proc_children = pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="needs /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)",
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _sleeps(marker: str) -> list[int]:
    """Live ``sleep <marker>`` processes (argv exactly that)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()] and _alive(int(entry)):
            found.append(int(entry))
    return found


@needs_proc_children
def test_a_timed_out_check_kills_children_that_left_its_session() -> None:
    """Ignoring SIGTERM and forking two ``setsid`` children, the command times out: the
    check fails on its timeout and, once it returns, none of the three sleeps is left."""
    marker = f"{4000 + os.getpid() % 1000}.{int(time.time() * 1000) % 1000}"
    command = f"trap '' TERM; setsid sleep {marker} & setsid sleep {marker} & sleep {marker}"
    # a shell command is the point: its background jobs and setsid
    check = build_check(CommandCheckSpec(type="command", command=command, shell=True))  # noqa: S604
    try:
        started = time.monotonic()
        result = check.run(0.5)
        assert not result.ok
        assert time.monotonic() - started < 3.0  # the timeout held, not the sleeps
        deadline = time.monotonic() + 2.0  # SIGKILL sent; the kernel ends them at once
        while _sleeps(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _sleeps(marker) == []
    finally:
        for pid in _sleeps(marker):  # only if the check left them: do not leak from the test
            os.kill(pid, 9)
