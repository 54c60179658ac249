"""The HTTP check's own connection (an asyncio protocol feeding h11) against raw servers on
127.0.0.1: what the bytes can do between a request and its whole response."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections.abc import Callable

import pytest
from check_servers import ConnectionHandler, TcpServer

from announcer.checks import CheckResult, HttpCheckSpec, build_check
from announcer.checks.http import HttpCheck
from announcer.runner import STOPPED, CheckRunner

StartTcp = Callable[[ConnectionHandler], TcpServer]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def http_check(port: int, **fields: object) -> HttpCheck:
    spec = HttpCheckSpec.model_validate(
        {"type": "http", "url": f"http://127.0.0.1:{port}/"} | fields
    )
    check = build_check(spec)
    assert isinstance(check, HttpCheck)
    return check


def run_and_close(check: HttpCheck, timeout: float) -> tuple[CheckResult, float]:
    """One blocking run, its result and the seconds it took; the check is closed after."""
    started = time.monotonic()
    try:
        return check.run(timeout), time.monotonic() - started
    finally:
        check.close()


def test_plain_close_inside_the_body_fails_saying_so(tcp_server: StartTcp) -> None:
    """A server that closes before the Content-Length it promised: the body was cut."""

    def cut(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    server = tcp_server(cut)
    check = http_check(server.port)
    result = check.run(2.0)
    check.close()
    assert (result.ok, result.reason) == (False, "connection broken while reading the body")


def test_reset_inside_the_body_is_not_retried(tcp_server: StartTcp) -> None:
    """A reset after the response began is reported, not retried: a retry must not hide a
    server that breaks mid-answer."""

    def reset(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly")
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    server = tcp_server(reset)
    check = http_check(server.port, retries=3)
    result = check.run(2.0)
    check.close()
    assert not result.ok
    assert result.reason in ("connection reset", "connection broken while reading the body")
    assert server.accepted == 1


def test_a_response_a_byte_at_a_time_is_read_whole(tcp_server: StartTcp) -> None:
    """A response arriving one byte per read is put together and judged as one."""

    def bytewise(conn: socket.socket, release: threading.Event) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.recv(65536)
        for byte in b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy":
            conn.sendall(bytes([byte]))
            time.sleep(0.002)

    server = tcp_server(bytewise)
    check = http_check(server.port, body_regex="busy", expect_status=[503])
    result = check.run(3.0)
    check.close()
    assert (result.ok, result.reason) == (True, "HTTP 503")


def test_a_byte_a_second_is_cut_off_at_the_timeout(tcp_server: StartTcp) -> None:
    """A status line trickling in a byte a second never completes before the timeout, and
    each byte does not extend it."""

    def slow(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        for byte in OK:
            conn.sendall(bytes([byte]))
            if release.wait(1.0):
                return

    result, elapsed = run_and_close(http_check(tcp_server(slow).port), 1.5)
    assert (result.ok, result.reason) == (False, "timeout after 1.5s")
    assert elapsed < 1.9


def test_bytes_sent_while_idle_cost_the_connection_not_the_check(tcp_server: StartTcp) -> None:
    """Bytes a server sends between requests, seen by a loop that keeps running (as the
    daemon's does), are not taken as the next response: the kept connection is dropped and
    the next run asks anew on a fresh one."""

    def chatty(conn: socket.socket, release: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(OK)
        time.sleep(0.05)
        conn.sendall(b"HTTP/1.1 500 Stale\r\nContent-Length: 0\r\n\r\n")
        release.wait(5)

    server = tcp_server(chatty)
    check = http_check(server.port)

    async def twice() -> tuple[CheckResult, CheckResult]:
        first = await check.arun(2.0)
        await asyncio.sleep(0.2)
        return first, await check.arun(2.0)

    first, second = asyncio.run(twice())
    check.close()
    assert (first.reason, second.reason) == ("HTTP 200", "HTTP 200")
    assert server.accepted == 2


def test_a_server_that_never_answers_on_a_kept_connection_times_out(
    tcp_server: StartTcp,
) -> None:
    """A kept connection whose server stops answering: the second run ends at its timeout,
    and the connection is not reused after it."""
    served = threading.Event()

    def once(conn: socket.socket, release: threading.Event) -> None:
        if served.is_set():
            conn.recv(65536)
            conn.sendall(OK)
            release.wait(5)
            return
        served.set()
        conn.recv(65536)
        conn.sendall(OK)
        release.wait(5)  # reads the second request's bytes never, answers nothing

    server = tcp_server(once)
    check = http_check(server.port)
    results = [check.run(0.3) for _ in range(3)]
    check.close()
    assert [r.reason for r in results] == ["HTTP 200", "timeout after 0.3s", "HTTP 200"]
    assert server.accepted == 2


# ----------------------------------------------------------------- runs begun without a task


class CountingCheck(HttpCheck):
    """An HTTP check that counts the runs that needed a coroutine (arun)."""

    coroutine_runs = 0

    async def arun(self, timeout: float) -> CheckResult:
        self.coroutine_runs += 1
        return await super().arun(timeout)


def second_request(reply: bytes | None, *, close: bool = False) -> ConnectionHandler:
    """Serves OK to every request except the second one the server sees, which gets ``reply``
    and then a close if ``close``, or silence if ``reply`` is None."""
    seen = [0]

    def handle(conn: socket.socket, release: threading.Event) -> None:
        while conn.recv(65536):
            seen[0] += 1
            if seen[0] != 2:
                conn.sendall(OK)
            elif reply is None:
                release.wait(5)
                return
            else:
                conn.sendall(reply)
                if close:
                    return

    return handle


def run_through_runner(check: HttpCheck, times: int, timeout: float) -> list[CheckResult]:
    """``times`` runs of ``check`` one after another on a CheckRunner's loop."""
    runner = CheckRunner(1, overflow=1)
    answers: queue.Queue[CheckResult] = queue.Queue()
    results: list[CheckResult] = []
    try:
        for _ in range(times):
            runner.submit(check, timeout, answers.put)
            results.append(answers.get(timeout=timeout + 2))
    finally:
        runner.shutdown()
        check.close()
    return results


@pytest.mark.parametrize(
    ("reply", "close", "reason", "connections", "coroutine_runs"),
    [
        (None, False, "timeout after 0.3s", 2, 2),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", False, "HTTP 503", 1, 1),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut", True, "connection broken", 2, 2),
        # Closed before any response: retried at once on a new connection, which is kept.
        (b"", True, "HTTP 200", 2, 1),
        (b"SSH-2.0-OpenSSH\r\n\r\n", False, "bad HTTP response: RemoteProtocolError", 2, 2),
    ],
)
def test_runs_on_a_kept_connection_begin_without_a_task(
    tcp_server: StartTcp,
    reply: bytes | None,
    close: bool,
    reason: str,
    connections: int,
    coroutine_runs: int,
) -> None:
    """Through the runner, a run on a kept connection is begun by start(), not arun(), and
    ends as a coroutine run would: judged, timed out, cut, retried once, or a bad response;
    the connection is kept only after a whole response, and only a run that has no kept
    connection to use needs arun()."""
    server = tcp_server(second_request(reply, close=close))
    check = CountingCheck(HttpCheckSpec(type="http", url=f"http://127.0.0.1:{server.port}/"))
    results = run_through_runner(check, 3, 0.3)
    assert results[0].reason == "HTTP 200"
    assert results[1].reason.startswith(reason), results[1]
    assert results[2].reason == "HTTP 200"
    assert 0 <= results[1].duration < 0.6
    assert (server.accepted, check.coroutine_runs) == (connections, coroutine_runs)


def test_shutdown_answers_a_run_begun_without_a_task_once(tcp_server: StartTcp) -> None:
    """A run begun by start() that is still waiting when the runner shuts down is answered
    STOPPED, and its later timeout answers nothing more."""
    server = tcp_server(second_request(None))
    check = HttpCheck(HttpCheckSpec(type="http", url=f"http://127.0.0.1:{server.port}/"))
    runner = CheckRunner(1, overflow=1)
    results: list[CheckResult] = []
    answered = threading.Event()
    runner.submit(check, 0.3, lambda r: (results.append(r), answered.set()))
    assert answered.wait(3)
    runner.submit(check, 0.3, results.append)
    time.sleep(0.1)
    runner.shutdown()
    time.sleep(0.4)
    check.close()
    assert [r.reason for r in results] == ["HTTP 200", STOPPED]


# ----------------------------------------------------------------- the request's bytes reused


def early_hints(conn: socket.socket, release: threading.Event) -> None:
    """Answers every request with a 103 Early Hints before its 200."""
    while conn.recv(65536):
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)


def test_informational_responses_are_skipped_on_every_path(tcp_server: StartTcp) -> None:
    """A 1xx before the response is skipped, on a new connection and on a kept one, through
    the runner (start) and a blocking run (arun), though the request's bytes go out without
    h11 seeing them."""
    server = tcp_server(early_hints)
    check = CountingCheck(HttpCheckSpec(type="http", url=f"http://127.0.0.1:{server.port}/"))
    results = run_through_runner(check, 3, 1.0)
    blocking = http_check(server.port)
    results += [blocking.run(1.0) for _ in range(2)]
    blocking.close()
    assert [r.reason for r in results] == ["HTTP 200"] * 5
    assert (server.accepted, check.coroutine_runs) == (2, 1)


def test_connection_close_in_the_spec_is_honoured(tcp_server: StartTcp) -> None:
    """A configured "Connection: close" header is sent, and each run connects anew."""
    requests: list[bytes] = []

    def serve(conn: socket.socket, release: threading.Event) -> None:
        requests.append(conn.recv(65536))
        conn.sendall(OK)
        release.wait(5)

    server = tcp_server(serve)
    check = http_check(server.port, headers={"Connection": "close"})
    results = run_through_runner(check, 2, 1.0)
    assert [r.reason for r in results] == ["HTTP 200", "HTTP 200"]
    assert server.accepted == 2
    assert all(b"\r\nconnection: close\r\n" in r.lower() for r in requests)


def test_head_responses_have_no_body_whatever_their_length(tcp_server: StartTcp) -> None:
    """A HEAD response's Content-Length announces no body: the run ends at the head and the
    kept connection carries the next one."""

    def serve(conn: socket.socket, release: threading.Event) -> None:
        while conn.recv(65536):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")

    server = tcp_server(serve)
    check = http_check(server.port, method="HEAD")
    results = run_through_runner(check, 3, 1.0)
    assert [r.reason for r in results] == ["HTTP 200"] * 3
    assert server.accepted == 1
