"""The main loop's stall guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from announcer.watchdog import (
    CHECK_EVERY_MAX,
    EX_SOFTWARE,
    SYSTEMD_MARGIN,
    StallGuard,
    systemd_watchdog_timeout,
)

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_a_beating_loop_never_triggers_with_a_fake_clock() -> None:
    """Beats closer together than the limit keep the guard quiet however long it runs."""
    clock = FakeClock()
    stalls: list[float] = []
    guard = StallGuard(1.0, stalls.append, clock=clock, check_every=0.25)
    for _ in range(1000):
        clock.now += 0.9
        guard.beat()
        assert not guard.check()
    assert stalls == []


def test_a_stall_triggers_once_with_the_time_since_the_last_beat() -> None:
    """Past the limit on_stall gets the seconds since the last beat, and only once."""
    clock = FakeClock()
    stalls: list[float] = []
    guard = StallGuard(2.0, stalls.append, clock=clock)
    guard.beat()
    clock.now += 1.99
    assert not guard.check()
    clock.now += 0.51
    assert guard.check()
    for _ in range(10):
        clock.now += 1
        assert not guard.check()
    assert stalls == [pytest.approx(2.5)]


def test_a_beat_after_a_stall_rearms_the_guard() -> None:
    """If on_stall returned and the loop came back, the next stall is reported again."""
    clock = FakeClock()
    stalls: list[float] = []
    guard = StallGuard(1.0, stalls.append, clock=clock)
    clock.now += 3
    guard.check()
    guard.beat()
    clock.now += 0.5
    assert not guard.check()
    clock.now += 1
    assert guard.check()
    assert stalls == [pytest.approx(3.0), pytest.approx(1.5)]


def test_rejects_non_positive_limits() -> None:
    """A zero limit or check period is a programming error, refused at construction."""
    with pytest.raises(ValueError, match="limit"):
        StallGuard(0, lambda s: None)
    with pytest.raises(ValueError, match="check_every"):
        StallGuard(1, lambda s: None, check_every=0)


def test_thread_stays_quiet_while_the_loop_beats() -> None:
    """With the real thread, a loop beating every 10 ms for 3x the limit never triggers."""
    stalls: list[float] = []
    guard = StallGuard(0.5, stalls.append, check_every=0.02).start()
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            guard.beat()
            time.sleep(0.01)
    finally:
        guard.stop(timeout=2)
    assert stalls == []


def test_thread_reports_a_stall_once_within_limit_plus_period() -> None:
    """The thread calls on_stall once, about limit + check_every after the last beat."""
    fired = threading.Event()
    stalls: list[float] = []

    def on_stall(seconds: float) -> None:
        stalls.append(seconds)
        fired.set()

    guard = StallGuard(0.2, on_stall, check_every=0.05).start()
    try:
        started = time.monotonic()
        guard.beat()
        assert fired.wait(5.0)
        elapsed = time.monotonic() - started
        time.sleep(0.3)  # several more periods: no second call
    finally:
        guard.stop(timeout=2)
    assert len(stalls) == 1
    assert stalls[0] >= 0.2
    assert elapsed < 2.0  # generous bound for 0.2 + 0.05


def test_stop_ends_the_thread() -> None:
    """After stop() the guard's thread is gone and reports nothing more."""
    stalls: list[float] = []
    guard = StallGuard(0.05, stalls.append, check_every=0.01).start()
    guard.stop(timeout=2)
    names = [t.name for t in threading.enumerate()]
    assert "stall-guard" not in names
    time.sleep(0.1)
    assert stalls == []


PROGRAM = textwrap.dedent(
    """
    import sys, time
    from announcer.log import Logger
    from announcer.watchdog import StallGuard, exit_on_stall

    log = Logger(sys.stderr)
    guard = StallGuard(0.5, exit_on_stall(log, log_grace=0.3), check_every=0.05).start()
    guard.beat()
    time.sleep(0.05)
    guard.beat()
    if sys.argv[1] == "hold-log-lock":
        log._lock.acquire()  # the main thread stuck while writing a log line
    time.sleep(3600)  # the main loop stalls
    """
)


@pytest.mark.parametrize("how", ["sleep", "hold-log-lock"])
def test_stalled_process_exits_70_within_3s(tmp_path: Path, how: str) -> None:
    """A real process whose loop stops after two beats exits 70 by itself, promptly.

    Also when its main thread holds the logger's lock: the exit does not wait on it.
    """
    script = tmp_path / "stall.py"
    script.write_text(PROGRAM)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), how],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == EX_SOFTWARE, done.stderr
    assert elapsed < 3.0
    if how == "sleep":
        assert "event=stalled" in done.stderr
        assert "status=70" in done.stderr


# ---- systemd's watchdog, derived from stall_limit


def test_systemd_timeout_is_stall_limit_plus_the_margin() -> None:
    """The timeout the controller asks systemd for: stall_limit + 5 s, 15 s by default."""
    assert SYSTEMD_MARGIN == 5.0
    assert systemd_watchdog_timeout(10.0) == 15.0
    assert systemd_watchdog_timeout(0.5) == 5.5
    assert systemd_watchdog_timeout(3600.0) == 3605.0
    with pytest.raises(ValueError, match="stall_limit"):
        systemd_watchdog_timeout(0)


def test_the_guard_looks_at_least_every_second() -> None:
    """The default period is a quarter of the limit, at most CHECK_EVERY_MAX (1 s): with the
    default stall_limit the guard fires within 11 s, not 12.5 s, of the last beat."""
    assert StallGuard(10.0, lambda s: None).check_every == CHECK_EVERY_MAX == 1.0
    assert StallGuard(2.0, lambda s: None).check_every == 0.5
    assert StallGuard(600.0, lambda s: None, check_every=30.0).check_every == 30.0


def test_the_margin_leaves_the_guard_time_to_restart_the_controller() -> None:
    """Within SYSTEMD_MARGIN: the guard's lateness, the age of the last ping when the loop
    stopped (PING_EVERY plus one idle turn of the loop), and at least 2 s for ExaBGP to
    start a new controller that pings. Otherwise systemd would end ExaBGP (every route
    withdrawn) for a stall the guard handles by itself."""
    from announcer.drains import MAINTENANCE_POLL
    from announcer.notify import PING_EVERY

    spent = CHECK_EVERY_MAX + PING_EVERY + MAINTENANCE_POLL
    assert SYSTEMD_MARGIN - spent >= 2.0


def _unit_value(key: str) -> str:
    unit = (REPO / "etc/systemd/announcer.service").read_text()
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]
    assert len(values) == 1, f"{key}= in the unit: {values}"
    return values[0]


def test_the_units_watchdog_is_the_default_stall_limits_timeout() -> None:
    """WatchdogSec= (in force until the controller's first ping, and the documented bound for
    a frozen controller) matches the default stall_limit's timeout."""
    from announcer.config import Settings

    default = Settings.model_fields["stall_limit"].default
    assert _unit_value("WatchdogSec") == f"{systemd_watchdog_timeout(default):g}s"


def test_the_unit_restarts_whatever_exabgp_exits_with() -> None:
    """ExaBGP 4.2 exits 0 when it gives up on the controller: on-failure would stay down."""
    assert _unit_value("Restart") == "always"
    assert _unit_value("StartLimitIntervalSec") == "0"


def test_the_debian_unit_is_the_shipped_unit() -> None:
    """debian/announcer.service and etc/systemd/announcer.service are one file."""
    debian = REPO / "debian/announcer.service"
    shipped = REPO / "etc/systemd/announcer.service"
    assert debian.read_bytes() == shipped.read_bytes()
