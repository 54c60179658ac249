"""announcer under a real ExaBGP, peered on loopback with a second real ExaBGP that logs
every UPDATE it receives. No root needed; both supported ExaBGP versions.

What the receiver sees is what a router would see: these tests assert the wire, not
the controller's opinion of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from exabgp_harness import (
    ExaBGPPair,
    PairOptions,
    RouteEvent,
    exabgp_binary,
    free_port,
    is_running,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ANNOUNCER = ROOT / ".venv" / "bin" / "announcer"
PREFIX = "192.0.2.10/32"
# Quick, but with room for a loaded CI machine: a check times out only after 0.5 s.
RISE, FALL, INTERVAL, FAST, DRAIN = 2, 2, 0.5, 0.2, 1.5


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a check that gave up closes its connection early: not a test failure


class WebServer:
    """A real HTTP server on 127.0.0.1 that the test stops and starts on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: _QuietServer | None = None
        self.start()

    def start(self) -> None:
        self._server = _QuietServer(("127.0.0.1", self.port), _Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Node:
    pair: ExaBGPPair
    web: WebServer
    config: Path
    socket: Path
    tmp: Path

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ANNOUNCER), *args, "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def events(self, prefix: str = PREFIX) -> list[RouteEvent]:
        return [e for e in self.pair.received() if e.prefix == prefix]

    def wait_event(
        self, pred: Callable[[RouteEvent], bool], after: int = 0, timeout: float = 10.0
    ) -> RouteEvent:
        """The first event past index ``after`` matching ``pred``."""

        def find(events: list[RouteEvent]) -> RouteEvent | None:
            mine = [e for e in events if e.prefix == PREFIX][after:]
            return next((e for e in mine if pred(e)), None)

        found: RouteEvent = self.pair.wait_for(find, timeout=timeout)
        return found


def config_text(tmp: Path, port: int, extra_service: str = "", extra_top: str = "") -> str:
    return f"""
state_dir = "{tmp / "state"}"
control_socket = "{tmp / "control.sock"}"
maintenance_file = "{tmp / "maintenance"}"
include = ""
stall_limit = 5.0
{extra_top}
[defaults]
address_guard = false  # the prefix is not on this host's interfaces
interval = {INTERVAL}
fast_interval = {FAST}
rise = {RISE}
fall = {FALL}
drain_seconds = {DRAIN}

[[service]]
name = "web"
prefixes = ["{PREFIX}"]
{extra_service}
[[service.checks]]
type = "http"
url = "http://127.0.0.1:{port}/health"

[service.announce]
med = 100
large_communities = ["65001:0:1"]
"""


@pytest.fixture(params=["5", "4.2"], ids=lambda major: f"exabgp{major}")
def exabgp(request: pytest.FixtureRequest) -> Path:
    binary = exabgp_binary(str(request.param))
    if binary is None:
        pytest.skip(f"ExaBGP {request.param} not installed: run scripts/bootstrap.sh")
    return binary


@pytest.fixture
def make_node(exabgp: Path, tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[tuple[ExaBGPPair, WebServer]] = []

    def _make(extra_service: str = "", extra_top: str = "", wrap: Sequence[str] = ()) -> Node:
        """``wrap``: a command the controller runs under (e.g. env with LD_PRELOAD)."""
        if not ANNOUNCER.exists():
            pytest.fail(f"{ANNOUNCER} missing: run scripts/bootstrap.sh")
        web = WebServer()
        config = tmp_path / "announcer.toml"
        config.write_text(config_text(tmp_path, web.port, extra_service, extra_top))
        argv = [*wrap, str(ANNOUNCER), "run", "--config", str(config)]
        pair = ExaBGPPair(exabgp, argv, tmp_path / "pair", PairOptions(hold_time=9))
        started.append((pair, web))
        pair.start()
        return Node(pair, web, config, tmp_path / "control.sock", tmp_path)

    yield _make
    for pair, web in started:
        web.stop()
        pair.stop()


def announced(med: int) -> Callable[[RouteEvent], bool]:
    return lambda e: e.action == "announce" and e.med == med


def withdrawn(e: RouteEvent) -> bool:
    return e.action == "withdraw"


def test_health_drives_announce_withdraw_and_reannounce(make_node: Callable[..., Node]) -> None:
    """The peer gets the prefix with MED 100 and the configured large community; when the
    checked HTTP server stops it gets a withdraw within the fall time; when the server
    comes back the prefix is announced again after rise checks."""
    node = make_node()
    first = node.wait_event(announced(100))
    assert first.attributes.get("large-community") == ["65001:0:1"]

    stopped = time.time()
    node.web.stop()
    gone = node.wait_event(withdrawn, timeout=10)
    # fall failures at fast_interval after the first miss at interval, plus timeouts.
    assert gone.received_at - stopped < INTERVAL + FALL * (FAST + INTERVAL) + 2.0

    n = len(node.events())
    node.web.start()
    node.wait_event(announced(100), after=n)
    assert node.status()["services"]["web"]["route"] == "ANNOUNCED"


def test_drain_lowers_then_withdraws_and_undrain_reannounces(
    make_node: Callable[..., Node],
) -> None:
    """`announcer drain --wait` makes the peer see MED 1000 with 65535:0, then a withdraw
    drain_seconds later, and returns 0 once withdrawn; `undrain` announces MED 100 again."""
    node = make_node()
    node.wait_event(announced(100))
    n = len(node.events())
    started = time.monotonic()
    done = node.cli("drain", "web", "--reason", "e2e", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    lowered = node.wait_event(announced(1000), after=n)
    assert "65535:0" in lowered.attributes.get("community", [])
    gone = node.wait_event(withdrawn, after=node.events().index(lowered))
    assert gone.received_at - lowered.received_at >= DRAIN - 0.1
    assert time.monotonic() - started >= DRAIN - 0.1  # --wait waited for the withdraw
    status = node.status()["services"]["web"]
    assert status["route"] == "WITHDRAWN" and status["drain_reason"] == "e2e"

    n = len(node.events())
    undone = node.cli("undrain", "web")
    assert undone.returncode == 0, undone.stderr
    node.wait_event(announced(100), after=n)


def test_drain_survives_a_restart_of_the_process(make_node: Callable[..., Node]) -> None:
    """After a drain, a SIGKILLed controller is respawned by ExaBGP and stays drained: the
    healthy service is not announced again until undrained (the respawned controller may
    withdraw it once more, since the state file is only a belief: harmless)."""
    node = make_node()
    node.wait_event(announced(100))
    assert node.cli("drain", "web", "--wait", "--timeout", "20").returncode == 0
    n = len(node.events())
    old = node.pair.wait_api_pid()
    os.kill(old, signal.SIGKILL)
    new = node.pair.wait_api_pid(other_than=old)
    assert new != old
    time.sleep(RISE * INTERVAL + 1.0)  # long enough to have re-announced, were it not drained
    status = node.status()["services"]["web"]
    assert status["drained"] and status["route"] == "WITHDRAWN"
    assert status["health"] == "UP"
    assert [e.action for e in node.events()[n:]] in ([], ["withdraw"])
    assert node.cli("undrain", "web").returncode == 0
    node.wait_event(announced(100), after=n)


def test_sigkill_while_healthy_changes_nothing_at_the_peer(
    make_node: Callable[..., Node],
) -> None:
    """Killing the controller while healthy sends no withdraw and no attribute change; the
    respawned process is in charge (a later failure still withdraws)."""
    node = make_node()
    node.wait_event(announced(100))
    time.sleep(0.5)
    n = len(node.events())
    old = node.pair.wait_api_pid()
    os.kill(old, signal.SIGKILL)
    new = node.pair.wait_api_pid(other_than=old)
    time.sleep(RISE * INTERVAL + FALL * FAST + 1.0)
    assert node.events()[n:] == []
    assert node.status()["services"]["web"]["route"] == "ANNOUNCED"
    assert is_running(new)
    node.web.stop()
    node.wait_event(withdrawn, after=n)


def test_reload_applies_only_the_difference(make_node: Callable[..., Node]) -> None:
    """Reload with the same config sends nothing to ExaBGP; a broken config keeps the old one
    running and shows in status; removing the service drains it then withdraws it."""
    node = make_node()
    node.wait_event(announced(100))
    time.sleep(0.3)
    before = node.status()
    n = len(node.events())
    assert node.cli("reload").returncode == 0
    time.sleep(0.5)
    after = node.status()
    assert after["exabgp"]["sent"] == before["exabgp"]["sent"]
    assert node.events()[n:] == []

    good = node.config.read_text()
    node.config.write_text(good.replace('prefixes = ["', 'prefixes = ["bogus", "'))
    refused = node.cli("reload")
    assert refused.returncode == 1
    status = node.status()
    assert "bogus" in (status["config_error"] or "")
    assert status["services"]["web"]["route"] == "ANNOUNCED"

    node.config.write_text(good.split("[[service]]")[0])
    n = len(node.events())
    assert node.cli("reload").returncode == 0
    lowered = node.wait_event(announced(1000), after=n)
    gone = node.wait_event(withdrawn, after=node.events().index(lowered))
    assert gone.received_at - lowered.received_at >= DRAIN - 0.1


def wait_status(
    node: Node, pred: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """Poll `announcer status --json` until ``pred`` holds (the socket may be gone a while,
    e.g. while ExaBGP respawns the controller)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | str = "never reachable"
    while time.monotonic() < deadline:
        done = node.cli("status", "--json")
        if done.returncode == 0:
            status: dict[str, Any] = json.loads(done.stdout)
            if pred(status):
                return status
            last = status
        time.sleep(0.05)
    raise AssertionError(f"status never matched: {last}{node.pair.logs()}")


def test_sighup_with_a_config_that_is_not_utf8_keeps_the_controller_and_the_route(
    make_node: Callable[..., Node],
) -> None:
    """SIGHUP with a byte that is not UTF-8 in the config is refused: the same controller
    keeps running and announcing (the peer sees nothing), ExaBGP keeps running, status
    names the file; once fixed, the next SIGHUP applies it."""
    node = make_node()
    node.wait_event(announced(100))
    pid = node.pair.wait_api_pid()
    n = len(node.events())
    good = node.config.read_bytes()
    node.config.write_bytes(good + b"# caf\xff\n")
    os.kill(pid, signal.SIGHUP)
    status = wait_status(node, lambda s: s["config_error"] is not None)
    assert f"{node.config}: not UTF-8 text: invalid byte 0xff" in status["config_error"]
    assert status["services"]["web"]["route"] == "ANNOUNCED"
    assert node.pair.api_pids() == [pid]
    assert node.pair.speaker is not None and node.pair.speaker.poll() is None
    assert node.events()[n:] == []

    node.config.write_bytes(good.replace(b"med = 100", b"med = 150"))
    os.kill(pid, signal.SIGHUP)
    node.wait_event(announced(150), after=n)
    assert wait_status(node, lambda s: s["config_error"] is None)
    assert node.pair.api_pids() == [pid]


def test_a_respawn_on_a_broken_config_runs_on_the_last_good_one(
    make_node: Callable[..., Node],
) -> None:
    """A controller respawned by ExaBGP while the config does not load runs on the last good
    config: it does not die (ExaBGP would exit after five deaths), takes the route over
    without a flap, keeps checking (a failure still withdraws), reports the error in status
    and announcer_config_ok, and a reload of the fixed file clears it."""
    port = free_port()
    node = make_node(extra_top=f'metrics_listen = "127.0.0.1:{port}"')
    node.wait_event(announced(100))
    n = len(node.events())
    good = node.config.read_bytes()
    node.config.write_bytes(good + b"# caf\xff\n")
    old = node.pair.wait_api_pid()
    os.kill(old, signal.SIGKILL)
    new = node.pair.wait_api_pid(other_than=old)
    status = wait_status(
        node, lambda s: s["config_error"] is not None and s["services"]["web"]["health"] == "UP"
    )
    assert "not UTF-8 text" in status["config_error"]
    assert "running on the last good config" in status["config_error"]
    assert status["services"]["web"]["route"] == "ANNOUNCED"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert b"announcer_config_ok 0.0" in reply.read()
    assert node.pair.api_pids() == [new]
    assert node.pair.speaker is not None and node.pair.speaker.poll() is None
    assert [e for e in node.events()[n:] if e.action == "withdraw"] == []

    node.web.stop()
    node.wait_event(withdrawn, after=n)
    node.web.start()
    node.wait_event(announced(100), after=n)

    node.config.write_bytes(good)
    assert node.cli("reload").returncode == 0
    assert node.status()["config_error"] is None
    assert node.pair.api_pids() == [new]


def test_connection_aware_drain_withdraws_early(make_node: Callable[..., Node]) -> None:
    """With drain_until_idle and no connection open to the prefix, the drain withdraws within
    a couple of seconds instead of waiting the 30 s drain period."""
    node = make_node(extra_service="drain_until_idle = true\ndrain_seconds = 30")
    node.wait_event(announced(100))
    n = len(node.events())
    started = time.time()
    assert node.cli("drain", "web").returncode == 0
    node.wait_event(announced(1000), after=n)
    gone = node.wait_event(withdrawn, after=n, timeout=10)
    assert gone.received_at - started < 5.0
    assert node.status()["services"]["web"]["connections"] == 0


def _fuzz_payloads(rng: random.Random) -> Iterator[bytes]:
    cmds = ["status", "drain", "undrain", "reload", "ping", "nope", "", None]
    while True:
        kind = rng.randrange(6)
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\n"
        elif kind == 1:
            yield b"{" * rng.randrange(1, 50) + b"\n"
        elif kind == 2:
            req: dict[str, Any] = {"v": rng.choice([1, 2, "1", None]), "cmd": rng.choice(cmds)}
            if rng.random() < 0.5:
                req["services"] = rng.choice([["web"], ["nope"], "web", [1, 2], None])
            if rng.random() < 0.3:
                req[rng.choice(["all", "reason", "extra", "wait"])] = rng.choice([True, 1, "x"])
            yield json.dumps(req).encode() + b"\n"
        elif kind == 3:
            yield b'{"v": 1, "cmd": "status"}\n'
        elif kind == 4:
            yield json.dumps([1, "two", {"three": 3}]).encode() + b"\n"
        else:
            yield b"\n"


def test_fuzzed_control_requests_do_not_disturb_the_daemon(
    make_node: Callable[..., Node],
) -> None:
    """10,000 random and malformed requests on the control socket get answers or are closed,
    never crash the daemon, and the check loop keeps its schedule meanwhile. (Some random
    requests are valid drains: root may drain, so the route state is not asserted.)"""
    node = make_node()
    node.wait_event(announced(100))
    pid = node.pair.wait_api_pid()
    before = node.status()["services"]["web"]["checks_run"]
    started = time.monotonic()
    rng = random.Random(20261126)
    payloads = _fuzz_payloads(rng)
    sent = 0
    while sent < 10_000:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(node.socket))
            f = s.makefile("rwb")
            for _ in range(100):
                payload = next(payloads)
                try:
                    f.write(payload)
                    f.flush()
                    if not f.readline():
                        break  # the server closed this connection: open another
                except OSError:
                    break
                finally:
                    sent += 1
    elapsed = time.monotonic() - started
    status = node.status()
    after = status["services"]["web"]["checks_run"]
    expected = elapsed / INTERVAL
    # Rounds are counted whole at both ends: allow one less (a 0.5 s run expects 2.5).
    assert after - before >= 0.8 * expected - 1, (after - before, expected)
    assert node.pair.api_pids() == [pid]  # the same process: it never died
    assert status["services"]["web"]["health"] == "UP"


def test_sigterm_withdraws_everything_and_exits_zero(tmp_path: Path) -> None:
    """SIGTERM makes the daemon withdraw every prefix it announced and exit 0 (run directly,
    with the test answering acks as ExaBGP would)."""
    web = WebServer()
    try:
        config = tmp_path / "announcer.toml"
        config.write_text(config_text(tmp_path, web.port))
        proc = subprocess.Popen(
            [str(ANNOUNCER), "run", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith(f"announce route {PREFIX} next-hop self med 100")
        proc.stdin.write(b"done\n")
        proc.stdin.flush()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read().decode()
        assert proc.wait(10) == 0
        assert rest.startswith(f"withdraw route {PREFIX} next-hop self med 100")
    finally:
        web.stop()


def _burst_config(tmp_path: Path, stall_limit: float) -> Path:
    """Six services of 1,000 prefixes each: six `announce attributes ... nlri` lines of
    about 16 KB, more than a pipe holds."""
    flag = tmp_path / "ok"
    flag.touch()
    services = ""
    for i in range(6):
        prefixes = ", ".join(f'"10.{i}.{j // 256}.{j % 256}/32"' for j in range(1000))
        services += (
            f'[[service]]\nname = "s{i}"\nprefixes = [{prefixes}]\n'
            f'[[service.checks]]\ntype = "file"\npath = "{flag}"\n'
        )
    config = tmp_path / "announcer.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\ncontrol_socket = "{tmp_path / "c.sock"}"\n'
        f'include = ""\nstall_limit = {stall_limit}\n[defaults]\ninterval = 0.2\n'
        "fast_interval = 0.1\nrise = 1\naddress_guard = false\n" + services
    )
    return config


def test_exabgp_reading_slowly_never_stalls_the_loop(tmp_path: Path) -> None:
    """When ExaBGP does not read our stdout (a burst bigger than the pipe), the commands wait
    in the output thread: the main loop keeps checking and answering, and the stall guard
    does not fire."""
    config = _burst_config(tmp_path, stall_limit=1.0)
    out_r, out_w = os.pipe()  # read only at the end: the pipe fills after 64 KiB
    proc = subprocess.Popen(
        [str(ANNOUNCER), "run", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=out_w,
        stderr=subprocess.DEVNULL,
    )
    os.close(out_w)
    try:
        time.sleep(3.0)  # three stall limits
        assert proc.poll() is None, f"exited with {proc.returncode}"
        status = subprocess.run(
            [str(ANNOUNCER), "status", "--json", "--socket", str(tmp_path / "c.sock")],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        services = json.loads(status.stdout)["services"]
        assert all(s["checks_run"] >= 5 for s in services.values())
        # Now read: every prefix arrives, in whole lines.
        with os.fdopen(out_r, "rb") as reader:
            out_r = -1
            got = b""
            deadline = time.monotonic() + 10
            while got.count(b"\n") < 6 and time.monotonic() < deadline:
                got += os.read(reader.fileno(), 1 << 20)
        lines = got.decode().splitlines()
        assert len(lines) == 6
        assert sum(len(line.split(" nlri ")[1].split()) for line in lines) == 6000
    finally:
        proc.kill()
        proc.wait()
        if out_r != -1:
            os.close(out_r)


def test_a_stalled_main_loop_exits_so_exabgp_respawns(tmp_path: Path) -> None:
    """When the main loop blocks (here: nobody reads our stderr and debug logging fills it)
    the stall guard exits with status 70 within about the stall limit."""
    config = _burst_config(tmp_path, stall_limit=1.0)
    proc = subprocess.Popen(
        [str(ANNOUNCER), "run", "--config", str(config), "--log-level", "debug"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # never read while it runs
    )
    started = time.monotonic()
    try:
        status = proc.wait(15)
        assert status == 70
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


# ---------------------------------------------------------------- takeover faults (issue 10)

FAKETIME_LIBS = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


def _last(node: Node) -> RouteEvent | None:
    events = node.events()
    return events[-1] if events else None


def _kill_controller_frozen(node: Node, between: Callable[[], None]) -> int:
    """SIGSTOP the controller, run ``between`` (it cannot react meanwhile), SIGKILL it;
    returns the pid of the controller ExaBGP starts next."""
    old = node.pair.wait_api_pid()
    os.kill(old, signal.SIGSTOP)
    try:
        between()
    finally:
        os.kill(old, signal.SIGKILL)
    return node.pair.wait_api_pid(other_than=old)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\xff garbage {", b'{"format": 99, "services": {}}'],
    ids=["empty", "garbage", "newer-format"],
)
def test_unreadable_state_file_after_a_respawn_withdraws_a_dead_service(
    make_node: Callable[..., Node], content: bytes
) -> None:
    """The state file emptied, corrupted or of a newer format, the web server stopped and the
    controller killed: the respawned controller does not know what ExaBGP holds, withdraws
    the dead service's route explicitly, and only then reports it WITHDRAWN; a drain answered
    meanwhile never claims a withdraw that did not happen."""
    node = make_node()
    node.wait_event(announced(100))
    n = len(node.events())

    def corrupt() -> None:
        (node.tmp / "state" / "state.json").write_bytes(content)
        node.web.stop()

    _kill_controller_frozen(node, corrupt)
    gone = node.wait_event(withdrawn, after=n, timeout=15)
    status = node.status()
    assert status["services"]["web"]["route"] == "WITHDRAWN"
    assert status["services"]["web"]["health"] == "DOWN"
    done = node.cli("drain", "web", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert _last(node) == gone  # the wire agrees: nothing was announced since


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs at tmp_path/state (root only: mount)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a real read-only or full filesystem)")
    where = tmp_path / "state"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0750", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_a_drain_that_cannot_be_saved_exits_1_and_status_matches_the_wire(
    make_node: Callable[..., Node], small_tmpfs: Path, fault: str
) -> None:
    """With the state directory read-only or full, `drain --wait` still lowers and withdraws
    the route but exits 1 saying it was not saved; status shows the error. After the
    controller is killed, the respawned one cannot trust the stale file: it asserts what it
    believes (healthy: announced again), so status and the peer agree."""
    node = make_node()
    node.wait_event(announced(100))
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    else:
        with contextlib.suppress(OSError), (small_tmpfs / "filler").open("wb", buffering=0) as f:
            while True:  # until ENOSPC
                f.write(b"\0" * 65536)
    n = len(node.events())
    done = node.cli("drain", "web", "--wait", "--timeout", "20")
    assert done.returncode == 1
    assert "not saved" in done.stderr
    assert ("Read-only" in done.stderr) if fault == "read-only" else ("space" in done.stderr)
    lowered = node.wait_event(announced(1000), after=n)
    node.wait_event(withdrawn, after=node.events().index(lowered))
    assert node.status()["state_error"]

    n = len(node.events())
    old = node.pair.wait_api_pid()
    os.kill(old, signal.SIGKILL)
    node.pair.wait_api_pid(other_than=old)
    node.wait_event(announced(100), after=n, timeout=15)
    status = node.status()["services"]["web"]
    assert status["route"] == "ANNOUNCED" and not status["drained"]


@pytest.mark.parametrize("step", ["-1d", "+1d"], ids=["back-a-day", "forward-a-day"])
def test_a_clock_step_neither_stretches_nor_skips_a_restored_drain(
    make_node: Callable[..., Node], tmp_path: Path, step: str
) -> None:
    """A drain in progress when the controller restarts with its wall clock stepped a day
    (libfaketime on the controller only; monotonic time left alone) still withdraws when it
    was due: not at once, not a day later."""
    if not FAKETIME_LIBS:
        pytest.skip("libfaketime is not installed (scripts/bootstrap.sh installs it as root)")
    spec = tmp_path / "faketime"
    spec.write_text("+0\n")
    wrap = [
        "/usr/bin/env",
        f"LD_PRELOAD={FAKETIME_LIBS[0]}",
        f"FAKETIME_TIMESTAMP_FILE={spec}",
        "FAKETIME_NO_CACHE=1",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]
    drain_seconds = 6.0
    node = make_node(extra_service=f"drain_seconds = {drain_seconds}", wrap=wrap)
    node.wait_event(announced(100))
    n = len(node.events())
    assert node.cli("drain", "web").returncode == 0
    lowered = node.wait_event(announced(1000), after=n)
    _kill_controller_frozen(node, lambda: spec.write_text(f"{step}\n"))
    left = node.status()["services"]["web"]["drain_left"]
    assert left is not None and 0 < left <= drain_seconds
    gone = node.wait_event(withdrawn, after=node.events().index(lowered), timeout=20)
    assert gone.received_at - lowered.received_at >= drain_seconds - 0.2
