"""The running daemon keeps its state file: changed or removed behind its back, it is written
again from memory, so the controller ExaBGP starts after this one still finds the drains.

Found by the fault suite (docs/reliability.md, rows 5c-5f): a state file truncated,
corrupted, replaced by a newer version's or deleted while the controller ran made the next
controller forget an operator's drain and announce the drained node again.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from announcer import config as cfg
from announcer import persist
from announcer.daemon import Daemon
from announcer.log import Logger


def _config(tmp: Path) -> Path:
    flag = tmp / "ok"
    flag.touch()
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f'maintenance_file = "{tmp / "maintenance"}"\n'
        'include = ""\n'
        "[defaults]\ninterval = 0.1\nfast_interval = 0.05\nrise = 1\nfall = 1\n"
        "drain_seconds = 0.2\n"
        '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        f'[[service.checks]]\ntype = "file"\npath = "{flag}"\n'
    )
    return path


class Wired:
    """A daemon on a thread whose commands are all answered ``done``."""

    def __init__(self, path: Path) -> None:
        to_daemon_r, self.to_daemon_w = os.pipe()
        from_daemon_r, from_daemon_w = os.pipe()
        self.log = io.StringIO()
        self.daemon = Daemon(
            cfg.load(path),
            out=os.fdopen(from_daemon_w, "wb"),
            inp=os.fdopen(to_daemon_r, "rb"),
            log=Logger(self.log),
        )
        self._acker = threading.Thread(target=self._ack, args=(from_daemon_r,), daemon=True)
        self._acker.start()
        self._thread = threading.Thread(target=self.daemon.run, daemon=True)
        self._thread.start()

    def _ack(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as commands:
            for _ in commands:
                try:
                    os.write(self.to_daemon_w, b"done\n")
                except OSError:
                    return

    def stop(self) -> None:
        os.close(self.to_daemon_w)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    w = Wired(_config(tmp_path))
    yield w
    w.stop()


def _wait(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _drain_recorded(state_dir: Path) -> bool:
    try:
        snap = persist.read(state_dir)
    except ValueError:
        return False
    return snap is not None and snap.services["web"].operator_drain


TAMPER: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(b""),
    "corrupted": lambda p: p.write_bytes(b"\x00\xff garbage {"),
    "newer-version": lambda p: p.write_text('{"format": 99, "services": {}}\n'),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_a_state_file_changed_behind_the_daemon_is_written_again_with_the_drain(
    tmp_path: Path, wired: Wired, how: str
) -> None:
    """An operator drain is in the state file; the file is then truncated, corrupted,
    replaced or deleted by someone else: within a maintenance poll (0.5 s) the daemon logs
    it (state_file_changed / state_file_missing, level error) and writes the file again,
    drain included."""
    state_dir = tmp_path / "state"
    d = wired.daemon
    _wait(lambda: d.call(d.snapshot)["services"]["web"]["route"] == "ANNOUNCED")
    assert d.call(lambda: (d.drain("web", "operator", "kernel upgrade"), d.commit())[1]) is None
    _wait(lambda: d.call(d.snapshot)["services"]["web"]["route"] == "WITHDRAWN")
    time.sleep(0.3)  # the withdraw written and acked: the daemon has no reason to write now
    assert _drain_recorded(state_dir)

    TAMPER[how](state_dir / persist.STATE_FILE)
    _wait(lambda: _drain_recorded(state_dir), timeout=3.0)
    event = "state_file_missing" if how == "deleted" else "state_file_changed"
    lines = [ln for ln in wired.log.getvalue().splitlines() if f"event={event}" in ln]
    assert len(lines) == 1, wired.log.getvalue()
    assert "level=error" in lines[0]


def test_an_untouched_state_file_is_not_written_again(tmp_path: Path, wired: Wired) -> None:
    """Nothing changes on its own: the file the daemon wrote last is left alone (no write
    every poll), and nothing is logged about it."""
    state_file = tmp_path / "state" / persist.STATE_FILE
    d = wired.daemon
    _wait(lambda: d.call(d.snapshot)["services"]["web"]["route"] == "ANNOUNCED")
    time.sleep(0.3)  # the inflight list cleared and written once more after the announce
    before = os.stat(state_file)
    time.sleep(1.2)  # more than two maintenance polls
    after = os.stat(state_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "event=state_file_" not in wired.log.getvalue()
