"""``announcer check`` on the daemon's side (Services.check_now), on the fake clock: a
round now that counts like any other, a schedule that restarts from it, a round already
open that answers instead, and a poll that answers once the rounds have closed."""

from __future__ import annotations

from pathlib import Path

from tests.unit.loop import START, Loop, ScriptedCheck
from tests.unit.test_loop import config, service


def make(tmp_path: Path, web: ScriptedCheck) -> Loop:
    return Loop(config(tmp_path, service("web", "192.0.2.10/32", "web")), {"web": web})


def test_a_check_now_is_a_round_that_counts_and_restarts_the_schedule(tmp_path: Path) -> None:
    """The round runs at once, moves the health like any round (rise = 2: the second
    passing round makes it UP), and the next scheduled round comes an interval after it."""
    web = ScriptedCheck()
    loop = make(tmp_path, web)
    loop.turn()  # the first round, at START
    loop.clock.now = START + 0.2
    poll = loop.daemon.check_now(["web"])
    assert web.runs == 2
    assert poll() is None  # its result is still on the way to the loop
    loop.turn()
    result = poll()
    assert result is not None
    assert result["web"]["round"] == 2
    assert result["web"]["ok"] is True
    assert result["web"]["checks"][0] == {
        "check": "scripted",
        "ok": True,
        "reason": "ok",
        "duration": 0.001,
    }
    assert loop.status("web")["health"] == "UP"
    # Started while RISING: the next round a fast interval after this one, not at 0.5.
    assert loop.daemon.services.runtimes["web"].next_run == START + 0.2 + 0.5


def test_a_round_already_open_answers_and_the_poll_waits_for_it(tmp_path: Path) -> None:
    """With a round still open (a hung check), no second round starts: the poll answers
    None until that round closes (at its deadline, the check counted as failed)."""
    web = ScriptedCheck(hang=True)
    loop = make(tmp_path, web)
    loop.turn()
    poll = loop.daemon.check_now(["web"])
    assert loop.status("web")["checks_run"] == 1
    assert poll() is None
    loop.run_for(0.8)  # timeout 0.2 s + grace 0.5 s
    result = poll()
    assert result is not None
    assert result["web"]["round"] == 1 and result["web"]["ok"] is False
    assert "check hung" in result["web"]["checks"][0]["reason"]


def test_check_is_for_root_and_the_control_group() -> None:
    """``check`` makes the daemon act: a mutating command (root, the daemon's user and
    the control group only), with the services as its only field."""
    from announcer.control import MUTATING, parse_request

    assert "check" in MUTATING
    request = parse_request(b'{"v": 1, "cmd": "check", "services": ["web", "web", "dns"]}')
    assert request.log_fields() == {"services": "web,dns"}
