"""Real etcd members for the fleet tests: Debian's ``etcd`` started on loopback ports in
a temporary directory, one member or a cluster, and stopped after. No mock of etcd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
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
    scheme: str = "http"
    """``https`` when the cluster serves its clients over TLS (peers stay on http)."""
    url: str = field(init=False)
    peer_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"{self.scheme}://127.0.0.1:{self.client}"
        self.peer_url = f"http://127.0.0.1:{self.peer}"


@dataclass(frozen=True)
class Tls:
    """A server certificate and key for the members' client URLs, and the CA that signed it."""

    ca: Path
    cert: Path
    key: Path


@dataclass
class Cluster:
    """``size`` members on loopback; :meth:`kill` and :meth:`start_member` for quorum tests."""

    root: Path
    size: int = 1
    members: list[Member] = field(default_factory=list)
    tls: Tls | None = None

    def __post_init__(self) -> None:
        scheme = "https" if self.tls else "http"
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(
                Member(
                    name,
                    _port(),
                    _port(),
                    self.root / name,
                    self.root / f"{name}.log",
                    scheme=scheme,
                )
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
        if self.tls is not None:
            argv += [f"--cert-file={self.tls.cert}", f"--key-file={self.tls.key}"]
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
                ca = self.tls.ca if self.tls else None
                if post(m.url, "/v3/kv/range", {"key": "AA=="}, timeout=1.0, ca=ca) is not None:
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


def post(
    url: str, path: str, body: object, timeout: float = 2.0, ca: Path | None = None
) -> dict[str, object] | None:
    """One POST to the gateway with the standard library (independent of the client
    under test), trusting ``ca`` for https; None when etcd answers an error."""
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    req = urllib.request.Request(  # noqa: S310 - http on loopback, built here
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as reply:  # noqa: S310 - loopback
            data = json.loads(reply.read())
    except urllib.error.HTTPError:
        return None
    return data if isinstance(data, dict) else None


def enable_auth(url: str, user: str, password: str, ca: Path | None = None) -> None:
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
        if post(url, path, body, ca=ca) is None:
            raise RuntimeError(f"etcd refused {path}")


def make_tls(directory: Path, name: str = "ca") -> Tls:
    """A throwaway CA and a server certificate it signs for 127.0.0.1, made with the
    ``openssl`` CLI in ``directory`` (nothing committed); ``name`` tells CAs apart."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    ca, ca_key = directory / f"{name}.pem", directory / f"{name}.key"
    key, csr, cert = (directory / f"{name}-server.{ext}" for ext in ("key", "csr", "pem"))
    ext = directory / f"{name}-server.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
    new_key = ("-newkey", "rsa:2048", "-nodes")
    openssl(
        "req",
        "-x509",
        *new_key,
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        f"/CN=announcer test {name}",
    )
    openssl("req", *new_key, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return Tls(ca, cert, key)
