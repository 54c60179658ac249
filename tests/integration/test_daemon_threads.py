"""The daemon on its own threads (as it runs) with real file checks and a fake ExaBGP at
the pipe boundary; tests/unit/test_loop.py drives the same loop on a fake clock.

The fake reads the daemon's stdout, records every command, and answers each one
with ``done`` (or ``error`` when told to) on the daemon's stdin, as ExaBGP does.
Real ExaBGP is used by the integration tests; this keeps loop behaviour quick
to test: scheduling, hung checks, require rules, drains, restore and reload.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from announcer import config as cfg
from announcer import persist
from announcer import state as sm
from announcer.checks import Check, CheckResult, CheckSpec, build_check
from announcer.daemon import Daemon
from announcer.exabgp import NUDGE_AFTER
from announcer.log import Logger
from announcer.metrics import Metrics
from announcer.rounds import combine


class FakeExaBGP:
    """Reads commands from the daemon and acks them like ExaBGP's text API."""

    def __init__(
        self,
        reject: Callable[[str], bool] | None = None,
        strand: Callable[[str], bool] | None = None,
    ) -> None:
        """``strand``: the first line it matches is left unanswered until another line
        arrives, as ExaBGP 4.2 does with bytes left in its read buffer."""
        self.strand = strand
        self._held: list[bytes] = []
        self.to_daemon_r, self.to_daemon_w = os.pipe()
        self.from_daemon_r, self.from_daemon_w = os.pipe()
        self.lines: list[tuple[float, str]] = []
        self.reject = reject or (lambda line: False)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with os.fdopen(self.from_daemon_r, "rb") as f:
            for raw in f:
                line = raw.decode().rstrip("\n")
                with self._lock:
                    self.lines.append((time.monotonic(), line))
                answer = b"error\n" if self.reject(line) else b"done\n"
                if self.strand is not None and self.strand(line):
                    self.strand = None
                    self._held.append(answer)
                    continue
                answer, self._held = b"".join(self._held) + answer, []
                try:
                    os.write(self.to_daemon_w, answer)
                except OSError:
                    return

    def say(self, text: str) -> None:
        os.write(self.to_daemon_w, text.encode() + b"\n")

    def commands(self) -> list[str]:
        with self._lock:
            return [line for _, line in self.lines]

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cmds = self.commands()
            if pred(cmds):
                return cmds
            time.sleep(0.01)
        raise AssertionError(f"timed out; commands so far: {self.commands()}")

    def close_stdin(self) -> None:
        os.close(self.to_daemon_w)


class Running:
    """A daemon on a thread, wired to a FakeExaBGP."""

    def __init__(self, daemon: Daemon, exa: FakeExaBGP, log: io.StringIO) -> None:
        self.daemon, self.exa, self.log = daemon, exa, log
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.status: int | None = None
        self.thread.start()

    def _run(self) -> None:
        self.status = self.daemon.run()

    def stop(self) -> int | None:
        self.exa.close_stdin()
        self.thread.join(10)
        assert not self.thread.is_alive(), "daemon did not exit when stdin closed"
        return self.status

    def snap(self, service: str) -> dict[str, Any]:
        out: dict[str, Any] = self.daemon.call(self.daemon.snapshot)["services"][service]
        return out

    def wait_state(self, service: str, route: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.snap(service)
            if s["route"] == route:
                return s
            time.sleep(0.01)
        raise AssertionError(f"{service} never reached {route}: {self.snap(service)}")


def write_config(tmp: Path, services: str, top: str = "") -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f'maintenance_file = "{tmp / "maintenance"}"\n'
        'include = ""\n'
        f"{top}\n"
        "[defaults]\ninterval = 0.1\nfast_interval = 0.05\nrise = 2\nfall = 2\n"
        "drain_seconds = 0.5\n" + services
    )
    return path


def file_service(name: str, prefix: str, flag: Path, extra: str = "") -> str:
    return (
        f'[[service]]\nname = "{name}"\nprefixes = ["{prefix}"]\n{extra}\n'
        f'[[service.checks]]\ntype = "file"\npath = "{flag}"\n'
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def _start(
        path: Path,
        check_factory: Callable[[CheckSpec], Check] = build_check,
        reject: Callable[[str], bool] | None = None,
        strand: Callable[[str], bool] | None = None,
    ) -> Running:
        exa = FakeExaBGP(reject, strand)
        log = io.StringIO()
        daemon = Daemon(
            cfg.load(path),
            out=os.fdopen(exa.from_daemon_w, "wb"),
            inp=os.fdopen(exa.to_daemon_r, "rb"),
            log=Logger(log, level="debug"),
            check_factory=check_factory,
        )
        r = Running(daemon, exa, log)
        running.append(r)
        return r

    yield _start
    for r in running:
        if r.thread.is_alive():
            r.stop()


ANN = "announce route 192.0.2.10/32 next-hop self med 100"
WD = "withdraw route 192.0.2.10/32 next-hop self med 100"
"""Withdraws repeat the attributes last announced (ExaBGP 5.0 can drop one that does not)."""
WD_DRAINED = "withdraw route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"


def test_announces_after_rise_and_withdraws_after_fall(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A healthy service is announced once with MED 100, then withdrawn once when it fails."""
    flag = tmp_path / "ok"
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    r.exa.wait_for(lambda c: ANN in c)
    time.sleep(0.3)  # several more passing rounds: nothing new is sent
    assert r.exa.commands() == [ANN]
    flag.unlink()
    r.exa.wait_for(lambda c: WD in c)
    time.sleep(0.3)
    assert r.exa.commands() == [ANN, WD]
    assert r.stop() == 0


def test_drain_by_maintenance_file_lowers_then_withdraws(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """The maintenance file lowers the route (MED 1000 + 65535:0), withdraws after drain_seconds,
    and its removal re-announces with the normal attributes."""
    flag = tmp_path / "ok"
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    r.exa.wait_for(lambda c: ANN in c)
    (tmp_path / "maintenance").touch()
    lowered = "announce route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"
    r.exa.wait_for(lambda c: lowered in c)
    s = r.snap("web")
    assert s["route"] == "DRAINING" and s["drain_sources"] == ["maintenance"]
    r.exa.wait_for(lambda c: WD_DRAINED in c, timeout=3)
    times = {line: t for t, line in r.exa.lines}
    assert times[WD_DRAINED] - times[lowered] >= 0.45  # drain_seconds = 0.5
    (tmp_path / "maintenance").unlink()
    r.exa.wait_for(lambda c: c.count(ANN) == 2)
    assert r.exa.commands() == [ANN, lowered, WD_DRAINED, ANN]


def test_sigterm_path_withdraws_everything(tmp_path: Path, start: Callable[..., Running]) -> None:
    """withdraw_all (what SIGTERM does) withdraws every announced prefix, v4 and v6."""
    flag = tmp_path / "ok"
    flag.touch()
    svc = file_service("web", "192.0.2.10/32", flag).replace(
        '["192.0.2.10/32"]', '["192.0.2.10/32", "2001:db8::10/128"]'
    )
    r = start(write_config(tmp_path, svc))
    r.exa.wait_for(lambda c: len(c) == 2)
    r.daemon.call(r.daemon.withdraw_all)
    cmds = r.exa.wait_for(lambda c: len(c) == 4)
    assert set(cmds[2:]) == {WD, "withdraw route 2001:db8::10/128 next-hop self med 100"}


class HangingCheck:
    """A check that ignores its timeout until released."""

    name = "hang"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def run(self, timeout: float) -> CheckResult:
        self.calls += 1
        self.release.wait(30)
        return CheckResult(True, "late", 30.0)

    def close(self) -> None:
        self.release.set()


def test_a_hung_check_fails_its_rounds_and_never_stalls_other_services(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A check that never returns is counted as failed at its round's deadline, is not started
    again while stuck, and another service keeps its schedule meanwhile."""
    ok = tmp_path / "ok"
    ok.touch()
    hang_flag = tmp_path / "hang"
    services = file_service("web", "192.0.2.10/32", ok) + file_service(
        "stuck", "192.0.2.20/32", hang_flag
    )
    hanging = HangingCheck()

    def factory(spec: CheckSpec) -> Check:
        if str(getattr(spec, "path", "")) == str(hang_flag):
            return hanging
        return build_check(spec)

    r = start(write_config(tmp_path, services), check_factory=factory)
    r.exa.wait_for(lambda c: ANN in c)
    time.sleep(1.5)
    stuck = r.snap("stuck")
    web = r.snap("web")
    assert stuck["health"] == "DOWN"
    assert "check hung" in stuck["last_reason"]
    assert hanging.calls == 1  # never started twice while the first run hangs
    assert web["route"] == "ANNOUNCED"
    assert web["checks_run"] >= 10  # 1.5 s at 0.1 s: the schedule went on
    hanging.release.set()


def test_exabgp_error_ack_is_logged_with_its_command(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """An `error` answer is matched to the command that caused it, counted, and logged."""
    flag = tmp_path / "ok"
    flag.touch()
    r = start(
        write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)),
        reject=lambda line: line.startswith("announce"),
    )
    r.exa.wait_for(lambda c: ANN in c)
    deadline = time.monotonic() + 3
    while r.daemon.call(r.daemon.snapshot)["exabgp"]["error"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    snap = r.daemon.call(r.daemon.snapshot)
    assert snap["exabgp"]["last_error"] == ANN
    assert "event=exabgp_error" in r.log.getvalue()
    assert ANN in r.log.getvalue()


def test_neighbor_lines_are_tracked(tmp_path: Path, start: Callable[..., Running]) -> None:
    """`neighbor X up/down - reason` lines from ExaBGP show in the snapshot and are not acks."""
    flag = tmp_path / "ok"
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    r.exa.say("neighbor 10.0.1.1 up")
    r.exa.say("neighbor 10.0.2.1 down - peer reset")
    deadline = time.monotonic() + 3
    while len(r.daemon.call(r.daemon.snapshot)["neighbors"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    snap = r.daemon.call(r.daemon.snapshot)
    assert snap["neighbors"] == {"10.0.1.1": "up", "10.0.2.1": "down"}
    assert snap["exabgp"]["error"] == 0


@pytest.mark.parametrize(
    ("require", "oks", "expected"),
    [
        ("all", [True, True], True),
        ("all", [True, False], False),
        ("any", [False, True], True),
        ("any", [False, False], False),
        (2, [True, False, True], True),
        (2, [True, False, False], False),
    ],
)
def test_combine_applies_require(require: str | int, oks: list[bool], expected: bool) -> None:
    """require all/any/N decides a round from its checks' results; a failure names the reasons."""
    results = [CheckResult(ok, "fine" if ok else f"bad{i}", 0.01) for i, ok in enumerate(oks)]
    ok, reason = combine(require, results)
    assert ok is expected
    if not ok:
        assert all(f"bad{i}" in reason for i, o in enumerate(oks) if not o)


def test_state_file_restores_the_wire_under_the_same_exabgp(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A restart under the same ExaBGP withdraws the prefixes of a service no longer
    configured at once, keeps a healthy service announced without rise and, the file being
    only a belief, asserts its route once (an identical announce, which ExaBGP drops)."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    first = start(path)
    first.exa.wait_for(lambda c: ANN in c)
    assert first.stop() == 0
    snap = persist.read(tmp_path / "state")
    assert snap is not None and snap.services["web"].route is sm.Route.ANNOUNCED
    assert snap.inflight == ()  # the second write cleared it
    stale = persist.ServiceRecord(
        route=sm.Route.ANNOUNCED,
        prefixes=("198.51.100.1/32",),
        attributes=sm.RouteAttributes(med=100),
    )
    persist.write(
        tmp_path / "state",
        persist.Snapshot(exabgp=snap.exabgp, services={**snap.services, "old": stale}),
    )
    second = start(path)
    second.exa.wait_for(lambda c: len(c) >= 2)
    time.sleep(0.5)
    assert second.exa.commands() == ["withdraw route 198.51.100.1/32 next-hop self", ANN]
    assert second.snap("web")["health"] == "UP"
    assert second.snap("web")["route"] == "ANNOUNCED"


def test_prefixes_in_flight_when_the_last_run_died_are_resent(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """Prefixes recorded as in flight that no configured service owns are withdrawn at once;
    the service's own prefixes are asserted once its first check decides."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    first = start(path)
    first.exa.wait_for(lambda c: ANN in c)
    assert first.stop() == 0
    snap = persist.read(tmp_path / "state")
    assert snap is not None
    persist.write(
        tmp_path / "state",
        persist.Snapshot(
            exabgp=snap.exabgp,
            services=snap.services,
            inflight=("192.0.2.10/32", "192.0.2.99/32"),
        ),
    )
    second = start(path)
    cmds = second.exa.wait_for(lambda c: len(c) >= 2)
    time.sleep(0.4)
    assert cmds[:2] == ["withdraw route 192.0.2.99/32 next-hop self", ANN]
    assert second.exa.commands() == cmds[:2]


def drained_then_stopped(
    tmp_path: Path, start: Callable[..., Running], source: sm.DrainSource
) -> tuple[Path, persist.Snapshot]:
    """A healthy service drained by ``source`` until withdrawn, then the daemon stopped:
    its config and the state file it left."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    first = start(path)
    first.exa.wait_for(lambda c: ANN in c)
    first.daemon.call(lambda: first.daemon.drain("web", source, f"{source} drain"))
    first.exa.wait_for(lambda c: WD_DRAINED in c, timeout=3)
    assert first.stop() == 0
    snap = persist.read(tmp_path / "state")
    assert snap is not None
    return path, snap


def test_operator_drain_survives_a_restart_under_a_new_exabgp(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """An operator drain is kept in the state file; after ExaBGP changed (a reboot) nothing is
    re-asserted and the service stays drained and withdrawn although healthy."""
    path, snap = drained_then_stopped(tmp_path, start, sm.DrainSource.OPERATOR)
    persist.write(
        tmp_path / "state", persist.Snapshot(exabgp="another-exabgp", services=snap.services)
    )
    second = start(path)
    time.sleep(0.5)
    s = second.snap("web")
    assert s["health"] == "UP"
    assert s["route"] == "WITHDRAWN"
    assert s["drain_sources"] == ["operator"]
    assert second.exa.commands() == []


def test_reload_keeps_unchanged_services_quiet_and_reannounces_changed_attributes(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """Reload with the same config sends nothing; a changed MED is re-announced once; a broken
    config keeps the old one running and is reported."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    r = start(path)
    r.exa.wait_for(lambda c: ANN in c)
    result = r.daemon.call(r.daemon.reload)
    assert result["ok"] and result["changes"]["same"] == ["web"]
    time.sleep(0.3)
    assert r.exa.commands() == [ANN]
    checks_run = r.snap("web")["checks_run"]
    assert checks_run > 0

    path.write_text(path.read_text() + "[service.announce]\nmed = 150\n")
    result = r.daemon.call(r.daemon.reload)
    assert result["changes"]["changed"] == ["web"]
    r.exa.wait_for(lambda c: "announce route 192.0.2.10/32 next-hop self med 150" in c)
    assert r.snap("web")["checks_run"] >= checks_run  # counters kept

    path.write_text("this is = = not toml")
    with pytest.raises(cfg.ConfigError):
        r.daemon.call(r.daemon.reload)
    snap = r.daemon.call(r.daemon.snapshot)
    assert "invalid TOML" in snap["config_error"]
    time.sleep(0.3)
    assert len(r.exa.commands()) == 2


def test_reload_drains_a_removed_service_then_forgets_it(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A service removed from the config is drained (lowered), withdrawn after drain_seconds,
    then dropped; a new service starts in INIT."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    r = start(path)
    r.exa.wait_for(lambda c: ANN in c)
    path.write_text(
        path.read_text().split("[[service]]")[0] + file_service("dns", "192.0.2.53/32", flag)
    )
    r.daemon.call(r.daemon.reload)
    r.exa.wait_for(lambda c: any("med 1000 community [ 65535:0 ]" in x for x in c))
    r.exa.wait_for(lambda c: WD_DRAINED in c, timeout=3)
    r.exa.wait_for(lambda c: "announce route 192.0.2.53/32 next-hop self med 100" in c)
    deadline = time.monotonic() + 3
    while "web" in r.daemon.call(r.daemon.snapshot)["services"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


class FakeNotifier:
    """Records what the daemon tells systemd."""

    def __init__(self) -> None:
        self.readies: list[str | None] = []
        self.watchdogs = 0

    def ready(self, status: str | None = None) -> None:
        self.readies.append(status)

    def watchdog(self) -> None:
        self.watchdogs += 1

    def stopping(self) -> None:
        pass


def test_ready_is_sent_at_once_without_services(tmp_path: Path) -> None:
    """With no service configured (the packaged default) READY=1 goes out at start, so a
    Type=notify unit does not time out; the loop still sends watchdog pings."""
    path = write_config(tmp_path, "")
    exa = FakeExaBGP()
    notifier = FakeNotifier()
    daemon = Daemon(
        cfg.load(path),
        out=os.fdopen(exa.from_daemon_w, "wb"),
        inp=os.fdopen(exa.to_daemon_r, "rb"),
        log=Logger(io.StringIO()),
        notifier=notifier,  # type: ignore[arg-type]
    )
    r = Running(daemon, exa, io.StringIO())
    deadline = time.monotonic() + 3
    while not notifier.readies:
        assert time.monotonic() < deadline, "no READY=1"
        time.sleep(0.01)
    assert notifier.readies == ["0 services: none"]
    assert r.stop() == 0
    assert notifier.watchdogs >= 1


def test_a_stop_drain_is_not_kept_across_a_restart(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A drain made for a service stop (source "stop") lowers and withdraws like any drain,
    but is not written to the state file: the next start announces again when healthy."""
    path, snap = drained_then_stopped(tmp_path, start, sm.DrainSource.STOP)
    assert snap.services["web"].operator_drain is False
    persist.write(tmp_path / "state", persist.Snapshot(exabgp="rebooted", services=snap.services))
    second = start(path)
    second.exa.wait_for(lambda c: ANN in c)
    assert second.snap("web")["drain_sources"] == []


def test_a_command_left_unread_is_freed_by_writing_it_again(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """When ExaBGP stays silent with a command unanswered (4.2 can leave the end of a burst
    in its read buffer), the last command is written again after NUDGE_AFTER: both copies
    are answered, nothing is given up, and the log says what happened."""
    flag = tmp_path / "ok"
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)), strand=ANN.__eq__)
    r.exa.wait_for(lambda c: c.count(ANN) == 2, timeout=NUDGE_AFTER + 3)
    times = [t for t, line in r.exa.lines if line == ANN]
    assert times[1] - times[0] >= NUDGE_AFTER - 0.05
    deadline = time.monotonic() + 3
    while r.daemon.wire.writer.pending:
        assert time.monotonic() < deadline, "the two answers never arrived"
        time.sleep(0.01)
    writer = r.daemon.wire.writer
    assert (writer.done, writer.errors, writer.unanswered, writer.nudges) == (2, 0, 0, 1)
    assert "exabgp_nudge" in r.log.getvalue()
    assert r.stop() == 0


# ---------------------------------------------------------------- takeover faults (issue 10)

UNREADABLE_STATE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x00\xffnot json at all", id="garbage"),
    pytest.param(b'{"format": 99, "services": {}}', id="newer-format"),
    pytest.param(b'{"format": 1, "services": {"web": {"prefixes": 5}}}', id="wrong-types"),
]


def _unreadable_state(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / persist.STATE_FILE).write_bytes(content)


@pytest.mark.parametrize("content", UNREADABLE_STATE)
def test_unreadable_state_file_withdraws_a_failing_service_explicitly(
    tmp_path: Path, start: Callable[..., Running], content: bytes
) -> None:
    """With a state file it cannot read, the controller does not know what ExaBGP still
    announces: a service whose first check fails is withdrawn explicitly (every configured
    prefix), instead of being shown WITHDRAWN while its old route stays on the wire."""
    _unreadable_state(tmp_path, content)
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", tmp_path / "absent")))
    r.exa.wait_for(lambda c: len(c) >= 1)
    s = r.wait_state("web", "WITHDRAWN")
    assert s["health"] == "DOWN"
    assert r.exa.commands() == ["withdraw route 192.0.2.10/32 next-hop self"]
    assert "event=state_unreadable" in r.log.getvalue()


@pytest.mark.parametrize("content", UNREADABLE_STATE)
def test_unreadable_state_file_asserts_a_healthy_service_without_a_withdraw(
    tmp_path: Path, start: Callable[..., Running], content: bytes
) -> None:
    """A healthy service after an unreadable state file is announced once it has risen (an
    announce ExaBGP drops when the route is already there): no withdraw, so no flap."""
    _unreadable_state(tmp_path, content)
    flag = tmp_path / "ok"
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    r.exa.wait_for(lambda c: ANN in c)
    r.wait_state("web", "ANNOUNCED")
    time.sleep(0.3)  # more passing rounds send nothing more
    assert r.exa.commands() == [ANN]


def _daemon(path: Path, **kwargs: Any) -> Daemon:
    """A daemon that is never run: what it decided at start is in its snapshot."""
    exa = FakeExaBGP()
    return Daemon(
        cfg.load(path),
        out=os.fdopen(exa.from_daemon_w, "wb"),
        inp=os.fdopen(exa.to_daemon_r, "rb"),
        log=Logger(io.StringIO()),
        **kwargs,
    )


@pytest.mark.parametrize("content", [*UNREADABLE_STATE, pytest.param(None, id="no-file")])
def test_status_says_unknown_until_the_first_checks_decide(
    tmp_path: Path, content: bytes | None
) -> None:
    """Before its first checks decide, a controller without a readable state file shows
    the route as UNKNOWN, never as WITHDRAWN (the old route may still be announced)."""
    if content is not None:
        _unreadable_state(tmp_path, content)
    flag = tmp_path / "ok"
    daemon = _daemon(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    snap = daemon.snapshot()
    assert snap["services"]["web"]["route"] == "UNKNOWN"
    assert snap["services"]["web"]["wire_prefixes"] == ["192.0.2.10/32"]


def test_a_stale_state_file_is_not_trusted_the_wire_is_asserted(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A state file under the same ExaBGP that claims a route is announced when it is not
    (a drain's withdraw went out while state writes failed, then the controller restarted):
    once healthy, the route is announced again, so status and the wire agree."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    first = start(path)
    first.exa.wait_for(lambda c: ANN in c)
    assert first.stop() == 0
    second = start(path)  # the file still says ANNOUNCED; pretend the wire lost it
    second.exa.wait_for(lambda c: ANN in c)
    assert second.snap("web")["route"] == "ANNOUNCED"
    assert not any(c.startswith("withdraw") for c in second.exa.commands())


def test_a_drain_that_cannot_be_saved_is_applied_and_says_why(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """When the state file cannot be written (here its directory cannot be made), a drain is
    still put on the wire, and commit() returns why it was not saved; status shows it too,
    and a later successful write clears it."""
    flag = tmp_path / "ok"
    flag.touch()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be\n")
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    path.write_text(path.read_text().replace(str(tmp_path / "state"), str(blocker / "state")))
    r = start(path)
    r.exa.wait_for(lambda c: ANN in c)

    def drain() -> str | None:
        r.daemon.drain("web", "operator", "disk test")
        return r.daemon.commit()

    why = r.daemon.call(drain)
    assert why is not None and str(blocker / "state") in why
    r.exa.wait_for(lambda c: WD_DRAINED in c, timeout=3)
    assert r.daemon.call(r.daemon.snapshot)["state_error"] == why
    blocker.unlink()
    assert r.daemon.call(r.daemon.commit) is None
    assert r.daemon.call(r.daemon.snapshot)["state_error"] is None


def _draining_record(**deadlines: float) -> persist.ServiceRecord:
    return persist.ServiceRecord(
        route=sm.Route.DRAINING,
        prefixes=("192.0.2.10/32",),
        attributes=sm.RouteAttributes(med=1000, communities=("65535:0",)),
        operator_drain=True,
        drain_reason="kernel upgrade",
        **deadlines,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("record", "left"),
    [
        # Written 5 s into a 20 s drain; the wall clock has since gone back a day.
        pytest.param({"drain_boottime": 1000.0 + 15, "drain_deadline": 1.0}, 15.0, id="boottime"),
        # An older version's file: wall-clock deadline only, a day ahead after a clock step.
        pytest.param({"drain_deadline": 10**12}, 20.0, id="old-file-bounded"),
        pytest.param({"drain_deadline": 1.0}, 0.0, id="old-file-past-due-at-once"),
    ],
)
def test_a_restored_drain_deadline_survives_wall_clock_steps(
    tmp_path: Path, record: dict[str, float], left: float
) -> None:
    """A drain's deadline is kept on the boot-time clock: after a restart, however the
    wall clock moved, the drain ends when it was due, and never more than drain_seconds on."""
    path = write_config(
        tmp_path, file_service("web", "192.0.2.10/32", tmp_path / "ok", "drain_seconds = 20")
    )
    persist.write(
        tmp_path / "state",
        persist.Snapshot(
            exabgp=persist.parent_identity(),
            services={"web": _draining_record(**record)},
            boot_id=persist.boot_id(),
        ),
    )
    daemon = _daemon(path, boottime=lambda: 1000.0)
    s = daemon.snapshot()["services"]["web"]
    assert s["drained"] is True
    assert s["drain_left"] == pytest.approx(left, abs=0.5)


def test_the_state_file_keeps_drain_deadlines_on_the_boot_clock(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """A drain in progress is saved with its deadline on CLOCK_BOOTTIME and the boot id."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag, "drain_seconds = 30"))
    r = start(path)
    r.exa.wait_for(lambda c: ANN in c)
    r.daemon.call(lambda: (r.daemon.drain("web", "operator", "x"), r.daemon.commit()))
    snap = persist.read(tmp_path / "state")
    assert snap is not None and snap.boot_id == persist.boot_id() != ""
    rec = snap.services["web"]
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert rec.drain_boottime is not None and 0 < rec.drain_boottime - now <= 30


# ---------------------------------------------------------------- broken configs


def _running(path: Path, config: cfg.Config | None = None, **kwargs: Any) -> Running:
    """A daemon on ``config`` (default: the file at ``path``) with metrics, on a FakeExaBGP."""
    exa = FakeExaBGP()
    log = io.StringIO()
    daemon = Daemon(
        config if config is not None else cfg.load(path),
        out=os.fdopen(exa.from_daemon_w, "wb"),
        inp=os.fdopen(exa.to_daemon_r, "rb"),
        log=Logger(log, level="debug"),
        metrics=Metrics(),
        **kwargs,
    )
    return Running(daemon, exa, log)


def _config_ok(r: Running) -> float | None:
    assert r.daemon.metrics is not None
    value: float | None = r.daemon.metrics.registry.get_sample_value("announcer_config_ok")
    return value


def _wait_snapshot(r: Running, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        snap: dict[str, Any] = r.daemon.call(r.daemon.snapshot)
        if pred(snap):
            return snap
        assert time.monotonic() < deadline, snap
        time.sleep(0.01)


ANN_150 = "announce route 192.0.2.10/32 next-hop self med 150"


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """Put back the handlers the daemon's inbox.catch_signals replaces in this process."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("restore_signals")
def test_sighup_with_a_config_that_is_not_utf8_keeps_the_daemon_and_its_routes(
    tmp_path: Path,
) -> None:
    """SIGHUP with a byte that is not UTF-8 in the file refuses the reload: the daemon keeps
    running and announcing on the previous config, status and announcer_config_ok report
    the file and the byte; after the file is fixed, the next SIGHUP clears it and applies."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    good = path.read_bytes()
    r = _running(path)
    r.daemon.inbox.catch_signals()
    r.exa.wait_for(lambda c: ANN in c)
    path.write_bytes(good + b"# caf\xff\n")
    os.kill(os.getpid(), signal.SIGHUP)
    snap = _wait_snapshot(r, lambda s: s["config_error"] is not None)
    line = len(good.splitlines()) + 1
    assert snap["config_error"] == f"{path}: not UTF-8 text: invalid byte 0xff at line {line}"
    assert r.thread.is_alive()
    assert snap["services"]["web"]["route"] == "ANNOUNCED"
    assert r.exa.commands() == [ANN]
    assert _config_ok(r) == 0

    path.write_bytes(good + b"[service.announce]\nmed = 150\n")
    os.kill(os.getpid(), signal.SIGHUP)
    r.exa.wait_for(lambda c: ANN_150 in c)
    _wait_snapshot(r, lambda s: s["config_error"] is None)
    assert _config_ok(r) == 1
    assert r.stop() == 0


@pytest.mark.usefixtures("restore_signals")
def test_a_reload_that_raises_anyway_under_sighup_does_not_end_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a reload raise all the same, SIGHUP logs it and shows it in status, and the
    daemon goes on checking and announcing (ExaBGP gives up after five deaths)."""
    flag = tmp_path / "ok"
    flag.touch()
    r = _running(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag)))
    r.daemon.inbox.catch_signals()
    r.exa.wait_for(lambda c: ANN in c)

    def reload() -> dict[str, Any]:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(r.daemon, "reload", reload)
    os.kill(os.getpid(), signal.SIGHUP)
    snap = _wait_snapshot(r, lambda s: s["config_error"] is not None)
    assert snap["config_error"] == "reload failed: RuntimeError: unforeseen"
    assert snap["services"]["web"]["route"] == "ANNOUNCED"
    assert _config_ok(r) == 0
    assert "event=reload_failed" in r.log.getvalue()
    flag.unlink()
    r.exa.wait_for(lambda c: WD in c)
    assert r.stop() == 0


def test_a_daemon_on_the_last_good_config_reports_it_until_a_reload_succeeds(
    tmp_path: Path,
) -> None:
    """Started on the last good config (the file broken), the daemon checks and announces
    as that config says, shows the file's problem and the fallback in status, sets
    announcer_config_ok to 0, and keeps reading the operator's file: a failed reload keeps
    all that, a reload of the fixed file clears it and applies the file."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    good = path.read_bytes()
    cfg.save_last_good(cfg.load(path))
    path.write_bytes(good + b"\xff")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    last = cfg.load_last_good(path)
    assert last is not None
    r = _running(path, last.config, config_error=str(info.value))
    r.exa.wait_for(lambda c: ANN in c)
    snap = r.daemon.call(r.daemon.snapshot)
    kept = tmp_path / "state" / cfg.LAST_GOOD_FILE
    assert snap["config_error"] == (
        f"{info.value}\nrunning on the last good config, kept in {kept}"
    )
    assert _config_ok(r) == 0
    assert r.daemon.config.path == path

    with pytest.raises(cfg.ConfigError) as refused:
        r.daemon.call(r.daemon.reload)
    assert "running on the last good config" in str(refused.value)
    assert _config_ok(r) == 0

    path.write_bytes(good + b"[service.announce]\nmed = 150\n")
    result = r.daemon.call(r.daemon.reload)
    assert result["ok"] is True and result["changes"]["changed"] == ["web"]
    r.exa.wait_for(lambda c: ANN_150 in c)
    assert r.daemon.call(r.daemon.snapshot)["config_error"] is None
    assert _config_ok(r) == 1
    assert r.stop() == 0


def test_start_and_every_good_reload_keep_the_last_good_config(tmp_path: Path) -> None:
    """The config a daemon starts on, and each one a reload applies, is kept in state_dir
    for a later start whose file does not load; a refused reload keeps the previous copy."""
    flag = tmp_path / "ok"
    flag.touch()
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    good = path.read_bytes()
    r = _running(path)
    path.write_bytes(good + b"x = = 1\n")
    last = cfg.load_last_good(path)
    assert last is not None and last.config.service("web").announce.med == 100

    path.write_bytes(good + b"[service.announce]\nmed = 150\n")
    assert r.daemon.call(r.daemon.reload)["ok"] is True
    path.write_bytes(good + b"\xff")
    with pytest.raises(cfg.ConfigError):
        r.daemon.call(r.daemon.reload)
    last = cfg.load_last_good(path)
    assert last is not None and last.config.service("web").announce.med == 150
    assert r.stop() == 0


def test_a_state_dir_that_cannot_be_written_only_costs_the_last_good_config(
    tmp_path: Path,
) -> None:
    """When the last good config cannot be kept the daemon says so and runs all the same."""
    flag = tmp_path / "ok"
    flag.touch()
    (tmp_path / "file").write_text("")
    path = write_config(tmp_path, file_service("web", "192.0.2.10/32", flag))
    path.write_text(path.read_text().replace(str(tmp_path / "state"), str(tmp_path / "file/s")))
    r = _running(path)
    r.exa.wait_for(lambda c: ANN in c)
    assert "event=last_good_config_not_saved" in r.log.getvalue()
    assert r.stop() == 0
