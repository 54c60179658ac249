"""The benchmark's floor (tests/bench/floor.py) with real child processes: it is P1 (d)'s
yardstick, so it must withdraw when the process dies and follow a rewritten pid file."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench import floor

PREFIX = "192.0.2.10/32"


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _line(proc: subprocess.Popen[str], limit: float = 10.0) -> str:
    """The floor's next command (bounded wait, so a broken floor fails instead of hanging)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], limit)
    assert ready, "the floor wrote nothing"
    return proc.stdout.readline().strip()


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_withdraws_when_the_process_dies_and_announces_its_successor(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """Announce while the pid file's process lives, withdraw once it is SIGKILLed, announce
    again once the pid file names a new live process; EOF on stdin ends it cleanly."""
    pid_file = tmp_path / "web.pid"
    first = _sleeper()
    children.append(first)
    pid_file.write_text(f"{first.pid}\n")
    argv = [sys.executable, floor.__file__, "--pid-file", str(pid_file), "--prefix", PREFIX]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert _line(proc) == f"announce route {PREFIX} next-hop self med 100"
        first.kill()
        first.wait()
        assert _line(proc) == f"withdraw route {PREFIX} next-hop self"
        second = _sleeper()
        children.append(second)
        pid_file.write_text(f"{second.pid}\n")
        assert _line(proc) == f"announce route {PREFIX} next-hop self med 100"
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_file_naming_nothing_announces_nothing(tmp_path: Path) -> None:
    """A pid file whose process is gone (or that holds no number) is no live process."""
    gone = _sleeper()
    gone.kill()
    gone.wait()
    pid_file = tmp_path / "web.pid"
    pid_file.write_text(f"{gone.pid}\n")
    assert floor.live_pid(str(pid_file), None) is None
    pid_file.write_text("not a pid\n")
    assert floor.live_pid(str(pid_file), None) is None
    assert floor.live_pid(str(tmp_path / "missing.pid"), None) is None
