"""The namespace lab: a BIRD router, two anycast nodes running ExaBGP, and a client.

::

    node1 (AS 65001) ── 10.0.1.0/24, fd00:1::/64 ──┐
                                                   router (BIRD, AS 65000)
    node2 (AS 65001) ── 10.0.2.0/24, fd00:2::/64 ──┘   │
                                                   10.0.3.0/24, fd00:3::/64 ── client

Both nodes carry 192.0.2.10/32 and 2001:db8::10/128 on ``lo`` and serve HTTP there.
Every name (namespaces, interfaces, temporary directory) starts with the lab's own
id (``anl-<6 hex>``), so parallel or leftover labs never collide, and every process
the lab starts carries that id on its command line, so :meth:`Lab.leftovers` can
find anything left behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from . import announcer_config, bird, exabgp, standin
from .client import ClientLoop, ClientResult, ClientWorker
from .procs import Managed, children, cmdline, is_alive, kill_pids, pids_with_marker
from .topology import (
    ANYCAST_V4,
    ANYCAST_V6,
    CLIENT,
    HTTP_PORT,
    NODES,
    PREFIX_V4,
    PREFIX_V6,
    ROUTER,
    ROUTER_ID,
    Link,
    links,
)
from .waiting import LabError, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
EXABGP_BINARIES = {
    "5.0": REPO_ROOT / ".venv" / "bin" / "exabgp",
    "4.2": REPO_ROOT / ".venv-exabgp42" / "bin" / "exabgp",
}
"""ExaBGP under test, by version, as scripts/bootstrap.sh installs them."""

HTTP_SCRIPT = Path(__file__).with_name("_httpserver.py")
ID_PREFIX = "anl"
REGISTRY = Path(tempfile.gettempdir()) / "announcer-lab"
"""One JSON file per live lab (owner PID, temporary directory), for :func:`cleanup_stale`."""


@dataclass(frozen=True)
class FibNexthop:
    """One next hop of a route in the router's kernel FIB."""

    gateway: str
    dev: str
    weight: int = 1


def run(argv: Sequence[str], *, timeout: float = 10.0, check: bool = True) -> str:
    """Run a short command, return its stdout; raise :class:`LabError` if it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _root_links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False)
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]


def _netns_pids(namespace: str) -> list[int]:
    out = run(["ip", "netns", "pids", namespace], check=False)
    return [int(x) for x in out.split() if x.isdigit()]


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def leftovers_of(lab_id: str) -> list[str]:
    """Namespaces, root-namespace interfaces and live processes carrying ``lab_id``."""
    found = [f"netns {ns}" for ns in _namespaces() if ns.startswith(f"{lab_id}-")]
    found += [f"link {dev}" for dev in _root_links() if dev.startswith(f"{lab_id}-")]
    found += [f"process {pid}: {' '.join(cmdline(pid))}" for pid in pids_with_marker(lab_id)]
    return found


def _destroy(lab_id: str) -> list[str]:
    """Kill every process and delete every namespace/interface of ``lab_id``; return problems."""
    problems: list[str] = []
    namespaces = [ns for ns in _namespaces() if ns.startswith(f"{lab_id}-")]
    pids = pids_with_marker(lab_id)
    for ns in namespaces:
        pids += _netns_pids(ns)
    survivors = kill_pids(sorted(set(pids) - {os.getpid()}), grace=0)
    if survivors:
        problems.append(f"processes survived SIGKILL: {survivors}")
    for ns in namespaces:
        try:
            run(["ip", "netns", "del", ns])
        except LabError as exc:
            problems.append(str(exc))
    for dev in _root_links():
        if dev.startswith(f"{lab_id}-"):
            run(["ip", "link", "del", dev], check=False)
    return problems


def cleanup_stale() -> list[str]:
    """Remove labs whose owning process is gone (e.g. a killed test run); return their ids.

    Only labs registered under :data:`REGISTRY` with a dead owner are touched, so
    labs of other runs in progress are safe.
    """
    cleaned: list[str] = []
    if not REGISTRY.is_dir():
        return cleaned
    for entry in sorted(REGISTRY.glob(f"{ID_PREFIX}-*.json")):
        if _held(entry):
            continue
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        owner = int(info.get("owner", 0))
        if owner and is_alive(owner) and _start_time(owner) == info.get("owner_start"):
            continue
        lab_id = str(info["id"])
        _destroy(lab_id)
        tmpdir = Path(str(info.get("tmpdir", "")))
        if tmpdir.name.startswith(f"{lab_id}-"):
            shutil.rmtree(tmpdir, ignore_errors=True)
        entry.unlink(missing_ok=True)
        cleaned.append(lab_id)
    return cleaned


def _held(entry: Path) -> bool:
    """The lab's owner is alive: it holds a lock on its registry entry until it ends.

    Its PID and start time are not enough: a session in another time namespace reads
    another start time in /proc for the same process, took a live owner for a dead one
    and removed its lab under it (seen when several sessions ran lab tests at once).
    """
    try:
        with entry.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _new_id() -> str:
    """A lab id (``anl-<6 hex>``) no existing namespace, interface or process uses yet."""
    for _ in range(20):
        candidate = f"{ID_PREFIX}-{secrets.token_hex(3)}"
        if not leftovers_of(candidate) and not (REGISTRY / f"{candidate}.json").exists():
            return candidate
    raise LabError("could not find an unused lab id")


class Lab:
    """The namespace lab. Use as a context manager, or call :meth:`start` and :meth:`stop`.

    ``exabgp`` is the ExaBGP binary under test (or a key of :data:`EXABGP_BINARIES`,
    e.g. ``"4.2"``). ``keep_tmp`` keeps the temporary directory (configs, logs) after
    :meth:`stop`; it defaults to true when ``ANNOUNCER_LAB_KEEP`` is set.
    """

    def __init__(
        self,
        exabgp: str | Path = "5.0",
        *,
        keep_tmp: bool | None = None,
        nodes: Sequence[str] = NODES,
    ) -> None:
        binary = EXABGP_BINARIES.get(str(exabgp), Path(exabgp))
        self.exabgp = Path(binary)
        self.id = _new_id()
        self.nodes = tuple(nodes)
        """``node1``, ``node2`` (and ``node3``... for a larger lab, e.g. the fleet's)."""
        self.namespaces = (ROUTER, *self.nodes, CLIENT)
        self.links: dict[str, Link] = links(self.id, self.nodes)
        self.keep_tmp = bool(os.environ.get("ANNOUNCER_LAB_KEEP")) if keep_tmp is None else keep_tmp
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        self.bird_socket = self.tmpdir / "bird.ctl"
        self.start_seconds: float | None = None
        self._api_argv: dict[str, list[str]] = {}
        self._exabgp: dict[str, Managed] = {}
        self._exabgp_binary: dict[str, Path] = {}
        self._http: dict[str, Managed] = {}
        self._bird: Managed | None = None
        self._client: ClientWorker | None = None
        self._loops: list[ClientLoop] = []
        self._started = False
        self._stopped = False
        self._owner_lock: IO[bytes] | None = None

    # --- names -------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        """The real namespace name of ``router``, ``node1``, ``node2`` or ``client``."""
        if name not in self.namespaces:
            raise ValueError(f"no namespace {name!r} in the lab")
        return f"{self.id}-{name}"

    def node_dir(self, node: str) -> Path:
        """The node's directory in the lab's temporary directory (configs, logs)."""
        path = self.tmpdir / node
        path.mkdir(exist_ok=True)
        return path

    def node_of_gateway(self, gateway: str) -> str | None:
        """``node1``/``node2`` for a next-hop address on their link, else None."""
        for node in self.nodes:
            link = self.links[node]
            if gateway in (link.peer_v4, link.peer_v6):
                return node
        return None

    @property
    def exabgp_version(self) -> str:
        """The version of the default ExaBGP binary, e.g. ``4.2.25``."""
        return exabgp.version_of(self.exabgp)

    # --- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self if self._started else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(
        self, api_argv: Mapping[str, Sequence[str]] | None = None, *, timeout: float = 15.0
    ) -> Lab:
        """Build the namespaces, start BIRD and both web servers, then ExaBGP per ``api_argv``.

        ``api_argv`` maps a node to the argv of its ExaBGP API process (e.g.
        :meth:`standin_argv` or :meth:`announcer_argv`); nodes not listed get no ExaBGP
        until :meth:`start_exabgp`. Waits (up to ``timeout`` s each) until the web
        servers listen and the started nodes' BGP sessions are Established. Cleans up
        if anything fails on the way.
        """
        if self._started:
            raise LabError("a Lab starts once")
        self._started = True
        began = time.monotonic()
        self._register()
        try:
            self._build_network()
            self._start_bird(timeout)
            for node in self.nodes:
                self.start_http(node, timeout=timeout)
            for node, argv in (api_argv or {}).items():
                self.start_exabgp(node, argv, wait=False)
            if api_argv:
                self.wait_established(list(api_argv), timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop everything the lab started, by PID, and delete its namespaces. Idempotent.

        Raises :class:`LabError` at the end if something could not be removed.
        """
        if self._stopped:
            return
        self._stopped = True
        problems: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:
                problems.append(f"{what}: {exc!r}")

        for loop in self._loops:
            attempt("client loop", loop.close)
        if self._client is not None:
            attempt("client", self._client.close)
        for node in list(self._exabgp):
            attempt(f"exabgp {node}", partial(self.stop_exabgp, node, timeout=2.0))
        for node in list(self._http):
            attempt(f"http {node}", partial(self.stop_http, node))
        if self._bird is not None:
            attempt("bird", partial(self._bird.stop, grace=2.0))
        problems += _destroy(self.id)
        if not self.keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        (REGISTRY / f"{self.id}.json").unlink(missing_ok=True)
        if self._owner_lock is not None:
            self._owner_lock.close()
        left = self.leftovers()
        if left:
            problems.append(f"left behind: {left}")
        if problems:
            raise LabError(f"lab {self.id} teardown: " + "; ".join(problems))

    def leftovers(self) -> list[str]:
        """Anything of this lab still there: namespaces, interfaces, live processes."""
        return leftovers_of(self.id)

    def _register(self) -> None:
        REGISTRY.mkdir(exist_ok=True)
        info = {
            "id": self.id,
            "owner": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "tmpdir": str(self.tmpdir),
        }
        entry = REGISTRY / f"{self.id}.json"
        entry.write_text(json.dumps(info))
        # held until stop or this process's end (children do not inherit it: close_fds)
        self._owner_lock = entry.open("rb")
        fcntl.flock(self._owner_lock, fcntl.LOCK_EX)

    def _build_network(self) -> None:
        for name in self.namespaces:
            run(["ip", "netns", "add", self.ns(name)])
        for name in self.namespaces:
            settings = [
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.accept_ra=0",
                "net.ipv6.conf.default.accept_ra=0",
                "net.ipv6.conf.default.router_solicitations=0",
            ]
            if name == ROUTER:
                settings += [
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.fib_multipath_hash_policy=1",
                    "net.ipv6.fib_multipath_hash_policy=1",
                ]
            self.exec_in(name, ["sysctl", "-q", "-w", *settings])
        router = self.ns(ROUTER)
        batches: dict[str, list[str]] = {name: ["link set lo up"] for name in self.namespaces}
        for peer, link in self.links.items():
            # both ends are created directly in their namespaces, never in the root one
            add = ["ip", "link", "add", link.router_dev, "netns", router, "type", "veth"]
            run([*add, "peer", "name", link.peer_dev, "netns", self.ns(peer)])
            batches[ROUTER] += [
                f"addr add {link.router_v4}/24 dev {link.router_dev}",
                f"addr add {link.router_v6}/64 dev {link.router_dev} nodad",
                f"link set {link.router_dev} up",
            ]
            batches[peer] += [
                f"addr add {link.peer_v4}/24 dev {link.peer_dev}",
                f"addr add {link.peer_v6}/64 dev {link.peer_dev} nodad",
                f"link set {link.peer_dev} up",
                f"route add default via {link.router_v4}",
                f"-6 route add default via {link.router_v6}",
            ]
            if peer in self.nodes:
                batches[peer] += [
                    f"addr add {ANYCAST_V4}/32 dev lo",
                    f"-6 addr add {ANYCAST_V6}/128 dev lo nodad",
                ]
        for name, commands in batches.items():
            self._ip_batch(name, commands)

    def _ip_batch(self, name: str, commands: Sequence[str]) -> None:
        # `ip -batch` takes no per-line options: split the -6 lines into their own batch
        plain = [c for c in commands if not c.startswith("-6 ")]
        inet6 = [c[3:] for c in commands if c.startswith("-6 ")]
        for family, lines in ((), plain), (("-6",), inet6):
            if lines:
                proc = subprocess.run(
                    ["ip", *family, "-n", self.ns(name), "-batch", "-"],
                    input="\n".join(lines) + "\n",
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                if proc.returncode != 0:
                    raise LabError(f"ip -batch in {name} failed: {proc.stderr.strip()}")

    # --- processes -----------------------------------------------------------------------------

    def exec_in(
        self, name: str, argv: Sequence[str], *, timeout: float = 10.0, check: bool = True
    ) -> str:
        """Run a short command inside namespace ``name``; return its stdout."""
        return run(["ip", "netns", "exec", self.ns(name), *argv], timeout=timeout, check=check)

    def spawn(self, name: str, role: str, argv: Sequence[str], log: Path) -> Managed:
        """Start a long-running process inside namespace ``name``, stdout and stderr appended
        to ``log``; the caller stops it (:meth:`Managed.stop`). Put the lab's id (or a path in
        its temporary directory) in ``argv``: :meth:`stop` then also finds it if it outlived
        the namespace."""
        return self._spawn(name, role, argv, log)

    def _spawn(self, name: str, role: str, argv: Sequence[str], log: Path, **kw: Any) -> Managed:
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(name), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,
            )
        return Managed(role, popen, log)

    # --- BIRD ----------------------------------------------------------------------------------

    def _start_bird(self, timeout: float) -> None:
        peers = []
        for node in self.nodes:
            link = self.links[node]
            peers.append(bird.BgpPeer(node, "ipv4", link.peer_v4, link.router_v4))
            peers.append(bird.BgpPeer(f"{node}_v6", "ipv6", link.peer_v6, link.router_v6))
        conf = self.tmpdir / "bird.conf"
        conf.write_text(bird.render_config(ROUTER_ID, peers, self.tmpdir / "bird.log"))
        argv = ["bird", "-f", "-c", str(conf), "-s", str(self.bird_socket)]
        argv += ["-P", str(self.tmpdir / "bird.pid")]
        self._bird = self._spawn(ROUTER, "bird", argv, self.tmpdir / "bird.out")

        def ready() -> bool:
            if self._bird is None or not self._bird.alive():
                raise LabError(f"bird exited: {self._read(self.tmpdir / 'bird.out')}")
            return self.bird_socket.exists() and "ready" in self.birdc("show status")

        wait_until(ready, timeout, what="BIRD control socket")

    def birdc(self, *args: str) -> str:
        """One ``birdc`` command against this lab's BIRD, e.g. ``birdc("show", "protocols")``."""
        return bird.birdc(self.bird_socket, *args)

    def bird_routes(self, prefix: str) -> list[bird.BirdPath]:
        """All paths BIRD has for exactly ``prefix`` (any table); empty when it has none."""
        out = bird.birdc(self.bird_socket, "show", "route", "all", prefix, allow=(bird.NOT_FOUND,))
        return bird.parse_routes(out)

    def bird_paths_by_node(self, prefix: str) -> dict[str, bird.BirdPath]:
        """The paths for ``prefix`` keyed by the node they came from."""
        return {path.node: path for path in self.bird_routes(prefix)}

    def sessions(self) -> dict[str, bird.BirdProtocol]:
        """BIRD's BGP protocols (``node1``, ``node1_v6``, ...) with their state."""
        protocols = bird.parse_protocols(self.birdc("show", "protocols"))
        return {name: p for name, p in protocols.items() if p.proto == "BGP"}

    def wait_established(self, nodes: Sequence[str] | None = None, timeout: float = 15.0) -> None:
        """Wait until both sessions (IPv4 and IPv6) of each node in ``nodes`` (default: all)
        are Established."""
        names = [name for node in nodes or self.nodes for name in (node, f"{node}_v6")]

        def established() -> bool:
            sessions = self.sessions()
            return all(sessions[name].established for name in names)

        wait_until(established, timeout, what=f"BGP sessions {names} established")

    def bird_log(self) -> str:
        """BIRD's log file."""
        return self._read(self.tmpdir / "bird.log")

    # --- kernel FIB ----------------------------------------------------------------------------

    def fib_nexthops(self, prefix: str) -> list[FibNexthop]:
        """The router's kernel next hops for exactly ``prefix`` (several when ECMP), sorted."""
        family = "-6" if ":" in prefix else "-4"
        out = run(["ip", family, "-j", "-n", self.ns(ROUTER), "route", "show", "exact", prefix])
        hops: list[FibNexthop] = []
        for route in json.loads(out or "[]"):
            for hop in route.get("nexthops") or [route]:
                if "gateway" in hop:
                    gateway, dev = str(hop["gateway"]), str(hop.get("dev", ""))
                    hops.append(FibNexthop(gateway, dev, int(hop.get("weight", 1))))
        return sorted(hops, key=lambda h: h.gateway)

    def fib_nodes(self, prefix: str) -> list[str]:
        """The nodes the router's FIB sends ``prefix`` to, sorted (two when ECMP)."""
        nodes = (self.node_of_gateway(h.gateway) for h in self.fib_nexthops(prefix))
        return sorted(n for n in nodes if n)

    def wait_fib_nodes(self, prefix: str, nodes: Sequence[str], timeout: float = 10.0) -> None:
        """Wait until the router's FIB sends ``prefix`` to exactly ``nodes`` (any order)."""
        wanted = sorted(nodes)
        wait_until(
            partial(self._fib_nodes_are, prefix, wanted),
            timeout,
            what=f"FIB for {prefix} via {wanted}",
        )

    def _fib_nodes_are(self, prefix: str, wanted: list[str]) -> bool:
        return self.fib_nodes(prefix) == wanted

    def wait_paths(
        self,
        prefix: str,
        predicate: Callable[[dict[str, bird.BirdPath]], bool],
        timeout: float = 10.0,
        what: str | None = None,
    ) -> dict[str, bird.BirdPath]:
        """Wait until ``predicate`` holds for BIRD's paths of ``prefix`` (by node); return them."""

        def check() -> tuple[dict[str, bird.BirdPath]] | None:
            paths = self.bird_paths_by_node(prefix)
            return (paths,) if predicate(paths) else None  # a tuple: true even with no paths

        found = wait_until(check, timeout, what=what or f"BIRD paths for {prefix}")
        assert found is not None
        return found[0]

    def wait_path_nodes(self, prefix: str, nodes: Sequence[str], timeout: float = 10.0) -> None:
        """Wait until BIRD has paths for ``prefix`` from exactly ``nodes``."""
        wanted = sorted(nodes)
        self.wait_paths(
            prefix,
            lambda paths: sorted(paths) == wanted,
            timeout,
            what=f"BIRD paths for {prefix} from {wanted}",
        )

    # --- HTTP servers --------------------------------------------------------------------------

    def start_http(self, node: str, timeout: float = 5.0) -> int:
        """Start the node's web server on the anycast addresses; wait until it listens."""
        if self.http_running(node):
            raise LabError(f"http server of {node} already running")
        directory = self.node_dir(node)
        ready = directory / "http.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, str(HTTP_SCRIPT), "--name", node]
        argv += ["--bind", ANYCAST_V4, "--bind", ANYCAST_V6, "--port", str(HTTP_PORT)]
        argv += ["--ready-file", str(ready), "--unhealthy-flag", str(directory / "unhealthy")]
        argv += ["--pid-file", str(self.http_pid_file(node)), "--lab", self.id]
        proc = self._spawn(node, f"http {node}", argv, directory / "http.log")
        self._http[node] = proc

        def listening() -> bool:
            if not proc.alive():
                log = self._read(directory / "http.log")
                raise LabError(f"http server of {node} exited: {log}")
            return ready.exists()

        wait_until(listening, timeout, interval=0.01, what=f"http server of {node} listening")
        return proc.pid

    def stop_http(self, node: str) -> None:
        """Kill the node's web server by PID (connections are then refused)."""
        proc = self._http.pop(node, None)
        if proc is not None:
            proc.stop(grace=2.0)

    def kill_http(self, node: str) -> None:
        """SIGKILL the node's web server (a crash: no clean-up; its pid file stays behind)."""
        proc = self._http.pop(node, None)
        if proc is not None:
            proc.kill()

    def http_pid_file(self, node: str) -> Path:
        """The pid file the node's web server writes at start (like a proxy's)."""
        return self.node_dir(node) / "http.pid"

    def http_running(self, node: str) -> bool:
        """True while the node's web server process runs."""
        proc = self._http.get(node)
        return proc is not None and proc.alive()

    def set_healthy(self, node: str, healthy: bool) -> None:
        """Make the node's ``/health`` answer 200 (healthy) or 503, without stopping the server."""
        flag = self.node_dir(node) / "unhealthy"
        if healthy:
            flag.unlink(missing_ok=True)
        else:
            flag.write_text("unhealthy\n")

    # --- ExaBGP --------------------------------------------------------------------------------

    def standin_argv(
        self,
        node: str,
        *,
        med: int = 100,
        community: str | None = None,
        lines: Sequence[str] | None = None,
    ) -> list[str]:
        """Argv of a stand-in API process that announces both anycast prefixes then reads stdin.

        ``lines`` replaces the announcements; what the stand-in sends and receives is
        logged to ``<node>/standin.log``.
        """
        if lines is None:
            lines = standin.announce_lines(med=med, community=community)
        return standin.write_standin(self.tmpdir, lines, self.node_dir(node) / "standin.log")

    def write_announcer_config(
        self, node: str, config: Mapping[str, Any] | str | None = None, **defaults: Any
    ) -> Path:
        """Write the controller's TOML for ``node`` (default: :func:`default_config`).

        Both nodes share one filesystem, so a mapping gets the node's own
        ``state_dir``, ``control_socket`` and ``maintenance_file`` (in the node's
        directory) unless it sets them; TOML text is written as given.
        """
        if config is None:
            config = announcer_config.default_config(**defaults)
        if not isinstance(config, str):
            config = {**announcer_config.node_paths(self.node_dir(node)), **config}
        return announcer_config.write_config(self.node_dir(node) / "announcer.toml", config)

    def control_socket(self, node: str) -> Path:
        """The node's controller control socket (as set by :meth:`write_announcer_config`)."""
        return announcer_config.node_paths(self.node_dir(node))["control_socket"]

    def announcer_argv(
        self, node: str, config: Mapping[str, Any] | str | None = None, **defaults: Any
    ) -> list[str]:
        """Argv running the real controller on ``node`` with a freshly written config."""
        path = self.write_announcer_config(node, config, **defaults)
        return announcer_config.announcer_argv(path)

    def exabgp_config_path(self, node: str) -> Path:
        """Where the node's exabgp.conf is written."""
        return self.node_dir(node) / "exabgp.conf"

    def exabgp_log_path(self, node: str) -> Path:
        """The node's ExaBGP log (stdout and stderr, appended across restarts)."""
        return self.node_dir(node) / "exabgp.log"

    def start_exabgp(
        self,
        node: str,
        api_argv: Sequence[str] | None = None,
        *,
        exabgp_binary: str | Path | None = None,
        wait: bool = True,
        timeout: float = 15.0,
    ) -> int:
        """Start ExaBGP in ``node`` with ``api_argv`` as its API process (default: the last one).

        With ``wait``, returns once both of the node's BGP sessions are Established.
        """
        if self.exabgp_running(node):
            raise LabError(f"exabgp of {node} already running")
        argv = list(api_argv) if api_argv is not None else self._api_argv.get(node)
        if not argv:
            raise LabError(f"no API process given for {node}")
        if exabgp_binary is None:
            binary = self._exabgp_binary.get(node, self.exabgp)
        else:
            binary = EXABGP_BINARIES.get(str(exabgp_binary), Path(exabgp_binary))
        if not binary.exists():
            raise LabError(f"no ExaBGP at {binary}: run scripts/bootstrap.sh")
        link = self.links[node]
        neighbors = [
            exabgp.ExaNeighbor(link.router_v4, link.peer_v4, link.peer_v4, "ipv4"),
            exabgp.ExaNeighbor(link.router_v6, link.peer_v6, link.peer_v4, "ipv6"),
        ]
        conf = self.exabgp_config_path(node)
        conf.write_text(exabgp.render_config(argv, neighbors))
        log = self.exabgp_log_path(node)
        with log.open("a") as out:
            out.write(f"=== lab: {time.strftime('%H:%M:%S')} start {binary} {conf}\n")
        proc = self._spawn(
            node, f"exabgp {node}", [str(binary), str(conf)], log, env=exabgp.environment()
        )
        self._exabgp[node] = proc
        self._api_argv[node] = argv
        self._exabgp_binary[node] = binary
        if wait:
            self.wait_established([node], timeout=timeout)
        return proc.pid

    def ensure(self, api_argv: Mapping[str, Sequence[str]], *, timeout: float = 15.0) -> list[str]:
        """Bring the lab back to a known state; return what had to change.

        Both web servers run and are healthy; each node in ``api_argv`` runs ExaBGP
        with exactly that API argv (restarted if it differs or died), other nodes run
        none; all started sessions are Established.
        """
        changed: list[str] = []
        for node in self.nodes:
            self.set_healthy(node, True)
            if not self.http_running(node):
                self.start_http(node, timeout=timeout)
                changed.append(f"started http {node}")
            wanted = api_argv.get(node)
            running = self.exabgp_running(node)
            if running and (wanted is None or list(wanted) != self._api_argv.get(node)):
                self.stop_exabgp(node)
                changed.append(f"stopped exabgp {node}")
                running = False
            if wanted is not None and not running:
                self.start_exabgp(node, wanted, wait=False)
                changed.append(f"started exabgp {node}")
        if api_argv:
            self.wait_established(list(api_argv), timeout=timeout)
        return changed

    def api_argv(self, node: str) -> list[str] | None:
        """The argv the node's ExaBGP was last started with."""
        argv = self._api_argv.get(node)
        return list(argv) if argv else None

    def exabgp_pid(self, node: str) -> int | None:
        """PID of the node's running ExaBGP, or None."""
        proc = self._exabgp.get(node)
        return proc.pid if proc is not None and proc.alive() else None

    def exabgp_running(self, node: str) -> bool:
        """True while the node's ExaBGP runs."""
        return self.exabgp_pid(node) is not None

    def api_pids(self, node: str) -> list[int]:
        """PIDs of the live API processes ExaBGP runs for ``node`` (its direct children)."""
        pid = self.exabgp_pid(node)
        return children(pid) if pid is not None else []

    def wait_api_pid(self, node: str, timeout: float = 10.0) -> int:
        """Wait until the node's ExaBGP has an API child, and return its PID."""
        return wait_until(
            lambda: (self.api_pids(node) or [0])[0], timeout, what=f"API process of {node}"
        )

    def stop_exabgp(self, node: str, timeout: float = 5.0) -> int | None:
        """Stop the node's ExaBGP gracefully (SIGTERM; SIGKILL after ``timeout``).

        Its API processes are killed too if they outlive it. Returns the exit code.
        """
        proc = self._exabgp.pop(node, None)
        if proc is None:
            return None
        api = self.api_pids(node) if proc.alive() else []
        code = proc.stop(grace=timeout)
        kill_pids(api, grace=1.0)
        return code

    def freeze_exabgp(self, node: str) -> None:
        """SIGSTOP the node's ExaBGP: its sessions stay open but silent until the hold time."""
        pid = self.exabgp_pid(node)
        if pid is None:
            raise LabError(f"exabgp of {node} is not running")
        os.kill(pid, signal.SIGSTOP)

    def thaw_exabgp(self, node: str) -> None:
        """SIGCONT the node's ExaBGP after :meth:`freeze_exabgp`."""
        pid = self.exabgp_pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def kill_exabgp(self, node: str) -> None:
        """SIGKILL the node's ExaBGP (its API process sees EOF on stdin and should exit).

        The API process is not killed here: orphaned, it must end on its own (that is
        part of what is tested); :meth:`stop` kills whatever remains.
        """
        proc = self._exabgp.pop(node, None)
        if proc is not None:
            proc.stop(grace=5.0, sig=signal.SIGKILL)

    def exabgp_log(self, node: str) -> str:
        """The node's ExaBGP log text."""
        return self._read(self.exabgp_log_path(node))

    def standin_log(self, node: str) -> str:
        """What the node's stand-in API process sent (``>``) and received (``<``)."""
        return self._read(self.node_dir(node) / "standin.log")

    # --- client --------------------------------------------------------------------------------

    def client_get(self, url: str, timeout: float = 2.0) -> ClientResult:
        """One GET from the client namespace over a new TCP connection; who answered, or why not."""
        if self._client is None:
            self._client = ClientWorker(self.ns(CLIENT), self.id)
            self._client.start()
        return self._client.request(url, timeout)

    def client_loop(self, url: str, **kwargs: Any) -> ClientLoop:
        """A background request loop from the client namespace (start it, or use ``with``)."""
        loop = ClientLoop(ClientWorker(self.ns(CLIENT), self.id, "client loop"), url, **kwargs)
        self._loops.append(loop)
        return loop

    # --- waiting and diagnostics ---------------------------------------------------------------

    wait_until = staticmethod(wait_until)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _process_summary(self, node: str) -> dict[str, object]:
        return {
            "exabgp": self.exabgp_pid(node),
            "api": self.api_pids(node),
            "http": self.http_running(node),
        }

    def describe(self, tail: int = 30) -> str:
        """A readable snapshot for failure reports: sessions, routes, FIB, processes, log tails."""
        parts = [f"lab {self.id} in {self.tmpdir} (ExaBGP {self.exabgp})"]

        def section(title: str, produce: Callable[[], object]) -> None:
            try:
                body = produce()
            except Exception as exc:
                body = f"<{exc!r}>"
            parts.append(f"--- {title}\n{body}")

        section("bird protocols", lambda: self.birdc("show", "protocols"))
        for prefix in (PREFIX_V4, PREFIX_V6):
            section(f"bird {prefix}", partial(self.bird_routes, prefix))
            section(f"fib {prefix}", partial(self.fib_nexthops, prefix))
        for node in self.nodes:
            section(f"{node} processes", partial(self._process_summary, node))
            for name in ("exabgp.log", "standin.log", "http.log"):
                text = self._read(self.node_dir(node) / name)
                if text:
                    parts.append(f"--- {node}/{name}\n" + "\n".join(text.splitlines()[-tail:]))
        text = self.bird_log()
        parts.append("--- bird.log\n" + "\n".join(text.splitlines()[-tail:]))
        return "\n".join(parts)
