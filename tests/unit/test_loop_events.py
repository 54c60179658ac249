"""Events of immediate checks through the daemon's loop on a fake clock (tests/unit/loop.py):
the withdraw goes out in the turn that takes the event, without a round or ``fall``; the
others' latest results and ``require`` decide; status, log and metrics say so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from announcer.checks import CheckResult
from tests.unit.loop import Loop, ScriptedCheck

ANN = "announce route 192.0.2.10/32 next-hop self med 100"
WD = "withdraw route 192.0.2.10/32 next-hop self med 100"


@dataclass
class WatchedCheck(ScriptedCheck):
    """A scripted check that has events, as the process check does (``watch``)."""

    on_event: Callable[[CheckResult, float], None] | None = None

    def watch(self, on_event: Callable[[CheckResult, float], None]) -> None:
        self.on_event = on_event

    def die(self, at: float, reason: str = "pid 42 exited") -> None:
        """The watched process dies at ``at``; later runs fail too."""
        self.ok = False
        assert self.on_event is not None, "the daemon did not watch this check"
        self.on_event(CheckResult(False, reason, 0.0), at)


def config(tmp: Path, checks: str, require: str = "all", rise: int = 2) -> Path:
    path = tmp / "announcer.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        'include = ""\n'
        f"[defaults]\ninterval = 1.0\nfast_interval = 0.5\nrise = {rise}\nfall = 3\n"
        "timeout = 0.2\ndrain_seconds = 10\n"
        f'[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\nrequire = "{require}"\n' + checks
    )
    return path


def check(path: str, immediate: bool) -> str:
    flag = "true" if immediate else "false"
    return f'[[service.checks]]\ntype = "file"\npath = "{path}"\nimmediate = {flag}\n'


def up(loop: Loop) -> None:
    loop.run_for(1.0)
    assert loop.sent == [ANN]


def test_an_event_withdraws_at_once(tmp_path: Path) -> None:
    """UP with fall = 3: the process check's event withdraws in the turn that takes it, with
    no round run for it; status, the log and the metrics name the event and the delay from
    the event to the command written."""
    proc = WatchedCheck()
    loop = Loop(config(tmp_path, check("proc", True)), {"proc": proc})
    up(loop)
    runs = proc.runs
    proc.die(at=loop.clock.now - 0.003)
    loop.turn()
    assert loop.sent == [ANN, WD]
    assert proc.runs == runs
    status = loop.status("web")
    assert (status["health"], status["route"]) == ("DOWN", "WITHDRAWN")
    assert status["last_event"] == {
        "check": "scripted",
        "reason": "pid 42 exited",
        "ago": 0.003,
        "down": True,
        "route": "ANNOUNCED -> WITHDRAWN",
        "written": 0.003,
    }
    log = loop.log.getvalue()
    assert 'event=check_event service=web check=scripted reason="pid 42 exited"' in log
    assert "event=route service=web from=ANNOUNCED to=WITHDRAWN" in log
    assert 'reason="pid 42 exited" cause=event' in log
    assert "event=event_written service=web" in log and "delay=0.003" in log


def test_the_schedule_is_unchanged(tmp_path: Path) -> None:
    """An event starts no round and moves none: rounds ran at 0, 0.5 and 1.0 s (rising,
    then UP); after an event at 1.0 s the next one still runs at 2.0 s, not before."""
    proc = WatchedCheck()
    loop = Loop(config(tmp_path, check("proc", True)), {"proc": proc})
    up(loop)
    runs = proc.runs
    proc.die(at=loop.clock.now)
    loop.run_for(0.99)
    assert proc.runs == runs
    loop.run_for(0.01)
    assert proc.runs == runs + 1


def test_rising_again_needs_rise_rounds(tmp_path: Path) -> None:
    """After the event's withdraw, the restarted process passes: the route comes back only
    after rise (2) passing rounds, at the normal interval (1 s)."""
    proc = WatchedCheck()
    loop = Loop(config(tmp_path, check("proc", True)), {"proc": proc})
    up(loop)
    proc.die(at=loop.clock.now)
    loop.turn()
    proc.ok = True
    loop.run_for(1.0)  # the next round (at the 1 s interval): RISING
    assert loop.sent == [ANN, WD]
    assert loop.status("web")["health"] == "RISING"
    loop.run_for(0.5)  # the second (fast) passing round
    assert loop.sent == [ANN, WD, ANN]


def test_require_any_holds_with_another_check_passing(tmp_path: Path) -> None:
    """require = "any" and the other check's last result passed: the event changes
    nothing on the wire, and says so in the log."""
    proc, http = WatchedCheck(), ScriptedCheck()
    path = config(tmp_path, check("proc", True) + check("http", False), require="any")
    loop = Loop(path, {"proc": proc, "http": http})
    up(loop)
    proc.die(at=loop.clock.now)
    loop.turn()
    assert loop.sent == [ANN]
    assert loop.status("web")["health"] == "UP"
    assert loop.status("web")["last_event"]["down"] is False
    assert 'action="none: the service\'s require still holds"' in loop.log.getvalue()


def test_require_all_uses_the_others_latest(tmp_path: Path) -> None:
    """require = "all" (the default): one failed event is enough, whatever the others said."""
    proc, http = WatchedCheck(), ScriptedCheck()
    loop = Loop(
        config(tmp_path, check("proc", True) + check("http", False)), {"proc": proc, "http": http}
    )
    up(loop)
    proc.die(at=loop.clock.now)
    loop.turn()
    assert loop.sent == [ANN, WD]


def test_a_pass_the_open_round_got_before_the_event_does_not_count(tmp_path: Path) -> None:
    """rise = 1. A round is open: the process check passed, the HTTP check has not answered.
    The process dies (event: withdrawn); when the HTTP check's pass completes the round,
    the process check's pass from before the death no longer counts: no announce."""
    proc, http = WatchedCheck(), ScriptedCheck()
    path = config(tmp_path, check("proc", True) + check("http", False), rise=1)
    loop = Loop(path, {"proc": proc, "http": http})
    loop.run_for(0.5)
    assert loop.sent == [ANN]
    http.hang = True
    loop.daemon.check_now(["web"])  # a round now: proc passes, http is held
    proc.die(at=loop.clock.now)
    loop.turn()
    assert loop.sent == [ANN, WD]
    http.hang = False
    loop.runner.release()
    loop.turn()
    assert loop.sent == [ANN, WD]
    assert loop.status("web")["health"] == "DOWN"


def test_not_immediate_is_not_watched(tmp_path: Path) -> None:
    """immediate = false: the daemon does not watch the check; its failures wait for
    rounds and fall (3 failing rounds)."""
    proc = WatchedCheck()
    loop = Loop(config(tmp_path, check("proc", False)), {"proc": proc})
    up(loop)
    assert proc.on_event is None
    proc.ok = False
    loop.run_for(1.6)  # rounds at 1.0 (FALLING 1), 1.5 (2)
    assert loop.sent == [ANN]
    loop.run_for(0.5)  # 2.0: the third
    assert loop.sent == [ANN, WD]


def test_an_event_of_a_replaced_check_is_dropped(tmp_path: Path) -> None:
    """A reload that replaces the checks: an event the old check posted is stale."""
    old, new = WatchedCheck(), WatchedCheck()
    path = config(tmp_path, check("proc", True))
    loop = Loop(path, {"proc": old, "proc2": new})
    up(loop)
    path.write_text(path.read_text().replace('path = "proc"', 'path = "proc2"'))
    loop.daemon.reload()
    loop.run_for(1.0)
    old.die(at=loop.clock.now)
    loop.turn()
    assert loop.sent == [ANN]
    assert "check_event" not in loop.log.getvalue()
