"""etcd for the fleet's lab scenarios: Debian's ``etcd`` members in the router's
namespace, their peers on its loopback, their clients on every address of the router,
so that each node reaches them through its own link."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field

from .lab import Lab
from .procs import Managed
from .topology import ROUTER
from .waiting import LabError, wait_until

CLIENT_PORT = 2379
"""Member i listens for clients on CLIENT_PORT + 10 * i, for peers on that + 1."""


def etcd_available() -> bool:
    return shutil.which("etcd") is not None


@dataclass
class LabEtcd:
    lab: Lab
    size: int = 3
    procs: dict[int, Managed] = field(default_factory=dict)

    def ports(self, i: int) -> tuple[int, int]:
        return CLIENT_PORT + 10 * i, CLIENT_PORT + 10 * i + 1

    def endpoints(self, node: str) -> list[str]:
        """The client URLs as ``node`` reaches them: the router's address on its link."""
        gateway = self.lab.links[node].router_v4
        return [f"http://{gateway}:{self.ports(i)[0]}" for i in range(self.size)]

    def start(self, timeout: float = 30.0) -> LabEtcd:
        for i in range(self.size):
            self.start_member(i)
        for i in range(self.size):
            self.wait_ready(i, timeout)
        return self

    def start_member(self, i: int) -> None:
        client, peer = self.ports(i)
        initial = ",".join(f"m{j}=http://127.0.0.1:{self.ports(j)[1]}" for j in range(self.size))
        data = self.lab.tmpdir / f"etcd-m{i}"
        argv = [
            "etcd",
            f"--name=m{i}",
            f"--data-dir={data}",  # in the lab's directory: the lab finds it by its id
            f"--listen-client-urls=http://0.0.0.0:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            "--heartbeat-interval=100",
            "--election-timeout=1000",
        ]
        self.procs[i] = self.lab.spawn(
            ROUTER, f"etcd m{i}", argv, self.lab.tmpdir / f"etcd-m{i}.log"
        )

    def wait_ready(self, i: int, timeout: float = 30.0) -> None:
        """Until member ``i`` answers a linearizable read (it has a quorum)."""
        url = f"http://127.0.0.1:{self.ports(i)[0]}/v3/kv/range"

        def ready() -> bool:
            proc = self.procs.get(i)
            if proc is None or not proc.alive():
                raise LabError(f"etcd m{i} is not running")
            out = self.lab.exec_in(
                ROUTER,
                ["curl", "-s", "-m", "1", "-X", "POST", url, "-d", '{"key":"AA=="}'],
                check=False,
            )
            try:
                return "header" in json.loads(out or "{}")
            except ValueError:
                return False

        wait_until(ready, timeout, what=f"etcd m{i} ready")

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None:
            proc.stop(grace=0.0)

    def stop(self) -> None:
        for i in list(self.procs):
            self.kill(i)
