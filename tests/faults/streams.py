"""Long-lived TCP streams through the lab, for fault 12 (:mod:`.drain_faults`) and the
benchmarks' P2 (``tests/bench/maintenance.py``): a :mod:`._stream` server on each node, one
client holding many streams to the anycast address, and what became of each node's streams.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

from tests.lab import ANYCAST_V4, NODES, Lab, wait_until
from tests.lab.procs import Managed

from .rig import PYTHON

STREAM = Path(__file__).with_name("_stream.py")
PORT = 9000


class StreamClient:
    """The client half of :mod:`._stream`, run in the client namespace."""

    def __init__(self, lab: Lab, count: int) -> None:
        argv = ["ip", "netns", "exec", lab.ns("client"), str(PYTHON), str(STREAM), "client"]
        argv += ["--host", ANYCAST_V4, "--port", str(PORT), "--count", str(count)]
        argv += ["--lab", lab.id]
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        out: IO[str] | None = self.popen.stdout
        assert out is not None
        for line in out:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(event)

    def find(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return next((e for e in self.events if key in e), None)

    def ready(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until every stream is open; how many each node answered."""
        found = wait_until(lambda: self.find("ready"), timeout, what="streams open")
        assert found is not None
        return dict(found["nodes"])

    def ended(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if "ended" in e]

    def finish(self) -> dict[str, Any] | None:
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        wait_until(lambda: self.find("done") or self.popen.poll() is not None, 10.0, what="done")
        done = self.find("done")
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(5.0)
        self._thread.join(5.0)
        return done


@contextlib.contextmanager
def stream_servers(lab: Lab) -> Iterator[None]:
    """A stream server on the anycast address of every node, listening, for the block."""
    servers: list[Managed] = []
    try:
        for node in NODES:
            argv = [str(PYTHON), str(STREAM), "server", "--host", ANYCAST_V4, "--port", str(PORT)]
            argv += ["--name", node, "--lab", lab.id]
            log = lab.node_dir(node) / "stream.log"
            servers.append(lab.spawn(node, f"stream {node}", argv, log))
        for node in NODES:
            listening = ["ss", "-Hltn", f"sport = :{PORT}"]
            wait_until(partial(lab.exec_in, node, listening), 10.0, what=f"stream server on {node}")
        yield
    finally:
        for proc in servers:
            proc.stop(grace=1.0)


def per_node(
    spread: dict[str, int], ended: list[dict[str, Any]], moved: float | None
) -> dict[str, dict[str, Any]]:
    """Per node: streams opened, reset, ended otherwise, kept (still open), and how long after
    ``moved`` (the router's FIB change, epoch seconds) each reset came."""
    out: dict[str, dict[str, Any]] = {}
    for node, opened in spread.items():
        mine = [e for e in ended if e["node"] == node]
        resets = [e for e in mine if e["how"] == "reset"]
        after = [e["ended"] - moved for e in resets] if moved is not None else []
        out[node] = {
            "open": opened,
            "reset": len(resets),
            "ended_otherwise": len(mine) - len(resets),
            "kept": opened - len(mine),
            "reset_after_fib_change_s": [round(a, 3) for a in sorted(after)],
        }
    return out
