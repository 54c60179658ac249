"""P1 (c)'s CPU floor (tests/bench/checkfloor.py) against a real local web server that
closes every connection: it must really check (a refused connection counts as failed),
or the floor it reports would be the cost of doing nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tests" / "bench" / "checkfloor.py"


class _Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, as the lab's server

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _floor(url: str, mode: str) -> dict[str, float]:
    argv = [sys.executable, str(SCRIPT), "--url", url, "--mode", mode]
    out = subprocess.run(
        [*argv, "--interval", "0.05", "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("mode", ["asyncio", "blocking"])
def test_checks_the_server_at_its_interval_and_reports_its_own_cpu(server: int, mode: str) -> None:
    """Each mode runs a check every interval over the window, every one passing, and
    reports CPU seconds spent, within the window's wall time."""
    result = _floor(f"http://127.0.0.1:{server}/health", mode)
    assert 8 <= result["checks"] <= 11
    assert result["failed"] == 0
    assert 0 < result["cpu_s"] < result["wall_s"]
    assert result["wall_s"] >= 0.5


@pytest.mark.parametrize("mode", ["asyncio", "blocking"])
def test_a_check_that_fails_counts_as_failed(server: int, mode: str) -> None:
    """A status other than 200, and a refused connection, are failures, not passes."""
    result = _floor(f"http://127.0.0.1:{server}/other", mode)
    assert result["failed"] == result["checks"] > 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = _floor(f"http://127.0.0.1:{closed}/health", mode)
    assert result["failed"] == result["checks"] > 0
