"""The operator's commands through the real CLI against a real daemon (``announcer run``
as a child process, stdin held open as ExaBGP does, acks off): ``announcer check``,
``announcer check --once`` and ``announcer status --watch`` (in a real terminal: tmux)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ANNOUNCER = [sys.executable, "-m", "announcer"]
REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
acks = false
state_dir = "{tmp}/state"
control_socket = "{tmp}/control.sock"
maintenance_file = "{tmp}/maintenance"
include = ""

[defaults]
interval = 5.0
fast_interval = 0.5
rise = 1
fall = 2
drain_seconds = 60

[[service]]
name = "web"
prefixes = ["192.0.2.10/32"]
checks = [{{ type = "file", path = "{tmp}/web.ok" }}]

[[service]]
name = "dns"
prefixes = ["192.0.2.53/32"]
require = "any"
checks = [
    {{ type = "file", path = "{tmp}/dns.ok" }},
    {{ type = "command", argv = ["/bin/sh", "-c", "echo resolver down; exit 1"] }},
]
"""


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ANNOUNCER, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Path]:
    """A running daemon whose services are both UP; yields its config file."""
    path = tmp_path / "announcer.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    (tmp_path / "web.ok").touch()
    (tmp_path / "dns.ok").touch()
    log = (tmp_path / "log").open("w")
    daemon = subprocess.Popen(
        [*ANNOUNCER, "run", "--config", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
        stderr=log,
    )

    def up() -> bool:
        done = cli("status", "--json", "--config", str(path), timeout=10)
        if done.returncode != 0:
            return False
        services = json.loads(done.stdout)["services"]
        return all(s["route"] == "ANNOUNCED" for s in services.values())

    try:
        wait_until(up, "both services announced")
        yield path
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


def test_check_runs_a_round_now_and_prints_each_result(node: Path) -> None:
    """``announcer check`` makes the daemon run a round at once (interval is 5 s: the
    round count moves right away), prints each check's result, and exits 1 when a named
    service's round failed; the failed round counts (one of fall = 2)."""
    before = json.loads(cli("status", "--json", "--config", str(node)).stdout)["services"]
    done = cli("check", "--config", str(node), "web", "dns")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("web: passed: present: ")
    assert lines[0].endswith(", health UP, route ANNOUNCED)")
    assert lines[1].lstrip().startswith("ok ")
    assert lines[2].startswith("dns: passed: 1/2 checks ok")
    assert "FAIL" in lines[4] and lines[4].endswith("resolver down")
    after = json.loads(cli("status", "--json", "--config", str(node)).stdout)["services"]
    assert after["web"]["checks_run"] > before["web"]["checks_run"]

    (node.parent / "web.ok").unlink()
    failed = cli("check", "--config", str(node), "web")
    assert failed.returncode == 1
    assert failed.stdout.startswith("web: failed: missing: ")
    assert "health FALLING" in failed.stdout.splitlines()[0]


def test_check_of_an_unknown_service_is_refused(node: Path) -> None:
    """A service the daemon does not know: exit 1, saying which services it knows."""
    done = cli("check", "--config", str(node), "nope")
    assert done.returncode == 1
    assert "unknown service 'nope' (known: web, dns)" in done.stderr


def test_check_once_runs_the_checks_without_a_daemon(tmp_path: Path) -> None:
    """``check --once`` runs the configured checks here: exit 0 when every named service
    would be healthy, 1 when one would not, 2 for an unknown service; --json for scripts."""
    path = tmp_path / "announcer.toml"
    path.write_text(CONFIG.format(tmp=tmp_path))
    (tmp_path / "dns.ok").touch()
    ok = cli("check", "--once", "--config", str(path), "dns")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "dns: would be healthy: 1/2 checks ok"
    bad = cli("check", "--once", "--config", str(path))
    assert bad.returncode == 1
    assert bad.stdout.startswith("web: would be unhealthy: missing: ")
    as_json = json.loads(cli("check", "--once", "--json", "--config", str(path)).stdout)
    assert {n: s["ok"] for n, s in as_json["services"].items()} == {"web": False, "dns": True}
    unknown = cli("check", "--once", "--config", str(path), "nope")
    assert unknown.returncode == 2
    assert unknown.stderr == f"announcer: {path}: no service 'nope' (known: web, dns)\n"


# Runs the command given and writes its exit status to a file. tmux's own
# #{pane_dead_status} is not to be trusted (3.3a can leave it empty for good), nor
# is a shell (dash dies of the Ctrl-C meant for the command). A handler of its own
# keeps this process alive through the SIGINT; the command gets the default back.
RECORD_EXIT = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, lambda *_: None)
status = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(status))
"""


def _tmux(*args: str) -> str:
    done = subprocess.run(
        ["tmux", "-L", f"announcer-test-{os.getpid()}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


def _drain_left(screen: str) -> str | None:
    """The DRAIN cell of web's row in a status table, if one is on the screen."""
    for line in screen.splitlines():
        cells = line.split()
        if cells[:3] == ["web", "UP", "DRAINING"]:
            return cells[-2]  # DRAIN, then CONNS
    return None


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/bootstrap.sh)")
def test_watch_redraws_in_a_terminal_until_interrupted(node: Path) -> None:
    """In a real terminal (tmux), ``status --watch`` redraws the table in place: a drain's
    countdown changes on the same screen, which never scrolls; Ctrl-C ends it with exit 0."""
    drained = cli("drain", "--config", str(node), "web")
    assert drained.returncode == 0, drained.stderr
    ended = node.parent / "exit-status"
    watch = [*ANNOUNCER, "status", "--watch", "--interval", "0.3", "-c", str(node)]
    command = shlex.join([sys.executable, "-c", RECORD_EXIT, str(ended), *watch])
    _tmux("new-session", "-d", "-s", "watch", "-x", "150", "-y", "30", "-c", str(REPO), command)
    try:
        seen: list[str] = []

        def countdown_moved() -> bool:
            left = _drain_left(_tmux("capture-pane", "-p", "-t", "watch"))
            if left is not None and left not in seen:
                seen.append(left)
            return len(seen) >= 2

        wait_until(countdown_moved, "the drain's countdown to change on screen")
        screen = _tmux("capture-pane", "-p", "-t", "watch")
        assert screen.startswith("announcer status every 0.3s, ")
        assert screen.count("SERVICE  HEALTH") == 1  # redrawn in place, not appended
        _tmux("send-keys", "-t", "watch", "C-c")

        wait_until(lambda: ended.exists() and ended.read_text(), "the watch to end on Ctrl-C")
        assert ended.read_text() == "0"
    finally:
        subprocess.run(
            ["tmux", "-L", f"announcer-test-{os.getpid()}", "kill-server"],
            capture_output=True,
            check=False,
        )


def test_watch_appends_plain_lines_when_stdout_is_not_a_terminal(node: Path) -> None:
    """Into a pipe, ``status --watch`` appends each refresh after a ``--- HH:MM:SS`` line,
    without terminal escapes; SIGINT ends it with exit 0."""
    watcher = subprocess.Popen(
        [*ANNOUNCER, "status", "--watch", "--interval", "0.2", "-c", str(node), "web"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert watcher.stdout is not None
    blocks = 0
    for line in watcher.stdout:
        blocks += line.startswith("--- ")
        if blocks == 3:
            break
    watcher.send_signal(signal.SIGINT)
    rest, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    assert "\x1b" not in rest
