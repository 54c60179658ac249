"""The two tools under test, as lab nodes run them: announcer and ``exabgp healthcheck`` (EXA).

Both run as ExaBGP API processes behind :data:`~tests.bench.common.CGWRAP`, which
puts them (and every child they fork: EXA's ``sh`` and ``curl``) in a cgroup of
the benchmark's own before they start.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import Lab
from tests.lab.announcer_config import node_paths, to_toml
from tests.lab.bird import NODE_AS, ROUTER_AS, birdc
from tests.lab.exabgp import environment
from tests.lab.procs import Managed, kill_pids

from .common import ANNOUNCER_BIN, CHECKSERVER, EXABGP_BIN, PYTHON, cpu_seconds, wait_for

HEALTH_URL = "http://192.0.2.10/health"


@dataclass(frozen=True)
class Timing:
    """Check timing, the same meaning for both tools.

    ``timeout`` is announcer's per-check timeout (default: the interval) and EXA's
    ``curl --max-time``; EXA's own ``--timeout`` takes whole seconds only (SIGALRM),
    so it stays at 1.
    """

    interval: float
    fast: float
    rise: int
    fall: int
    timeout: float | None = None

    @property
    def check_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.interval

    def label(self) -> str:
        text = (
            f"interval {self.interval:g} / fast {self.fast:g} / rise {self.rise} / fall {self.fall}"
        )
        if self.timeout is not None:
            text += f" / timeout {self.timeout:g}"
        return text


# --------------------------------------------------------------------------- announcer


def announcer_service(
    name: str, prefixes: Sequence[str], check: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "prefixes": list(prefixes),
        "checks": [dict(check)],
        "announce": {"med": 100},
    }


def write_announcer_config(
    path: Path,
    node_dir: Path,
    services: Sequence[Mapping[str, Any]],
    timing: Timing,
    *,
    drain_seconds: float = 2.0,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A controller config: the node's own state dir, control socket and maintenance file;
    flap dampening off (a benchmark fails the same node dozens of times in a row); the
    address guard off (thousands of prefixes no interface carries; exabgp healthcheck,
    the comparison, has none)."""
    defaults: dict[str, Any] = {
        "interval": timing.interval,
        "fast_interval": timing.fast,
        "rise": timing.rise,
        "fall": timing.fall,
        "drain_seconds": drain_seconds,
        "dampening": {"changes": 0},
        "address_guard": False,
    }
    if timing.timeout is not None:
        defaults["timeout"] = timing.timeout
    config: dict[str, Any] = {
        **node_paths(node_dir),
        "neighbor": "*",
        "next_hop": "self",
        "include": "",
        **(extra or {}),
        "defaults": defaults,
        "service": [dict(s) for s in services],
    }
    path.write_text(to_toml(config))
    return path


def announcer_argv(config: Path) -> list[str]:
    return [str(ANNOUNCER_BIN), "run", "--config", str(config)]


def control_request(
    socket_path: Path, cmd: str, timeout: float = 10.0, **fields: Any
) -> dict[str, Any]:
    """One request on the controller's control socket (in this process: no CLI start-up)."""
    from announcer.client import ControlClient

    with ControlClient(socket_path, timeout=timeout) as client:
        return client.request(cmd, **fields)


def checks_run(socket_path: Path) -> tuple[int, int]:
    """(sum of checks_run over all services, number of services) from ``status``."""
    status = control_request(socket_path, "status", timeout=30.0)
    services = status.get("services", {})
    return sum(int(s.get("checks_run", 0)) for s in services.values()), len(services)


# --------------------------------------------------------------------------- EXA


def curl_command(url: str, max_time: float) -> str:
    return f"curl -sf -o /dev/null --max-time {max_time:g} {url}"


def write_exa_config(
    path: Path,
    *,
    ips: Sequence[str],
    timing: Timing,
    command: str | None,
    disable: Path | None = None,
    name: str = "bench",
    extra: Sequence[str] = (),
) -> Path:
    """An ``exabgp healthcheck --config`` file (one ``--option = value`` per line).

    ``--withdraw-on-down`` (announcer's default ``on_down = "withdraw"``), MED 100
    up like announcer, ``--increase 0`` (the same MED on every prefix),
    ``--no-ip-setup`` (the lab put the addresses on ``lo`` already),
    ``--no-syslog`` (no /dev/log here: logs go to ExaBGP's stderr log).
    """
    lines = [
        "no-syslog",
        "no-ip-setup",
        "withdraw-on-down",
        f"name = {name}",
        f"interval = {timing.interval:g}",
        f"fast-interval = {timing.fast:g}",
        f"rise = {timing.rise}",
        f"fall = {timing.fall}",
        "timeout = 1",
        "up-metric = 100",
        "increase = 0",
    ]
    if command is not None:
        lines.append(f"command = {command}")
    if disable is not None:
        lines.append(f"disable = {disable}")
    lines += list(extra)
    lines += [f"ip = {ip}" for ip in ips]
    path.write_text("\n".join(lines) + "\n")
    return path


def exa_argv(config: Path) -> list[str]:
    return [str(EXABGP_BIN), "healthcheck", "--config", str(config)]


# --------------------------------------------------------------------------- ExaBGP of our own


def render_exabgp(processes: Mapping[str, Sequence[str]], *, peer: str, local: str) -> str:
    """exabgp.conf with several API processes and one IPv4 session to the router."""
    lines: list[str] = []
    for name, argv in processes.items():
        lines += [f"process {name} {{", f"    run {' '.join(argv)};", "    encoder text;", "}", ""]
    names = " ".join(processes)
    lines += [
        f"neighbor {peer} {{",
        f"    router-id {local};",
        f"    local-address {local};",
        f"    local-as {NODE_AS};",
        f"    peer-as {ROUTER_AS};",
        "    hold-time 30;",
        "    family { ipv4 unicast; }",
        f"    api {{ processes [ {names} ]; }}",
        "}",
        "",
    ]
    return "\n".join(lines)


class OwnExabgp:
    """ExaBGP on a lab node with a config of our own (many processes, IPv4 only).

    Started inside the node's namespace with the lab's id in its config path, so
    the lab's teardown finds it even if this object is lost.
    """

    def __init__(
        self,
        lab: Lab,
        node: str,
        name: str,
        processes: Mapping[str, Sequence[str]],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.lab = lab
        self.env = {**environment(), **(env or {})}
        self.node = node
        link = lab.links[node]
        directory = lab.node_dir(node)
        self.conf = directory / f"{name}.exabgp.conf"
        self.conf.write_text(render_exabgp(processes, peer=link.router_v4, local=link.peer_v4))
        self.log = directory / f"{name}.exabgp.log"
        self.proc: Managed | None = None

    def start(self) -> OwnExabgp:
        with self.log.open("ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.ns(self.node), str(EXABGP_BIN), str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        self.proc = Managed(f"exabgp {self.node}", popen, self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def api_pids(self) -> list[int]:
        from tests.lab.procs import children

        return children(self.pid) if self.alive() else []

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM ExaBGP (it stops its processes), then make sure none of them is left."""
        if self.proc is None:
            return
        api = self.api_pids()
        self.proc.stop(grace=grace)
        kill_pids(api, grace=2.0)
        self.proc = None


def wait_session(lab: Lab, protocol: str, timeout: float = 30.0) -> None:
    """Wait until BIRD's session ``protocol`` (``node1``) is Established."""

    def up() -> bool:
        sessions = lab.sessions()
        return protocol in sessions and sessions[protocol].established

    wait_for(up, timeout, 0.05, f"BGP session {protocol} established")


def bird_route_count(lab: Lab, protocol: str) -> int:
    """Routes BIRD holds from ``protocol`` (``show route protocol P count``)."""
    out = birdc(lab.bird_socket, "show", "route", "protocol", protocol, "count")
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].isdigit() and words[1] == "of":
            return int(words[0])
    return 0


# --------------------------------------------------------------------------- check servers


class CheckServers:
    """A few :mod:`checkserver` processes inside a node, one per loopback address."""

    def __init__(
        self,
        lab: Lab,
        node: str,
        count: int = 2,
        port: int = 8081,
        interval: float = 1.0,
        tolerance: float = 0.1,
    ) -> None:
        self.interval = interval
        self.tolerance = tolerance
        self.lab = lab
        self.node = node
        self.port = port
        self.addresses = [f"127.0.0.{i + 1}" for i in range(count)]
        self.procs: list[Managed] = []
        self.stats_paths: list[Path] = []

    def url(self, index: int) -> str:
        address = self.addresses[index % len(self.addresses)]
        return f"http://{address}:{self.port}/svc/{index}"

    def start(self) -> CheckServers:
        directory = self.lab.node_dir(self.node)
        for i, address in enumerate(self.addresses):
            ready = directory / f"checkserver{i}.ready"
            stats = directory / f"checkserver{i}.sock"
            ready.unlink(missing_ok=True)
            argv = ["ip", "netns", "exec", self.lab.ns(self.node), str(PYTHON), str(CHECKSERVER)]
            argv += ["--bind", f"{address}:{self.port}", "--stats", str(stats)]
            argv += ["--ready-file", str(ready), "--lab", self.lab.id]
            argv += ["--interval", str(self.interval), "--tolerance", str(self.tolerance)]
            with (directory / f"checkserver{i}.log").open("ab") as out:
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs.append(Managed(f"checkserver {i}", popen, None))
            self.stats_paths.append(stats)
            wait_for(ready.exists, 10.0, 0.01, f"check server {address} ready")
        return self

    def cpu_seconds(self) -> float:
        """CPU seconds the endpoints have used so far (shown beside the checker's: at 2,000
        services they are a load of their own on the same 2 cores)."""
        return sum(cpu_seconds(proc.pid) for proc in self.procs)

    def requests(self) -> int:
        """Requests served so far."""
        return self.stats()["requests"]

    def stats(self) -> dict[str, int]:
        """Requests served and of them on time, summed over the servers."""
        total: dict[str, int] = {"requests": 0, "on_time": 0}
        for path in self.stats_paths:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5.0)
                sock.connect(str(path))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            answer = json.loads(data)
            for key in total:
                total[key] += int(answer[key])
        return total

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stop(grace=2.0)
        self.procs.clear()


def read_stamp(path: Path, timeout: float = 30.0) -> float:
    """The wall-clock time :data:`CGWRAP` wrote when it exec'd the program."""
    wait_for(path.exists, timeout, 0.005, f"{path.name} written")
    return float(path.read_text().strip())


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (bounded by the deadline itself)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
