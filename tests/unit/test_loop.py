"""The daemon's loop driven step by step on a fake clock (tests/unit/loop.py): what it
sends, when, and what status says, with no thread, sleep or private attribute."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from announcer import state as sm
from announcer.messages import Signal, StdinClosed
from tests.unit.loop import START, Loop, ScriptedCheck

ANN = "announce route 192.0.2.10/32 next-hop self med 100"
LOWER = "announce route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"
WD = "withdraw route 192.0.2.10/32 next-hop self med 100"
WD_DRAINED = "withdraw route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"


def config(tmp: Path, services: str) -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        'include = ""\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = 2\nfall = 2\n"
        "timeout = 0.2\ndrain_seconds = 10\n" + services
    )
    return path


def service(name: str, prefix: str, check: str) -> str:
    return (
        f'[[service]]\nname = "{name}"\nprefixes = ["{prefix}"]\n'
        f'[[service.checks]]\ntype = "file"\npath = "{check}"\n'
    )


@pytest.fixture
def web() -> ScriptedCheck:
    return ScriptedCheck()


@pytest.fixture
def loop(tmp_path: Path, web: ScriptedCheck) -> Loop:
    return Loop(config(tmp_path, service("web", "192.0.2.10/32", "web")), {"web": web})


def test_rise_announces_once_and_fall_withdraws_once(loop: Loop, web: ScriptedCheck) -> None:
    """Two passing rounds (rise = 2, fast interval 0.5 s) announce; passing rounds after
    that send nothing; two failing rounds withdraw, once."""
    loop.run_for(0.4)
    assert loop.sent == []
    assert loop.status("web")["health"] == "RISING"
    loop.run_for(0.2)
    assert loop.sent == [ANN]
    loop.run_for(10)
    assert loop.sent == [ANN]
    web.ok = False
    loop.run_for(2.0)
    assert loop.sent == [ANN, WD]
    assert loop.status("web")["route"] == "WITHDRAWN"


def test_rounds_keep_a_fixed_rate(loop: Loop, web: ScriptedCheck) -> None:
    """Rounds start at a fixed rate: 0.5 s apart while rising (the round that reaches UP
    already scheduled its successor 0.5 s on), then every interval (1 s)."""
    loop.run_for(10.0)
    # 0 and 0.5 (RISING, fast), then 1.0, 2.0 ... 10.0
    assert web.runs == 12


def test_a_round_that_closed_early_leaves_no_wakeup_at_its_deadline(loop: Loop) -> None:
    """Once a round's results are in, the loop next wakes for the next round (or the
    maintenance poll), not for the closed round's deadline."""
    loop.turn()
    assert loop.status("web")["checks_run"] == 1
    assert loop.daemon.next_wakeup() == START + 0.5  # the next (fast) round and the poll


def test_a_hung_check_fails_its_round_at_the_deadline(loop: Loop, web: ScriptedCheck) -> None:
    """A check that never answers fails its round at timeout + grace; later rounds count it
    failed without starting it again, until the stuck run returns."""
    web.hang = True
    loop.run_for(0.6)
    assert loop.status("web")["last_ok"] is None  # the first round is still open
    loop.run_for(0.2)
    assert "no result within 0.2s (check hung)" in loop.log.getvalue()
    assert loop.status("web")["last_reason"] == "previous run still running (check hung)"
    assert web.runs == 0
    web.hang = False
    loop.runner.release()
    loop.run_for(2.0)
    assert loop.status("web")["health"] == "UP"


def test_first_rounds_are_done_once_every_service_has_closed_one(tmp_path: Path) -> None:
    """Readiness waits for the slowest first round (a hung check's closes at its deadline)
    and, after a reload, for the first round of a service added before that."""
    fast, slow, late = ScriptedCheck(), ScriptedCheck(hang=True), ScriptedCheck(hang=True)
    path = config(
        tmp_path,
        service("fast", "192.0.2.10/32", "fast") + service("slow", "192.0.2.11/32", "slow"),
    )
    loop = Loop(path, {"fast": fast, "slow": slow, "late": late})
    loop.run_for(0.1)
    assert loop.status("fast")["last_ok"] is True
    assert not loop.daemon.services.first_rounds.done()
    path.write_text(path.read_text() + service("late", "192.0.2.12/32", "late"))
    loop.daemon.reload()
    loop.run_for(0.65)  # slow's first round closed at its deadline (0.7 s); late's is open
    assert loop.status("slow")["last_ok"] is False
    assert not loop.daemon.services.first_rounds.done()
    loop.run_for(0.2)
    assert loop.daemon.services.first_rounds.done()


def test_drain_lowers_then_withdraws_at_the_deadline(loop: Loop) -> None:
    """A drain sends the lowered route at once and the withdraw after drain_seconds;
    status counts down and then shows WITHDRAWN."""
    loop.run_for(1.0)
    assert loop.daemon.drain("web", sm.DrainSource.OPERATOR, "maintenance") is True
    assert loop.daemon.commit() is None
    assert loop.sent == [ANN, LOWER]
    assert loop.status("web")["route"] == "DRAINING"
    loop.run_for(4.0)
    assert loop.status("web")["drain_left"] == pytest.approx(6.0)
    loop.run_for(6.0)
    assert loop.sent == [ANN, LOWER, WD_DRAINED]
    assert loop.status("web")["route"] == "WITHDRAWN"
    assert loop.daemon.undrain("web", sm.DrainSource.OPERATOR) is True
    loop.run_for(0.1)
    assert loop.sent[-1] == ANN


def test_sigterm_withdraws_everything_and_stops(loop: Loop) -> None:
    """SIGTERM withdraws what is announced and ends the loop."""
    loop.run_for(1.0)
    loop.daemon.post(Signal(signal.SIGTERM))
    loop.turn()
    assert loop.sent == [ANN, WD]
    assert loop.daemon.stopping == "SIGTERM"


def test_stdin_closing_stops_without_withdrawing(loop: Loop) -> None:
    """ExaBGP closing our stdin ends the loop; routes stay (ExaBGP keeps or drops them)."""
    loop.run_for(1.0)
    loop.daemon.post(StdinClosed())
    loop.turn()
    assert loop.daemon.stopping == "stdin closed"
    assert loop.sent == [ANN]


def test_reload_removing_a_service_drains_withdraws_and_forgets_it(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """A service removed by a reload is lowered, withdrawn at the drain deadline, then
    dropped from status; a service added starts from INIT."""
    api = ScriptedCheck()
    path = config(tmp_path, service("web", "192.0.2.10/32", "web"))
    checks = {"web": web, "api": api}
    loop = Loop(path, checks)
    loop.run_for(1.0)
    path.write_text(path.read_text().replace('"web"', '"api"').replace(".10/32", ".11/32"))
    result = loop.daemon.reload()
    assert result["changes"]["added"] == ["api"] and result["changes"]["removed"] == ["web"]
    loop.run_for(0.1)
    assert loop.sent[:2] == [ANN, LOWER]
    assert loop.status("web")["retiring"] is True
    loop.run_for(10.0)
    assert WD_DRAINED in loop.sent
    assert "web" not in loop.daemon.snapshot()["services"]
    assert loop.status("api")["route"] == "ANNOUNCED"


def test_a_state_file_that_cannot_be_written_shows_in_status(
    tmp_path: Path, web: ScriptedCheck
) -> None:
    """When the state directory cannot be written, the drain still goes out, commit()
    says why, and status shows state_error until a write succeeds."""
    loop = Loop(config(tmp_path, service("web", "192.0.2.10/32", "web")), {"web": web})
    loop.run_for(1.0)
    state = tmp_path / "state"
    shutil.rmtree(state)
    state.write_text("a file where the directory was")
    loop.daemon.drain("web", sm.DrainSource.OPERATOR)
    why = loop.daemon.commit()
    assert why is not None and "state" in why
    assert loop.sent[-1] == LOWER
    assert loop.daemon.snapshot()["state_error"] == why


def test_run_raises_what_a_turn_raised_after_closing(loop: Loop) -> None:
    """A bug that raises in a turn of the running loop ends run() with that error (ExaBGP
    then starts a fresh controller, which re-asserts the routes), after the usual close;
    it is not left to asyncio's handler, which would log it and leave the daemon with no
    timer set."""
    from announcer import messages

    def broken(_: object) -> None:
        raise RuntimeError("a bug")

    loop.daemon.handlers[messages.StdinClosed] = broken  # stdin is empty: it arrives at once
    with pytest.raises(RuntimeError, match="a bug"):
        loop.daemon.run()


def test_state_file_writes_are_spaced_and_operator_actions_are_not_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a write of the state file that took t of CPU, a change within 3 t is held,
    and goes out (written, then sent) at that moment; a change after a quiet moment goes
    at once; an operator's drain (commit) is never held."""
    from announcer import persist

    web, dns = ScriptedCheck(), ScriptedCheck()
    loop = Loop(
        config(
            tmp_path,
            service("web", "192.0.2.10/32", "web") + service("dns", "192.0.2.53/32", "dns"),
        ),
        {"web": web, "dns": dns},
    )
    real_write = persist.write
    cpu = [0.0]

    def slow_write(state_dir: Path, snapshot: persist.Snapshot) -> None:
        real_write(state_dir, snapshot)
        cpu[0] += 0.1  # each write takes 0.1 s of CPU
        loop.clock.now += 0.1

    monkeypatch.setattr(persist, "write", slow_write)
    loop.daemon.wire.cpu_clock = lambda: cpu[0]
    loop.run_for(10.0)
    assert len(loop.sent) == 2  # both announced
    web.ok = False
    dns.ok = False
    loop.run_for(3.0)  # both fall in the same rounds: their withdraws go out
    assert loop.status("web")["route"] == "WITHDRAWN"
    assert sorted(loop.sent[2:]) == [
        "withdraw route 192.0.2.10/32 next-hop self med 100",
        "withdraw route 192.0.2.53/32 next-hop self med 100",
    ]
    web.ok = True
    loop.run_for(20.0)  # web is back (quiet since: its announce went at once)
    before = len(loop.sent)
    assert loop.daemon.drain("web", sm.DrainSource.OPERATOR, "now") is True
    assert loop.daemon.commit() is None  # never held: sent at once
    assert len(loop.sent) == before + 1
    assert "community [ 65535:0 ]" in loop.sent[-1]
    assert loop.daemon.undrain("web", sm.DrainSource.OPERATOR) is True
    loop.daemon.wire.flush()  # a plain flush right after the commit's write is held
    assert len(loop.sent) == before + 1
    assert loop.daemon.next_wakeup() <= loop.clock.now + 0.3 + 1e-9
    loop.clock.now += 0.31
    loop.turn()
    assert len(loop.sent) == before + 2
