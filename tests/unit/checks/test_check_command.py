"""The command check with real processes: exit status, reasons, timeouts and process groups."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from announcer.checks import CommandCheckSpec, build_check


def command_check(**fields: Any) -> Any:
    return build_check(CommandCheckSpec(type="command", **fields))


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def wait_dead(pids: list[int], within: float = 2.0) -> list[int]:
    """The pids still running after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(map(is_running, pids)):
        time.sleep(0.02)
    return [pid for pid in pids if is_running(pid)]


def read_pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()]


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_exit_zero_passes_with_first_stdout_line() -> None:
    """Exit 0 is healthy; the reason is stdout's first non-blank line."""
    check = command_check(argv=[sys.executable, "-c", "print(); print('  all good  '); print('x')"])
    result = check.run(5.0)
    assert result.ok, result
    assert result.reason == "all good"


def test_exit_nonzero_fails_with_stderr_when_stdout_is_empty() -> None:
    """Exit 2 fails; with nothing on stdout, stderr's first line is the reason."""
    code = "import sys; sys.stderr.write('\\nbackend down\\nmore\\n'); sys.exit(2)"
    result = command_check(argv=[sys.executable, "-c", code]).run(5.0)
    assert not result.ok
    assert result.reason == "backend down"


def test_exit_status_is_the_reason_without_output() -> None:
    """Without output the reason is "exit N"."""
    result = command_check(argv=["sh", "-c", "exit 3"]).run(5.0)
    assert not result.ok
    assert result.reason == "exit 3"
    assert command_check(argv=["true"]).run(5.0).reason == "exit 0"


def test_killed_by_a_signal() -> None:
    """A command ended by a signal says which."""
    result = command_check(argv=["sh", "-c", "kill -TERM $$"]).run(5.0)
    assert not result.ok
    assert result.reason == "killed by SIGTERM"


def test_long_output_is_cut_to_one_short_line() -> None:
    """A huge first line is cut to about 200 characters."""
    result = command_check(argv=[sys.executable, "-c", "print('x' * 100000)"]).run(5.0)
    assert result.ok
    assert 100 < len(result.reason) <= 200


def test_no_shell_without_shell_true(tmp_path: Path) -> None:
    """argv is run as is: shell syntax in it is not interpreted."""
    marker = tmp_path / "marker"
    result = command_check(argv=["echo", f"x; touch {marker}"]).run(5.0)
    assert result.ok
    assert result.reason == f"x; touch {marker}"
    assert not marker.exists()


def test_shell_command() -> None:
    """With shell: true the command string goes through /bin/sh."""
    command = "printf 'a\\nb\\n' | tail -n 1; exit 0"
    result = command_check(command=command, shell=True).run(5.0)  # noqa: S604 - a spec field
    assert result.ok
    assert result.reason == "b"


def test_env_and_cwd(tmp_path: Path) -> None:
    """env adds variables to the inherited environment (PATH still works); cwd is honoured."""
    result = command_check(
        argv=["sh", "-c", 'echo "$PROBE_TARGET $(pwd)"'],
        env={"PROBE_TARGET": "db1"},
        cwd=str(tmp_path),
    ).run(5.0)
    assert result.ok, result
    assert result.reason == f"db1 {tmp_path.resolve()}"


def test_missing_program_fails_without_raising() -> None:
    """A program that does not exist fails with a reason, not an exception."""
    result = command_check(argv=["/nonexistent/announcer-probe"]).run(5.0)
    assert not result.ok
    assert result.reason == "cannot run: /nonexistent/announcer-probe: no such file or directory"


def test_missing_cwd_fails_without_raising(tmp_path: Path) -> None:
    """A cwd that does not exist fails with a reason naming it."""
    missing = tmp_path / "gone"
    result = command_check(argv=["true"], cwd=str(missing)).run(5.0)
    assert not result.ok
    assert str(missing) in result.reason


@needs_proc
def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """A command whose children keep the pipes open cannot hold run() past its timeout: it
    returns promptly with a timeout, and the shell and its background child are both dead."""
    pids = tmp_path / "pids"
    script = f'sleep 30 & echo "$$ $!" > {pids}; sleep 30'
    check = command_check(argv=["sh", "-c", script])
    started = time.monotonic()
    result = check.run(0.5)
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.reason == "timeout after 0.5s"
    assert elapsed < 2.0
    shell_and_child = read_pids(pids)
    assert len(shell_and_child) == 2
    assert wait_dead(shell_and_child) == []


@needs_proc
def test_background_child_does_not_hold_a_finished_command(tmp_path: Path) -> None:
    """A command that exits 0 but leaves a child holding its stdout passes promptly (the exit
    status decides), and the leftover child is killed."""
    pids = tmp_path / "pids"
    script = f'sleep 30 & echo "$!" > {pids}; echo up'
    started = time.monotonic()
    result = command_check(argv=["sh", "-c", script]).run(5.0)
    assert time.monotonic() - started < 2.0
    assert result.ok, result
    assert result.reason == "up"
    assert wait_dead(read_pids(pids)) == []


def test_name_shows_the_command() -> None:
    """The name quotes the command as a shell would."""
    assert command_check(argv=["check", "a b"]).name == "command check 'a b'"
    check = command_check(command="pgrep nginx", shell=True)  # noqa: S604 - a spec field
    assert check.name == "command sh -c 'pgrep nginx'"


def test_output_is_read_while_the_command_runs() -> None:
    """More output than a pipe holds does not block the command."""
    code = "import sys; sys.stdout.write('ok\\n' + 'y' * 1000000); sys.stderr.write('z' * 1000000)"
    result = command_check(argv=[sys.executable, "-c", code]).run(5.0)
    assert result.ok, result
    assert result.reason == "ok"


def test_pid_of_a_finished_command_is_reaped() -> None:
    """No zombie is left behind by a run."""
    check = command_check(argv=[sys.executable, "-c", "import os; print(os.getpid())"])
    pid = int(check.run(5.0).reason)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
