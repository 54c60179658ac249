"""Hooks (announcer/hooks.py): what runs on which route change, when, with what
environment, one at a time per service with changes coalesced, and what a failing or
hanging hook costs (a log line and a metric, never a route change)."""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path

import pytest

from announcer import config as cfg
from announcer import state as sm
from announcer.errors import ConfigError
from announcer.hooks import Hooks, Run, environment, events_of, run_commands
from announcer.messages import HookDone
from tests.unit.loop import Loop, ScriptedCheck
from tests.unit.test_loop import ANN, WD, WD_DRAINED, config, service

HOOKS = (
    '[service.hooks]\non_change = ["/bin/true", "change"]\non_up = ["/bin/true", "up"]\n'
    'on_withdraw = ["/bin/true", "withdraw"]\non_down = ["/bin/true", "down"]\n'
    'on_drain = ["/bin/true", "drain"]\n'
)


class Starts:
    """Stands in for the hook threads: records each run and what was on the wire then."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.runs: list[tuple[Run, list[str]]] = []
        loop.daemon.services.observer.hooks.start = self  # type: ignore[union-attr]

    def __call__(self, run: Run, done: object) -> None:
        self.runs.append((run, list(self.loop.sent)))

    def finish(self, service: str = "web") -> None:
        """The oldest run's commands all exited 0."""
        self.loop.daemon.post(HookDone(service, ()))
        self.loop.turn()


@pytest.fixture
def web() -> ScriptedCheck:
    return ScriptedCheck()


@pytest.fixture
def loop(tmp_path: Path, web: ScriptedCheck) -> Loop:
    return Loop(config(tmp_path, service("web", "192.0.2.10/32", "web") + HOOKS), {"web": web})


def test_hooks_start_after_their_route_change_is_written(loop: Loop, web: ScriptedCheck) -> None:
    """The up hook of an announce starts only once the announce is on the wire, and gets
    the service, events, health, routes, prefixes and reason in its environment."""
    starts = Starts(loop)
    loop.run_for(1.0)
    (run, wire_then), *_ = starts.runs
    assert wire_then == [ANN]
    assert [c[1] for c in run.commands] == ["up", "change"]
    assert environment(run) == {
        "ANNOUNCER_SERVICE": "web",
        "ANNOUNCER_EVENT": "up change",
        "ANNOUNCER_HEALTH": "UP",
        "ANNOUNCER_ROUTE_BEFORE": "WITHDRAWN",
        "ANNOUNCER_ROUTE": "ANNOUNCED",
        "ANNOUNCER_PREFIXES": "192.0.2.10/32",
        "ANNOUNCER_REASON": "ok",
        "ANNOUNCER_COALESCED": "1",
    }


def test_a_running_hook_holds_later_changes_as_one_run_with_the_latest_state(
    loop: Loop, web: ScriptedCheck
) -> None:
    """While a service's hook runs (never finishing here), the route changes go on on the
    wire; the changes meanwhile wait as one run that sees the latest state, the route
    before the first of them, and how many it stands for."""
    starts = Starts(loop)
    loop.run_for(1.0)  # announced; its hook "runs"
    web.ok = False
    loop.run_for(2.0)  # withdrawn: waits
    web.ok = True
    loop.run_for(2.0)  # announced again: replaces the waiting run
    assert loop.sent == [ANN, WD, ANN]
    assert len(starts.runs) == 1
    starts.finish()
    assert len(starts.runs) == 2
    run, wire_then = starts.runs[1]
    assert wire_then == [ANN, WD, ANN]
    assert (run.route_before, run.route, run.coalesced) == ("ANNOUNCED", "ANNOUNCED", 2)
    assert run.events == ("up", "change")
    starts.finish()
    assert len(starts.runs) == 2


def test_drain_then_withdraw_run_their_hooks(loop: Loop, web: ScriptedCheck) -> None:
    """A drain runs on_drain (after the lowered route is sent); its end runs on_withdraw;
    a failure while up runs on_down and on_withdraw."""
    starts = Starts(loop)
    loop.run_for(1.0)
    starts.finish()
    loop.daemon.drain("web", sm.DrainSource.OPERATOR, "kernel upgrade")
    loop.daemon.commit()
    loop.turn()
    run, _ = starts.runs[-1]
    assert run.events == ("drain", "change") and run.reason == "kernel upgrade"
    starts.finish()
    loop.run_for(11)
    run, wire_then = starts.runs[-1]
    assert run.events == ("withdraw", "change") and wire_then[-1] == WD_DRAINED
    starts.finish()
    loop.daemon.undrain("web", sm.DrainSource.OPERATOR)
    loop.run_for(0.1)
    starts.finish()
    web.ok = False
    loop.run_for(3)
    run, _ = starts.runs[-1]
    assert run.events == ("down", "withdraw", "change")
    assert run.reason == "scripted failure"


def test_events_of_each_route_change() -> None:
    """Which hooks each route change matches."""
    R, H = sm.Route, sm.Health
    assert events_of(R.WITHDRAWN, R.ANNOUNCED, H.UP) == ("up", "change")
    assert events_of(R.ANNOUNCED, R.DRAINING, H.UP) == ("drain", "change")
    assert events_of(R.DRAINING, R.WITHDRAWN, H.UP) == ("withdraw", "change")
    assert events_of(R.ANNOUNCED, R.WITHDRAWN, H.DOWN) == ("down", "withdraw", "change")
    assert events_of(R.ANNOUNCED, R.LOWERED, H.DOWN) == ("down", "change")
    assert events_of(R.DRAINING, R.ANNOUNCED, H.UP) == ("up", "change")


def _run(tmp_path: Path, *commands: tuple[str, ...] | str, timeout: float = 5.0) -> Run:
    return Run(
        service="web",
        commands=commands,
        timeout=timeout,
        events=("withdraw", "change"),
        health="DOWN",
        route_before="ANNOUNCED",
        route="WITHDRAWN",
        prefixes=("192.0.2.10/32", "2001:db8::10/128"),
        reason="connection refused",
    )


def test_a_hook_gets_its_environment_and_runs_without_a_shell(tmp_path: Path) -> None:
    """An argv hook runs as given (no shell: "$HOME" stays literal); a string runs with
    /bin/sh; both see the ANNOUNCER_* variables."""
    out = tmp_path / "out"
    argv = ("/bin/sh", "-c", f'echo "$ANNOUNCER_ROUTE $ANNOUNCER_PREFIXES" "$1" >> {out}', "-")
    done = run_commands(_run(tmp_path, (*argv, "$HOME"), f"echo $ANNOUNCER_REASON >> {out}"))
    assert [r.ok for _, r in done.results] == [True, True]
    assert out.read_text().splitlines() == [
        "WITHDRAWN 192.0.2.10/32 2001:db8::10/128 $HOME",
        "connection refused",
    ]


def test_a_hanging_hook_is_killed_with_its_process_group(tmp_path: Path) -> None:
    """A hook past its timeout is reported as such and its whole process group is killed,
    the children it started included."""
    pidfile = tmp_path / "child"
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    done = run_commands(_run(tmp_path, ("/bin/sh", "-c", script), timeout=0.5))
    ((_, result),) = done.results
    assert not result.ok and result.reason.startswith("timeout after")
    child = int(pidfile.read_text())
    for _ in range(100):  # reaped by init: gone shortly after the kill
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the hook's child outlived the hook's timeout")


def test_failing_and_hanging_hooks_are_logged_and_counted(tmp_path: Path) -> None:
    """A hook's end is logged (a warning with its reason when it failed) and counted by
    result in announcer_hook_runs_total."""
    from announcer.log import Logger
    from announcer.metrics import Metrics

    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    metrics = Metrics()
    hooks = Hooks(lambda _: None, Logger(Sink()), metrics)  # type: ignore[arg-type]
    done = run_commands(_run(tmp_path, ("/bin/false",), ("/bin/sh", "-c", "echo oops; exit 3")))
    hooks.done(done)
    text = metrics.render().decode()
    assert 'announcer_hook_runs_total{result="failed",service="web"} 2.0' in text
    assert "event=hook_failed" in lines[1] and "reason=oops" in lines[1]


def test_hook_config_is_checked_and_merged_with_defaults(tmp_path: Path) -> None:
    """A string hook needs shell = true (the error names the file, service and field);
    [defaults] hooks merge key by key with the service's own."""
    bad = config(
        tmp_path, service("web", "192.0.2.10/32", "web") + '[service.hooks]\non_up = "x"\n'
    )
    with pytest.raises(ConfigError) as err:
        cfg.load(bad)
    assert "announcer.toml: service 'web': hooks: on_up: a string is a shell command" in str(
        err.value
    )
    path = tmp_path / "announcer.toml"
    path.write_text(
        path.read_text()
        .replace("[defaults]\n", '[defaults]\nhooks = { on_change = ["/bin/true"] }\n')
        .replace('on_up = "x"', 'on_up = ["/bin/true", "up"]\ntimeout = 2.5')
    )
    hooks = cfg.load(path).service("web").hooks
    assert hooks is not None
    assert (hooks.on_change, hooks.on_up, hooks.timeout) == (
        ("/bin/true",),
        ("/bin/true", "up"),
        2.5,
    )


def test_a_hook_run_that_raises_still_reports_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should running a hook raise, its end is still posted (as a failure), so the
    service's later hooks are not held for good behind it."""
    from announcer import hooks

    def boom(run: Run) -> HookDone:
        raise RuntimeError("no fork")

    monkeypatch.setattr(hooks, "run_commands", boom)
    ended: queue.SimpleQueue[HookDone] = queue.SimpleQueue()
    hooks.thread_starter(_run(tmp_path, ("/bin/true",)), ended.put)
    ((command, result),) = ended.get(timeout=60).results
    assert (command, result.ok, result.reason) == (
        "hook",
        False,
        "hook raised RuntimeError: no fork",
    )
