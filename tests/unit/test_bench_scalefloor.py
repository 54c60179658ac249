"""P3's floor (tests/bench/scalefloor.py) against the benchmark's own check server: it
must send every service's request once per interval and read every answer, or the
floor it reports would be the cost of doing less than announcer does."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tests" / "bench"


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ready = tmp_path / "ready"
    argv = [sys.executable, str(BENCH / "checkserver.py"), "--bind", f"127.0.0.1:{port}"]
    argv += ["--stats", str(tmp_path / "stats.sock"), "--ready-file", str(ready)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline, "the check server did not start"
            time.sleep(0.02)
        yield port
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("n", [20, 50])
def test_every_service_is_checked_once_per_interval_and_answered(endpoint: int, n: int) -> None:
    """N services at interval 0.2 s over 1 s: about 5 N requests (batches of 32 spread
    over the interval, a last one shorter), each answered 200, and its CPU reported."""
    argv = [sys.executable, str(BENCH / "scalefloor.py"), "--n", str(n), "--port", str(endpoint)]
    argv += ["--hosts", "127.0.0.1", "--interval", "0.2", "--seconds", "1", "--warmup", "0.3"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["n"] == n
    assert 4 * n <= result["sent"] <= 6 * n
    assert result["sent"] - n <= result["answered"] <= result["sent"]  # the last may be in flight
    assert result["bad"] == 0
    assert 0 < result["cpu_s"] < result["wall_s"]
