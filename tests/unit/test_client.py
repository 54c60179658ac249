"""The operator's commands (:mod:`announcer.client`): exit codes, connecting, output.

Commands are parsed with :func:`add_commands` and run with :func:`run_command`
in-process against a real :class:`~announcer.control.ControlServer` whose
handler is a scripted fake of the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from announcer import client as cl
from announcer import transport
from announcer.client import (
    ControlClient,
    add_commands,
    render_status,
    run_command,
)
from announcer.config import DEFAULT_CONTROL_SOCKET
from announcer.control import ControlRefused, DrainRequest, Peer, Request, UndrainRequest
from announcer.control_server import ControlServer
from announcer.errors import ControlError
from announcer.log import Logger
from announcer.render import format_attributes, format_duration

# ---------------------------------------------------------------- fixtures


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="announcer")
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def run(*argv: str) -> tuple[int, str, str]:
    """Parse and run one command: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = run_command(parse(*argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory (pytest's tmp_path can push a socket path past 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="anncl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock(sock_dir: Path) -> Path:
    return sock_dir / "ctl.sock"


class FakeDaemon:
    """A scripted handler: ``answers[cmd]`` is a result dict, or a function of the request."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.requests: list[Request] = []

    def __call__(self, request: Request, peer: Peer) -> dict[str, Any]:
        self.requests.append(request)
        answer = self.answers.get(request.cmd, {})
        result: dict[str, Any] = answer(request) if callable(answer) else answer
        return result

    def count(self, cmd: str) -> int:
        return sum(1 for r in self.requests if r.cmd == cmd)


@pytest.fixture
def fake() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def server(sock: Path, fake: FakeDaemon) -> Iterator[ControlServer]:
    srv = ControlServer(sock, fake, group=None, log=Logger(io.StringIO()))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANNOUNCER_SOCKET", raising=False)
    monkeypatch.delenv("ANNOUNCER_CONFIG", raising=False)


def svc(**fields: Any) -> dict[str, Any]:
    """A service as Daemon.snapshot() shows it (announced and healthy unless overridden)."""
    base: dict[str, Any] = {
        "health": "UP",
        "route": "ANNOUNCED",
        "prefixes": ["192.0.2.10/32"],
        "wire_prefixes": ["192.0.2.10/32"],
        "attributes": {
            "med": 100,
            "local_preference": None,
            "as_path_prepend": 0,
            "communities": [],
            "large_communities": [],
        },
        "drained": False,
        "drain_sources": [],
        "drain_reason": "",
        "drain_left": None,
        "health_for": 10.0,
        "route_for": 10.0,
        "last_ok": True,
        "last_reason": "ok",
    }
    base.update(fields)
    return base


DRAINING = {
    "route": "DRAINING",
    "drained": True,
    "drain_sources": ["operator"],
    "drain_left": 1.6,
    "connections": 12,
}


# ---------------------------------------------------------------- reaching the daemon


def test_missing_socket_exits_3_after_retrying_for_about_two_seconds(sock: Path) -> None:
    """No socket at all: exit 3 with a message naming the path, after retrying ~2 s (the
    daemon may be starting)."""
    began = time.monotonic()
    code, out, err = run("status", "--socket", str(sock))
    took = time.monotonic() - began
    assert code == 3
    assert out == ""
    assert f"{sock} does not exist" in err and "--socket" in err
    assert 1.8 <= took < 4.0


def test_stale_socket_exits_3(sock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket nobody listens on (the daemon died): exit 3, "nothing accepts connections"."""
    monkeypatch.setattr(transport, "CONNECT_RETRY", 0.2)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()
    code, _, err = run("drain", "web", "--socket", str(sock))
    assert code == 3
    assert "nothing accepts connections" in err


def test_client_retries_until_the_socket_appears(sock: Path, fake: FakeDaemon) -> None:
    """A client started 0.5 s before the daemon's socket exists connects once it does."""
    srv = ControlServer(sock, fake, group=None, log=Logger(io.StringIO()))
    fake.answers["status"] = {"services": {"web": svc()}}
    timer = threading.Timer(0.5, srv.start)
    began = time.monotonic()
    timer.start()
    try:
        code, out, err = run("status", "--socket", str(sock))
    finally:
        timer.join()
        srv.close()
    assert code == 0, err
    assert time.monotonic() - began >= 0.5
    assert out.startswith("SERVICE")


def test_no_answer_in_time_exits_3(sock: Path) -> None:
    """Something that accepts but never answers: ControlError code 3 after the timeout."""
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(sock))
    mute.listen(1)
    try:
        with pytest.raises(ControlError, match=r"did not answer within 0\.3s") as err:
            ControlClient(sock, timeout=0.3).request("ping")
        assert err.value.code == 3
    finally:
        mute.close()


def test_idle_connection_closed_by_the_daemon_is_reopened(sock: Path, fake: FakeDaemon) -> None:
    """The daemon closes connections idle past its timeout; the next request on that client
    goes out on a new connection and gets its own answer (not a stale error)."""
    srv = ControlServer(sock, fake, group=None, log=Logger(io.StringIO()), timeout=0.3)
    srv.start()
    fake.answers["drain"] = {"services": {"web": svc(**DRAINING)}}
    try:
        with ControlClient(sock) as client:
            assert client.request("ping") == {}
            time.sleep(0.6)
            result = client.request("drain", services=["web"])
        assert result["services"]["web"]["route"] == "DRAINING"
    finally:
        srv.close()
    assert [r.cmd for r in fake.requests] == ["ping", "drain"]


# ---------------------------------------------------------------- an overloaded daemon


def busy_then(n: int, answer: dict[str, Any]) -> Callable[[Request], dict[str, Any]]:
    """A handler answer: "busy" the first ``n`` times, then ``answer``."""
    calls = {"n": 0}

    def respond(request: Request) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= n:
            raise ControlRefused("too many control requests at once; try again shortly", "busy")
        return answer

    return respond


def test_busy_is_tried_again_until_the_daemon_answers(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """A daemon answering "busy" three times and then for real: ``announcer status`` and
    ``announcer drain`` still succeed, each having asked four times."""
    fake.answers["status"] = busy_then(3, {"services": {"web": svc()}})
    code, out, err = run("status", "--socket", str(server.path))
    assert code == 0, err
    assert out.startswith("SERVICE")
    assert fake.count("status") == 4
    fake.answers["drain"] = busy_then(3, {"services": {"web": svc(changed=True, **DRAINING)}})
    code, out, err = run("drain", "web", "--socket", str(server.path))
    assert (code, out) == (0, "web: draining, withdraw in 2s\n"), err
    assert fake.count("drain") == 4


def test_busy_past_retry_for_is_refused_saying_so(server: ControlServer, fake: FakeDaemon) -> None:
    """A daemon that stays busy: after ``retry_for`` the busy reply is raised (ControlRefused,
    kind busy), saying how long it was tried."""
    fake.answers["status"] = busy_then(10**9, {})
    with pytest.raises(ControlRefused) as err:
        ControlClient(server.path, retry_for=0.3).request("status")
    assert err.value.kind == "busy" and err.value.code == 1
    assert "still busy after trying for 0.3s" in str(err.value)
    assert fake.count("status") >= 2


def serve_like_an_older_daemon(listener: socket.socket, busy: int, seen: list[bytes]) -> None:
    """Like daemons before the reserve: "busy" at accept (then close) ``busy`` times, then
    one connection served (each line answered ok, until the client closes it)."""
    for n in itertools.count():
        conn, _ = listener.accept()
        with conn:
            if n < busy:
                reply = {"v": 1, "ok": False, "code": "busy", "error": "too many connections"}
                with contextlib.suppress(OSError):  # the client may have gone
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                continue
            for line in conn.makefile("rb"):
                seen.append(line)
                conn.sendall(b'{"v": 1, "ok": true, "result": {"pong": true}}\n')
            return


def test_busy_from_an_older_daemon_is_tried_again_on_a_new_connection(sock: Path) -> None:
    """An older daemon answers "busy" when it accepts and closes the connection; the client
    connects again after a pause and its request is answered."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(8)
    listener.settimeout(10)
    seen: list[bytes] = []
    thread = threading.Thread(target=serve_like_an_older_daemon, args=(listener, 3, seen))
    thread.start()
    try:
        with ControlClient(sock) as client:
            assert client.request("ping") == {"pong": True}
    finally:
        thread.join(10)
        listener.close()
    assert [json.loads(x)["cmd"] for x in seen] == ["ping"]


def fill_accept_queue(path: Path) -> list[socket.socket]:
    """Connections that fill a listener's accept queue (the next connect gets EAGAIN)."""
    fillers: list[socket.socket] = []
    while True:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            return fillers
        fillers.append(filler)


def test_a_full_accept_queue_is_waited_out(sock: Path) -> None:
    """While the daemon's accept queue is full (EAGAIN on connect) the client keeps trying,
    with pauses; once the daemon accepts again the request is answered."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(0)
    listener.settimeout(10)
    fillers = fill_accept_queue(sock)
    seen: list[bytes] = []

    def later() -> None:
        time.sleep(0.3)
        for filler in fillers:  # they leave; the server accepts and drops them
            filler.close()
        serve_like_an_older_daemon(listener, len(fillers), seen)

    thread = threading.Thread(target=later)
    thread.start()
    try:
        with ControlClient(sock) as client:
            assert client.request("ping") == {"pong": True}
    finally:
        thread.join(10)
        listener.close()
    assert len(seen) == 1


def test_an_accept_queue_full_past_retry_for_exits_3(sock: Path) -> None:
    """An accept queue that stays full: ControlError code 3 saying the daemon is overloaded."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    listener.listen(0)
    fillers = fill_accept_queue(sock)
    try:
        with pytest.raises(ControlError, match=r"stayed full for 0\.3s") as err:
            ControlClient(sock, retry_for=0.3).request("ping")
        assert err.value.code == 3 and "overloaded" in str(err.value)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_drain_wait_keeps_polling_through_busy_answers(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """A status poll still busy after the client's own tries does not end ``drain --wait``:
    it polls on until the route is withdrawn; if --timeout passes with no answer at all,
    it says so."""
    withdrawn = svc(route="WITHDRAWN", drained=True, drain_sources=["operator"])
    fake.answers["status"] = busy_then(3, {"services": {"web": withdrawn}})
    with ControlClient(server.path, retry_for=0) as client:
        code = cl.wait_withdrawn(client, ["web"], timeout=5, err=io.StringIO(), poll=0.01)
    assert code == 0
    assert fake.count("status") == 4

    fake.answers["status"] = busy_then(10**9, {})
    err = io.StringIO()
    with ControlClient(server.path, retry_for=0) as client:
        code = cl.wait_withdrawn(client, ["web"], timeout=0.2, err=err, poll=0.01)
    assert code == 1
    assert "still announced: unknown, the daemon was too busy to answer" in err.getvalue()


# ---------------------------------------------------------------- exit codes


def test_error_reply_exits_1_with_the_daemons_message(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """An error reply (here unknown_service) exits 1 and prints the daemon's text; the
    ControlRefused raised by request() carries the protocol code."""

    def refuse(request: Request) -> dict[str, Any]:
        raise ControlRefused("unknown service 'wbe' (known: web)", "unknown_service")

    fake.answers["drain"] = refuse
    code, out, err = run("drain", "wbe", "--socket", str(server.path))
    assert (code, out) == (1, "")
    assert err == "announcer: unknown service 'wbe' (known: web)\n"
    with pytest.raises(ControlRefused) as caught:
        ControlClient(server.path).request("drain", services=["wbe"])
    assert caught.value.kind == "unknown_service" and caught.value.code == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drain"], "name at least one service, or give --all"),
        (["drain", "web", "--all"], "not both"),
        (["undrain"], "name at least one service, or give --all"),
    ],
)
def test_usage_errors_exit_2_without_contacting_the_daemon(
    argv: list[str], message: str, server: ControlServer, fake: FakeDaemon
) -> None:
    """drain/undrain need service names or --all (not both): exit 2 with the usage line."""
    code, _, err = run(*argv, "--socket", str(server.path))
    assert code == 2
    assert message in err and err.startswith("usage: announcer")
    assert fake.requests == []


def test_bad_timeout_and_unknown_command_are_usage_errors() -> None:
    """--timeout must be a positive number (argparse exits 2); request() with an unknown
    command raises ControlError code 2."""
    with pytest.raises(SystemExit) as exited:
        parse("drain", "web", "--wait", "--timeout", "-1")
    assert exited.value.code == 2
    with pytest.raises(ControlError) as err:
        ControlClient("/nonexistent").request("reboot")
    assert err.value.code == 2


def test_broken_config_for_the_socket_path_exits_2(tmp_path: Path) -> None:
    """When the socket comes from --config and that config is broken: exit 2 with its errors."""
    bad = tmp_path / "announcer.toml"
    bad.write_text("this is = not toml = at all\n")
    code, _, err = run("status", "--config", str(bad))
    assert code == 2
    assert str(bad) in err


# ---------------------------------------------------------------- where the socket is


def test_socket_path_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--socket, else $ANNOUNCER_SOCKET, else control_socket of --config or
    $ANNOUNCER_CONFIG, else /run/announcer/control.sock."""
    (tmp_path / "ok").write_text("")
    conf = tmp_path / "announcer.toml"
    conf.write_text(
        f'control_socket = "{tmp_path}/from-config.sock"\ninclude = "none/*.toml"\n'
        f'[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        f'[[service.checks]]\ntype = "file"\npath = "{tmp_path}/ok"\n'
    )
    assert cl.socket_path(parse("status")) == DEFAULT_CONTROL_SOCKET
    assert cl.socket_path(parse("status", "--config", str(conf))) == tmp_path / "from-config.sock"
    monkeypatch.setenv("ANNOUNCER_CONFIG", str(conf))
    assert cl.socket_path(parse("status")) == tmp_path / "from-config.sock"
    monkeypatch.setenv("ANNOUNCER_SOCKET", "/env.sock")
    assert cl.socket_path(parse("status")) == Path("/env.sock")
    assert cl.socket_path(parse("status", "--socket", "/flag.sock")) == Path("/flag.sock")


# ---------------------------------------------------------------- status output

SAMPLE: dict[str, Any] = {
    "uptime": 3725.4,
    "neighbors": {"192.0.2.1": "up", "192.0.2.2": "down"},
    "exabgp": {
        "sent": 14,
        "done": 13,
        "error": 1,
        "pending": 0,
        "last_error": "announce route 192.0.2.99/32 next-hop self",
    },
    "config_error": "conf.d/web.toml: service 'web': rise: must be at least 1",
    "reload_note": None,
    "a_key_from_the_future": {"x": 1},
    "services": {
        "web": svc(
            prefixes=["192.0.2.10/32", "2001:db8::10/128"],
            attributes={
                "med": 1000,
                "local_preference": None,
                "as_path_prepend": 0,
                "communities": ["65535:0"],
                "large_communities": [],
            },
            drain_reason="kernel upgrade",
            drain_left=27.3,
            route_for=2.7,
            last_reason="HTTP 200 in 3ms",
            **{k: v for k, v in DRAINING.items() if k != "drain_left"},
        ),
        "dns": svc(
            health="DOWN",
            route="WITHDRAWN",
            prefixes=["192.0.2.53/32"],
            attributes=None,
            route_for=184.2,
            last_ok=False,
            last_reason="connection refused by 127.0.0.1:53\nafter 3 attempts",
            connections=None,
        ),
        "api": svc(
            health="DOWN",
            route="LOWERED",
            prefixes=["198.51.100.0/24"],
            attributes={
                "med": 1000,
                "local_preference": 50,
                "as_path_prepend": 2,
                "communities": [],
                "large_communities": ["65001:0:1"],
            },
            route_for=7300,
            last_ok=False,
            last_reason="exit 1",
            connections=0,
            dampened_for=42.1,
        ),
        "ntp": svc(
            health="INIT",
            route="WITHDRAWN",
            prefixes=["192.0.2.123/32"],
            attributes=None,
            drained=True,
            drain_sources=["maintenance"],
            drain_reason="maintenance file /etc/announcer/maintenance",
            route_for=0.4,
            last_ok=None,
        ),
    },
}

SAMPLE_TABLE = """\
SERVICE  HEALTH  ROUTE      PREFIXES                        ATTRIBUTES                                   LAST CHECK                                FOR    DRAIN  CONNS
web      UP      DRAINING   192.0.2.10/32,2001:db8::10/128  med 1000 comm 65535:0                        ok: HTTP 200 in 3ms                       2s     28s    12
dns      DOWN    WITHDRAWN  192.0.2.53/32                   -                                            fail: connection refused by 127.0.0.1...  3m04s  -      -
api      DOWN    LOWERED    198.51.100.0/24                 med 1000 lpref 50 prepend 2 lcomm 65001:0:1  fail: exit 1                              2h01m  -      0
ntp      INIT    WITHDRAWN  192.0.2.123/32                  -                                            -                                         0s     done   -

web: drained by operator: kernel upgrade
api: flapping, held for 43s (dampened)
ntp: drained by maintenance: maintenance file /etc/announcer/maintenance

exabgp: sent 14, done 13, errors 1, pending 0; last error: announce route 192.0.2.99/32 next-hop self
neighbors: 192.0.2.1 up, 192.0.2.2 down
uptime: 1h02m
config error (last reload failed; running the previous config):
  conf.d/web.toml: service 'web': rise: must be at least 1
"""  # noqa: E501 - the table is wide on purpose


def test_status_table_for_a_sample_snapshot() -> None:
    """One aligned row per service: a draining one (lowered attributes, countdown, drain
    reason below), a withdrawn one (attributes "-", failing check truncated and kept on
    one line), a lowered one (every attribute kind; dampening noted), a maintenance-drained
    withdrawn one ("done"); then ExaBGP counters, neighbours, uptime, config error.
    Unknown keys are ignored."""
    assert render_status(SAMPLE) == SAMPLE_TABLE


def test_status_command_prints_the_table_or_json(server: ControlServer, fake: FakeDaemon) -> None:
    """``status`` prints the table; ``status --json`` the daemon's result unchanged; names
    given on the command line are passed on as the services filter."""
    fake.answers["status"] = SAMPLE
    code, out, _ = run("status", "--socket", str(server.path))
    assert (code, out) == (0, SAMPLE_TABLE)
    code, out, _ = run("status", "web", "dns", "--json", "--socket", str(server.path))
    assert code == 0 and json.loads(out) == SAMPLE
    assert fake.requests[-1].services == ("web", "dns")


def test_status_tolerates_missing_and_odd_fields() -> None:
    """A service with no fields at all, or fields of unexpected types, still renders."""
    text = render_status(
        {"services": {"bare": {}, "odd": {"route_for": "soon", "attributes": "x", "prefixes": []}}}
    )
    lines = text.splitlines()
    assert lines[1].split() == ["bare", "?", "?", "-", "-", "-", "-", "-"]
    assert lines[2].split() == ["odd", "?", "?", "-", "-", "-", "-", "-"]
    assert render_status({}) == "no services configured\n\n"


def test_status_notes_an_event_that_took_a_service_down() -> None:
    """A service an event took down gets a note: the check, its reason, the route change
    and how long after the event its command was written; once UP again, none."""
    event = {
        "check": "process /run/nginx.pid",
        "reason": "pid 42 exited",
        "ago": 3.2,
        "down": True,
        "route": "ANNOUNCED -> WITHDRAWN",
        "written": 0.0004,
    }
    down = render_status({"services": {"web": {"health": "DOWN", "last_event": event}}})
    assert (
        "web: down by an event 3s ago: process /run/nginx.pid: pid 42 exited;"
        " ANNOUNCED -> WITHDRAWN, written 0.4 ms after it"
    ) in down
    up = render_status({"services": {"web": {"health": "UP", "last_event": event}}})
    assert "by an event" not in up


@pytest.mark.parametrize(
    ("seconds", "up", "text"),
    [
        (0, False, "0s"),
        (12.9, False, "12s"),
        (12.1, True, "13s"),
        (59.5, False, "59s"),
        (60, False, "1m00s"),
        (184, False, "3m04s"),
        (3599, False, "59m59s"),
        (3600, False, "1h00m"),
        (7300, False, "2h01m"),
        (90061, False, "1d01h"),
        (None, False, "-"),
        (-1, False, "-"),
        (float("inf"), False, "-"),
        ("12", False, "-"),
    ],
)
def test_format_duration(seconds: Any, up: bool, text: str) -> None:
    """Durations read as 12s, 3m04s, 2h01m, 1d01h; countdowns round up; junk is "-"."""
    assert format_duration(seconds, up=up) == text


def test_format_attributes() -> None:
    """Only what is set, in a fixed order; nothing on the wire is "-"."""
    assert format_attributes(None) == "-"
    assert format_attributes({"med": None, "communities": []}) == "-"
    assert (
        format_attributes(
            {
                "med": 0,
                "local_preference": 200,
                "as_path_prepend": 3,
                "communities": ["65535:0", "65001:7"],
                "large_communities": ["1:2:3"],
            }
        )
        == "med 0 lpref 200 prepend 3 comm 65535:0,65001:7 lcomm 1:2:3"
    )


# ---------------------------------------------------------------- drain, undrain, reload


def test_drain_and_undrain_say_what_changed(server: ControlServer, fake: FakeDaemon) -> None:
    """drain prints "web: draining, withdraw in 30s" (or "already drained"); undrain prints
    the route it returns to; the reason and --all are passed on."""
    fake.answers["drain"] = {
        "services": {
            "web": svc(changed=True, **{**DRAINING, "drain_left": 30.0}),
            "dns": svc(changed=False, route="WITHDRAWN", drained=True, drain_sources=["operator"]),
        }
    }
    code, out, _ = run("drain", "--all", "--reason", "disk swap", "--socket", str(server.path))
    assert code == 0
    assert out == (
        "web: draining, withdraw in 30s\ndns: already drained (operator); drained, withdrawn\n"
    )
    assert fake.requests[-1] == DrainRequest((), True, "disk swap")

    fake.answers["undrain"] = {"services": {"web": svc(changed=True)}}
    code, out, _ = run("undrain", "web", "--socket", str(server.path))
    assert (code, out) == (0, "web: undrained, route ANNOUNCED (health UP)\n")
    assert fake.requests[-1] == UndrainRequest(("web",))


def test_undrain_exits_1_while_another_source_still_drains(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """Lifting the operator drain of a service the maintenance file still drains exits 1
    and says what keeps it drained."""
    fake.answers["undrain"] = {
        "services": {
            "web": svc(changed=True, route="WITHDRAWN", drained=True, drain_sources=["maintenance"])
        }
    }
    code, out, _ = run("undrain", "web", "--socket", str(server.path))
    assert code == 1
    assert out == (
        "web: operator drain lifted, but still drained by maintenance "
        "(remove the maintenance file)\n"
    )


def test_drain_json_prints_the_result(server: ControlServer, fake: FakeDaemon) -> None:
    """drain --json prints the daemon's result as JSON instead of sentences."""
    result = {"services": {"web": svc(changed=True, **DRAINING)}}
    fake.answers["drain"] = result
    code, out, _ = run("drain", "web", "--json", "--socket", str(server.path))
    assert code == 0 and json.loads(out) == result


def test_reload_reports_changes_or_the_config_error(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """reload lists added/changed/removed services; a refused reload exits 1 with the
    daemon's explanation."""
    fake.answers["reload"] = {
        "changes": {"added": ["ntp"], "changed": ["web"], "removed": [], "same": ["dns"]},
        "note": None,
    }
    code, out, _ = run("reload", "--socket", str(server.path))
    assert (code, out) == (0, "config reloaded\n  added: ntp\n  changed: web\n")

    def broken(request: Request) -> dict[str, Any]:
        raise ControlRefused("reload failed; still running on the previous config:\nx", "refused")

    fake.answers["reload"] = broken
    code, out, err = run("reload", "--socket", str(server.path))
    assert (code, out) == (1, "")
    assert "reload failed" in err


def test_a_reload_refused_inside_a_successful_reply_still_exits_1(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """A daemon that passed its reload's outcome on as it was answers a broken config with
    ``{"ok": false, "error": ...}`` inside a successful reply: still refused, exit 1 with
    its error (with --json too), nothing on stdout."""
    fake.answers["reload"] = {"ok": False, "error": "announcer.toml: rise: must be at least 1"}
    for json_flag in ([], ["--json"]):
        code, out, err = run("reload", *json_flag, "--socket", str(server.path))
        assert (code, out) == (1, "")
        assert err == (
            "announcer: reload failed; still running on the previous config:\n"
            "announcer.toml: rise: must be at least 1\n"
        )


# ---------------------------------------------------------------- drain --wait


def flipping_status(after: int) -> Callable[[Request], dict[str, Any]]:
    """A status that shows web DRAINING for ``after`` polls, then WITHDRAWN."""
    polls = {"n": 0}

    def status(request: Request) -> dict[str, Any]:
        polls["n"] += 1
        if polls["n"] > after:
            web = svc(route="WITHDRAWN", drained=True, drain_sources=["operator"], connections=0)
        else:
            web = svc(**{**DRAINING, "drain_left": 1.6 - 0.2 * polls["n"]})
        return {"services": {"web": web, "dns": svc()}}

    return status


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the connections clients open."""
    opened: list[int] = []
    real = ControlClient._connect

    def counting(self: ControlClient) -> socket.socket:
        opened.append(1)
        return real(self)

    monkeypatch.setattr(ControlClient, "_connect", counting)
    return opened


def test_drain_wait_returns_0_once_withdrawn(
    server: ControlServer, fake: FakeDaemon, connections: list[int]
) -> None:
    """drain --wait polls status every 0.2 s on the same connection, shows progress on
    stderr (route, time left, connections) and exits 0 once the route is WITHDRAWN."""
    fake.answers["drain"] = {"services": {"web": svc(changed=True, **DRAINING)}}
    fake.answers["status"] = flipping_status(after=3)
    began = time.monotonic()
    code, out, err = run("drain", "web", "--wait", "--socket", str(server.path))
    took = time.monotonic() - began
    assert code == 0, err
    assert out == "web: draining, withdraw in 2s\n"
    assert fake.count("status") == 4
    assert 0.55 <= took < 3.0  # three 0.2 s pauses
    assert len(connections) == 1
    lines = err.splitlines()
    assert lines[0] == "web: DRAINING, withdraw in 2s, 12 connections"
    assert "web: WITHDRAWN, 0 connections" in lines
    assert lines[-1].startswith("withdrawn: web (after ")


def test_drain_wait_exits_1_when_the_timeout_passes_first(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """drain --wait --timeout 0.6 against a route that stays DRAINING gives up with exit 1
    after about 0.6 s and says what is still announced."""
    fake.answers["drain"] = {"services": {"web": svc(changed=True, **DRAINING)}}
    fake.answers["status"] = flipping_status(after=10_000)
    began = time.monotonic()
    code, _, err = run("drain", "web", "--wait", "--timeout", "0.6", "--socket", str(server.path))
    took = time.monotonic() - began
    assert code == 1
    assert 0.55 <= took < 2.0
    assert "timed out after 0.6s; still announced: web: DRAINING" in err


def test_drain_wait_stops_when_the_service_is_undrained_meanwhile(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """If someone undrains the service while we wait, waiting stops with exit 1."""
    fake.answers["drain"] = {"services": {"web": svc(changed=True, **DRAINING)}}
    fake.answers["status"] = {"services": {"web": svc()}}
    code, _, err = run("drain", "web", "--wait", "--timeout", "5", "--socket", str(server.path))
    assert code == 1
    assert "no longer drained" in err


def test_drain_wait_waits_through_a_drain_that_has_not_begun(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """A drain waiting for a fleet's drain slot or for the peers to forward is not
    drained yet (``drain_waiting``): drain --wait waits on instead of calling it
    undrained, and exits 0 once it is withdrawn with no connection left."""
    waiting = svc(drained=False, drain_waiting=True, forward_connections=True)
    waiting["forwarding"] = "waiting for the peers to pass this node's connections"
    fake.answers["drain"] = {"services": {"web": {**waiting, "changed": True}}}
    polls = {"n": 0}

    def status(request: Request) -> dict[str, Any]:
        polls["n"] += 1
        if polls["n"] <= 2:
            return {"services": {"web": waiting}}
        web = svc(route="WITHDRAWN", drained=True, forward_connections=True, connections=0)
        return {"services": {"web": web}}

    fake.answers["status"] = status
    code, _, err = run("drain", "web", "--wait", "--timeout", "5", "--socket", str(server.path))
    assert code == 0, err
    assert "no longer drained" not in err and polls["n"] == 3
    assert "waiting for the peers to pass this node's connections" in err


def test_drain_all_wait_waits_for_every_drained_service(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """With --all, the services waited for are those the drain reply names."""
    fake.answers["drain"] = {
        "services": {"web": svc(changed=True, **DRAINING), "dns": svc(changed=True, **DRAINING)}
    }
    polls = {"n": 0}

    def status(request: Request) -> dict[str, Any]:
        polls["n"] += 1
        withdrawn = svc(route="WITHDRAWN", drained=True, drain_sources=["operator"])
        return {
            "services": {"web": withdrawn, "dns": withdrawn if polls["n"] > 2 else svc(**DRAINING)}
        }

    fake.answers["status"] = status
    code, _, err = run("drain", "--all", "--wait", "--socket", str(server.path))
    assert code == 0, err
    assert polls["n"] == 3
    assert err.splitlines()[-1].startswith("withdrawn: web, dns")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_drain_wait_on_a_terminal_refreshes_one_line(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """On a terminal the progress is one line rewritten in place (carriage return and
    erase-line), finished with a newline."""
    fake.answers["status"] = flipping_status(after=2)
    err = Tty()
    with ControlClient(server.path) as client:
        code = cl.wait_withdrawn(client, ["web"], timeout=5, err=err, poll=0.01)
    text = err.getvalue()
    assert code == 0
    assert text.count("\r\x1b[K") == 3
    assert "\n" not in text.split("withdrawn: web")[0].rstrip("\n")
    assert "\r\x1b[Kweb: WITHDRAWN, 0 connections\nwithdrawn: web" in text


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("cmd", cl.CONTROL_COMMANDS)
def test_help_teaches_with_examples(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand's --help has examples, the exit statuses and the --socket default."""
    with pytest.raises(SystemExit):
        parse(cmd, "--help")
    text = capsys.readouterr().out
    assert "examples:" in text and f"announcer {cmd}" in text
    assert "exit status:" in text
    assert "$ANNOUNCER_SOCKET" in text and str(DEFAULT_CONTROL_SOCKET) in text
    assert "--json" in text


def test_parse_sets_the_command_and_options() -> None:
    """The parsed namespace names the control command; drain's options land in it."""
    args = parse("drain", "web", "dns", "--reason", "r", "--wait", "--timeout", "90")
    assert args.control_command == "drain"
    assert (args.services, args.reason, args.wait, args.timeout) == (["web", "dns"], "r", True, 90)
    assert os.fspath(parse("reload", "--socket", "/x").socket) == "/x"


def test_a_drain_the_daemon_could_not_save_exits_1_with_the_reason(
    server: ControlServer, fake: FakeDaemon
) -> None:
    """A drain applied on the wire but not written to the state file (read-only or full
    state_dir) prints what happened, then the reason, and exits 1; so does undrain."""
    why = "cannot write /var/lib/announcer/state.json: [Errno 30] Read-only file system"
    fake.answers["drain"] = {
        "services": {"web": svc(changed=True, **{**DRAINING, "drain_left": 30.0})},
        "state_error": why,
    }
    code, out, err = run("drain", "web", "--socket", str(server.path))
    assert code == 1
    assert out == "web: draining, withdraw in 30s\n"
    assert "drain applied but not saved" in err and "Read-only file system" in err
    fake.answers["undrain"] = {"services": {"web": svc(changed=True)}, "state_error": why}
    code, _, err = run("undrain", "web", "--socket", str(server.path))
    assert code == 1 and "undrain applied but not saved" in err
    fake.answers["drain"] = {"services": {"web": svc(changed=True, **DRAINING)}}
    assert run("drain", "web", "--socket", str(server.path))[0] == 0
