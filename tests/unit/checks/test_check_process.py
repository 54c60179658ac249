"""The process check on real child processes: a pid file, a stand-in systemctl, pidfds."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from announcer.checks import CheckResult, build_check, process
from announcer.checks.process import ProcessCheck
from announcer.checks.specs import ProcessCheckSpec

Events = list[tuple[CheckResult, float]]


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts (``sleep``), killed and reaped after it."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def start(children: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    children.append(proc)
    return proc


def write_pid(path: Path, pid: int) -> None:
    path.write_text(f"{pid}\n")


def check_for(path: Path, **fields: object) -> ProcessCheck:
    check = build_check(ProcessCheckSpec.model_validate({"pid_file": str(path), **fields}))
    assert isinstance(check, ProcessCheck)
    return check


async def until(events: Events, count: int = 1) -> None:
    """Wait on the loop until ``count`` events came (the test's own timeout bounds it)."""
    while len(events) < count:
        await asyncio.sleep(0.005)


def test_alive_then_exit(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """A live process passes; once it exits (and is reaped) its pid names nothing."""
    proc = start(children)
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, proc.pid)
    check = check_for(pid_file)
    assert check.run(1.0).reason == f"pid {proc.pid} alive"
    proc.terminate()
    proc.wait()
    result = check.run(1.0)
    assert not result.ok
    assert result.reason in (
        f"pid {proc.pid} exited",
        f"pid file {pid_file} names pid {proc.pid}: no such process",
    )
    check.close()


def test_sigkill_is_an_event(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """A watched check reports a SIGKILL as a failed event from the loop, without a run;
    the next run fails too (the zombie counts as exited)."""
    proc = start(children)
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, proc.pid)
    check = check_for(pid_file)
    events: Events = []
    check.watch(lambda result, at: events.append((result, at)))

    async def scenario() -> tuple[CheckResult, CheckResult]:
        first = await check.arun(1.0)
        before = time.monotonic()
        proc.kill()
        await asyncio.wait_for(until(events), 10)
        assert events[0][1] >= before
        return first, await check.arun(1.0)

    first, after = asyncio.run(scenario())
    assert first.ok
    assert [e[0].reason for e in events] == [f"pid {proc.pid} exited"]
    assert not events[0][0].ok
    assert not after.ok and "exited" in after.reason
    check.close()


def test_rewritten_pid_file_is_followed(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """A pid file rewritten to another live process is followed: the old one's death is
    then no event, the new one's is."""
    old, new = start(children), start(children)
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, old.pid)
    check = check_for(pid_file)
    events: Events = []
    check.watch(lambda result, at: events.append((result, at)))

    async def scenario() -> list[str]:
        reasons = [(await check.arun(1.0)).reason]
        write_pid(pid_file, new.pid)
        reasons.append((await check.arun(1.0)).reason)
        old.kill()
        old.wait()
        new.kill()  # after old's death: a reader left on old's pidfd would report first
        await asyncio.wait_for(until(events), 10)
        return reasons

    reasons = asyncio.run(scenario())
    assert reasons == [f"pid {old.pid} alive", f"pid {new.pid} alive"]
    assert [e[0].reason for e in events] == [f"pid {new.pid} exited"]
    check.close()


def test_pid_file_naming_nothing(tmp_path: Path) -> None:
    """A pid file naming no process, or no pid at all, or missing, fails with a clear reason."""
    pid_file = tmp_path / "web.pid"
    check = check_for(pid_file)
    assert check.run(1.0).reason == f"pid file {pid_file} missing"
    pid_file.write_text("")
    assert check.run(1.0).reason == f"pid file {pid_file} is empty"
    pid_file.write_text("nginx\n")
    assert check.run(1.0).reason == f"pid file {pid_file} does not hold a pid: 'nginx'"
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names nothing (until the kernel gives it out again)
    write_pid(pid_file, dead.pid)
    result = check.run(1.0)
    assert not result.ok
    assert result.reason in (
        f"pid file {pid_file} names pid {dead.pid}: no such process",
        f"pid file {pid_file} names pid {dead.pid}, whose process started after the file"
        " was written (a reused pid)",
    )


def test_reused_pid(tmp_path: Path) -> None:
    """A pid whose process started after the pid file was written is refused as reused."""
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, os.getpid())
    hour_ago = time.time() - 3600
    os.utime(pid_file, (hour_ago, hour_ago))
    result = check_for(pid_file).run(1.0)
    assert (result.ok, result.reason) == (
        False,
        f"pid file {pid_file} names pid {os.getpid()}, whose process started after the file"
        " was written (a reused pid)",
    )


def test_grace_follows_a_restart(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """With grace, a death followed by a new process within it is no event; runs during
    the grace pass and say so."""
    old = start(children)
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, old.pid)
    # The clock stands still: "within the grace" does not depend on how fast this runs.
    check = ProcessCheck(ProcessCheckSpec(pid_file=str(pid_file), grace=1.0), clock=lambda: 100.0)
    events: Events = []
    check.watch(lambda result, at: events.append((result, at)))

    async def scenario() -> tuple[str, str]:
        await check.arun(1.0)
        old.kill()
        old.wait()
        during = (await check.arun(1.0)).reason
        write_pid(pid_file, start(children).pid)
        await asyncio.sleep(1.3)  # past the grace's end, where a failure would be reported
        return during, (await check.arun(1.0)).reason

    during, after = asyncio.run(scenario())
    assert during.startswith("within grace 1.0s: ")
    assert after.endswith("alive") and str(old.pid) not in after
    assert events == []
    check.close()


def test_grace_without_a_new_process(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """With grace and no new process by its end, the event comes then, naming the grace;
    its time is the death's, not the grace's end."""
    proc = start(children)
    pid_file = tmp_path / "web.pid"
    write_pid(pid_file, proc.pid)
    now = [100.0]
    check = ProcessCheck(ProcessCheckSpec(pid_file=str(pid_file), grace=0.2), clock=lambda: now[0])
    events: Events = []
    check.watch(lambda result, at: events.append((result, at)))

    async def scenario() -> None:
        await check.arun(1.0)
        proc.kill()
        proc.wait()
        while check._grace is None:  # the death was seen: the grace runs from there
            await asyncio.sleep(0.005)
        now[0] = 100.2
        await asyncio.wait_for(until(events), 10)

    asyncio.run(scenario())
    (result, at), *_ = events
    assert result.reason.startswith(f"pid {proc.pid} exited; no new process within grace 0.2s")
    assert at == 100.0
    check.close()


@pytest.fixture
def systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in ``systemctl`` that prints the file ``show`` (what ``systemctl show`` would)."""
    answer = tmp_path / "show"
    script = tmp_path / "systemctl"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stdout.write(open({str(answer)!r}).read())\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(ProcessCheck, "SYSTEMCTL", str(script))
    return answer


def test_unit_main_pid_followed(systemctl: Path, children: list[subprocess.Popen[bytes]]) -> None:
    """The unit form follows MainPID across a restart; MainPID 0 fails naming the state."""
    check = build_check(ProcessCheckSpec(unit="web.service"))
    assert check.name == "process unit web.service"
    first, second = start(children), start(children)
    systemctl.write_text(f"MainPID={first.pid}\nActiveState=active\n")
    assert check.run(5.0).reason == f"pid {first.pid} alive"
    first.kill()  # a restart: the main process dies, systemd starts another
    first.wait()
    systemctl.write_text(f"MainPID={second.pid}\nActiveState=active\n")
    assert not check.run(5.0).ok  # the death, seen by this run
    assert check.run(5.0).reason == f"pid {second.pid} alive"
    second.kill()
    second.wait()
    systemctl.write_text("MainPID=0\nActiveState=failed\n")
    assert not check.run(5.0).ok
    assert check.run(5.0).reason == "unit web.service has no main process (failed)"
    check.close()


def test_spec_forms() -> None:
    """Exactly one of pid_file and unit; immediate defaults on; grace is bounded."""
    assert ProcessCheckSpec(pid_file="/run/nginx.pid").immediate
    for bad in (
        {},
        {"pid_file": "/run/a.pid", "unit": "a.service"},
        {"pid_file": "run/a.pid"},
        {"unit": "a service"},
        {"unit": "nginx.service", "grace": -1.0},
        {"unit": "nginx.service", "grace": True},
    ):
        with pytest.raises(ValidationError):
            ProcessCheckSpec.model_validate(bad)


def test_unit_asked_again_only_when_needed(
    systemctl: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    """While the main process lives, systemd is asked again only after UNIT_RECHECK
    seconds; once it died, at the next run."""
    now = [100.0]
    check = ProcessCheck(ProcessCheckSpec(unit="web.service"), clock=lambda: now[0])
    first, second = start(children), start(children)
    systemctl.write_text(f"MainPID={first.pid}\n")
    assert check.run(5.0).reason == f"pid {first.pid} alive"
    systemctl.write_text(f"MainPID={second.pid}\n")
    now[0] += 1.0
    assert check.run(5.0).reason == f"pid {first.pid} alive"  # not asked: first lives
    now[0] += process.UNIT_RECHECK
    assert check.run(5.0).reason == f"pid {second.pid} alive"  # asked again
    second.kill()
    second.wait()
    third = start(children)
    systemctl.write_text(f"MainPID={third.pid}\n")
    now[0] += 1.0
    result = check.run(5.0)  # finds second dead, says so
    assert (result.ok, result.reason) == (False, f"pid {second.pid} exited")
    assert check.run(5.0).reason == f"pid {third.pid} alive"  # asked at once
    check.close()
