"""Real etcd members for the fleet tests: Debian's ``etcd`` started on loopback ports in
a temporary directory, one member or a cluster, and stopped after. No mock of etcd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client: int
    peer: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = field(init=False)
    peer_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url, self.peer_url = (f"http://127.0.0.1:{p}" for p in (self.client, self.peer))


@dataclass
class Cluster:
    """``size`` members on loopback; :meth:`kill` and :meth:`start_member` for quorum tests."""

    root: Path
    size: int = 1
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(
                Member(name, _port(), _port(), self.root / name, self.root / f"{name}.log")
            )

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> Cluster:
        for m in self.members:
            self.start_member(m, wait=False)
        for m in self.members:
            self.wait_ready(m)
        return self

    def start_member(self, m: Member, *, wait: bool = True) -> None:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        argv = [
            etcd_binary() or "etcd",
            f"--name={m.name}",
            f"--data-dir={m.data}",
            f"--listen-client-urls={m.url}",
            f"--advertise-client-urls={m.url}",
            f"--listen-peer-urls={m.peer_url}",
            f"--initial-advertise-peer-urls={m.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            # Quick elections: a lost leader is replaced in about a second in the tests.
            "--heartbeat-interval=100",
            "--election-timeout=1000",
        ]
        log = m.log.open("ab")
        m.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready(m)

    def wait_ready(self, m: Member, timeout: float = 30.0) -> None:
        """Until the member answers a linearizable read (it has a leader and a quorum)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError, ValueError):
                if post(m.url, "/v3/kv/range", {"key": "AA=="}, timeout=1.0) is not None:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"etcd {m.name} not ready; log: {m.log.read_text()[-2000:]}")

    def kill(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(timeout=10)
        m.proc = None

    def stop(self) -> None:
        for m in self.members:
            self.kill(m)


def post(url: str, path: str, body: object, timeout: float = 2.0) -> dict[str, object] | None:
    """One POST to the gateway with the standard library (independent of the client
    under test); None when etcd answers an error."""
    req = urllib.request.Request(  # noqa: S310 - http on loopback, built here
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:  # noqa: S310 - loopback
            data = json.loads(reply.read())
    except urllib.error.HTTPError:
        return None
    return data if isinstance(data, dict) else None


def enable_auth(url: str, user: str, password: str) -> None:
    """Create ``root`` (etcd needs it to enable auth) with ``password`` and ``user`` with
    read-write on everything, then switch authentication on."""
    for path, body in (
        ("/v3/auth/user/add", {"name": "root", "password": password}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/user/add", {"name": user, "password": password}),
        ("/v3/auth/user/grant", {"user": user, "role": "root"}),
        ("/v3/auth/enable", {}),
    ):
        if post(url, path, body) is None:
            raise RuntimeError(f"etcd refused {path}")
