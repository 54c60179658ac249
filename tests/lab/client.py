"""HTTP requests from the lab's client namespace, one at a time or in a background loop."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .procs import Managed
from .waiting import LabError

WORKER_SCRIPT = Path(__file__).with_name("_client_worker.py")


@dataclass(frozen=True)
class ClientResult:
    """One request: which node answered (``node``), or why it failed (``error``)."""

    url: str
    started: float
    """Wall-clock time (``time.time()``) the request started."""
    elapsed: float
    status: int | None = None
    node: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when a node answered with HTTP 200."""
        return self.error is None and self.status == 200


class ClientWorker:
    """A persistent request process in a namespace, driven over a pipe (one request per line)."""

    def __init__(self, netns: str, marker: str, role: str = "client") -> None:
        self.netns = netns
        self.marker = marker
        self.role = role
        self._proc: Managed | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker's PID while it runs."""
        return self._proc.pid if self._proc else None

    def start(self) -> Managed:
        """Start the worker process inside the namespace."""
        argv = ["ip", "netns", "exec", self.netns, sys.executable, str(WORKER_SCRIPT)]
        argv += ["--lab", self.marker]
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._proc = Managed(self.role, popen, None)
        return self._proc

    def request(self, url: str, timeout: float = 2.0) -> ClientResult:
        """Make one request (a new TCP connection) and return what happened."""
        with self._lock:
            if self._proc is None or not self._proc.alive():
                raise LabError(f"{self.role} worker is not running")
            stdin = self._proc.popen.stdin
            assert stdin is not None
            stdin.write((json.dumps({"url": url, "timeout": timeout}) + "\n").encode())
            stdin.flush()
            raw = json.loads(self._readline(deadline=time.monotonic() + timeout + 5.0))
        body = raw.get("body")
        status = raw.get("status")
        error = raw.get("error")
        if error is None and status != 200:
            error = f"HTTP {status}"
        return ClientResult(
            url=url,
            started=float(raw["started"]),
            elapsed=float(raw["elapsed"]),
            status=int(status) if status is not None else None,
            node=body.strip() if isinstance(body, str) and status == 200 else None,
            error=error,
        )

    def _readline(self, deadline: float) -> bytes:
        assert self._proc is not None and self._proc.popen.stdout is not None
        fd = self._proc.popen.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"{self.role} worker did not answer in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise LabError(f"{self.role} worker exited")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self) -> None:
        """End the worker (closing its input ends it; killed if it lingers)."""
        if self._proc is None:
            return
        stdin = self._proc.popen.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        self._proc.stop(grace=2.0)
        if self._proc.popen.stdout is not None:
            self._proc.popen.stdout.close()


@dataclass
class ClientLoopStats:
    """What a :class:`ClientLoop` saw so far."""

    total: int = 0
    per_node: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    results: list[ClientResult] = field(default_factory=list)
    """Every request in order, for looking at what happened when."""

    @property
    def errors(self) -> list[ClientResult]:
        """The failed requests."""
        return [r for r in self.results if not r.ok]

    def between(self, start: float, end: float) -> ClientLoopStats:
        """The requests that started in the wall-clock window ``[start, end)``."""
        picked = [r for r in self.results if start <= r.started < end]
        return ClientLoopStats.of(picked)

    @classmethod
    def of(cls, results: list[ClientResult]) -> ClientLoopStats:
        """Stats computed from a list of results."""
        stats = cls()
        for result in results:
            stats.add(result)
        return stats

    def add(self, result: ClientResult) -> None:
        """Count one result."""
        self.total += 1
        self.results.append(result)
        if result.ok and result.node:
            self.per_node[result.node] += 1
        else:
            self.failures += 1


class ClientLoop:
    """Requests to one URL in a background thread, each on a new connection, until stopped.

    Bounded by ``max_requests`` and ``max_seconds`` whatever happens. Uses a worker
    process of its own, so :meth:`Lab.client_get` stays usable meanwhile.
    """

    def __init__(
        self,
        worker: ClientWorker,
        url: str,
        *,
        timeout: float = 1.0,
        pause: float = 0.0,
        max_requests: int = 50_000,
        max_seconds: float = 120.0,
    ) -> None:
        self.worker = worker
        self.url = url
        self.timeout = timeout
        self.pause = pause
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self._stats = ClientLoopStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.crashed: BaseException | None = None

    def start(self) -> ClientLoop:
        """Start the worker and the loop thread."""
        if self.worker.pid is None:
            self.worker.start()
        self._thread = threading.Thread(target=self._run, name=f"ClientLoop {self.url}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    break
                result = self.worker.request(self.url, self.timeout)
                with self._lock:
                    self._stats.add(result)
                if self.pause:
                    self._stop.wait(self.pause)
        except Exception as exc:
            self.crashed = exc

    @property
    def running(self) -> bool:
        """True while the loop thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> ClientLoopStats:
        """A snapshot of the counts so far."""
        with self._lock:
            return ClientLoopStats.of(list(self._stats.results))

    def wait_for_requests(self, count: int, timeout: float) -> ClientLoopStats:
        """Wait until at least ``count`` requests are done (or the loop ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            with self._lock:
                if self._stats.total >= count:
                    break
            time.sleep(0.01)
        return self.stats()

    def stop(self, timeout: float = 10.0) -> ClientLoopStats:
        """Stop the loop, end its worker, and return the final stats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.worker.close()
        if self.crashed is not None:
            raise LabError(f"client loop failed: {self.crashed!r}") from self.crashed
        return self.stats()

    def close(self) -> None:
        """Stop the loop and its worker without raising (for teardown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.worker.close()

    def __enter__(self) -> ClientLoop:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
