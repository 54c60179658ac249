"""The lab as the fault scenarios use it: node1 runs the controller under test, node2 the
stand-in, a client counts requests, and a :class:`Watch` records what happened.

Every scenario gets a *profile* on node1: its own directory (config, state_dir, control
socket, maintenance file) under the node's lab directory, so a fault left in one
scenario's state (a corrupt state file, a drain) cannot leak into the next. Starting a
profile restarts node1's ExaBGP with that profile's controller.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import ANYCAST_V4, NODES, PREFIX_V4, PREFIX_V6, ClientLoop, Lab, wait_until
from tests.lab import controller as ctl
from tests.lab.announcer_config import ANNOUNCER_BIN, to_toml
from tests.lab.procs import children, is_alive

from .router import PathState, Router

URL_V4 = f"http://{ANYCAST_V4}/"
SERVICE = "web"
PYTHON = Path(ANNOUNCER_BIN).parent / "python"


def base_config(**overrides: Any) -> dict[str, Any]:
    """The lab's scenario config (interval 0.3, fast 0.1, rise 2, fall 2, drain 3 s, MED 100
    with communities), no conf.d; ``defaults`` keys in ``overrides`` go to ``[defaults]``."""
    config = ctl.scenario_config()
    config["include"] = ""
    defaults = config["defaults"]
    defaults["address_guard"] = False  # scenarios add prefixes no interface carries
    for key in list(overrides):
        if key in ("interval", "fast_interval", "rise", "fall", "drain_seconds", "timeout"):
            defaults[key] = overrides.pop(key)
    config.update(overrides)
    return config


@dataclass
class Profile:
    """A controller configuration of node1 with its own files."""

    name: str
    directory: Path
    config: dict[str, Any]

    @property
    def socket(self) -> Path:
        return self.directory / "c.sock"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def maintenance(self) -> Path:
        return self.directory / "maintenance"

    @property
    def config_path(self) -> Path:
        return self.directory / "announcer.toml"

    def paths(self) -> dict[str, Any]:
        return {
            "state_dir": self.state_dir,
            "control_socket": self.socket,
            "maintenance_file": self.maintenance,
        }

    def write(self, config: Mapping[str, Any] | None = None) -> Path:
        """Write the config (this profile's, or ``config``) with the profile's own paths."""
        data = dict(config if config is not None else self.config)
        text = to_toml({**data, **self.paths()})
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        return self.config_path


def status_text(snap: Mapping[str, Any] | None, service: str = SERVICE) -> str:
    """``announcer status`` in one line: health, route, drain and any error shown."""
    if snap is None:
        return "no answer from the control socket"
    svc = snap.get("services", {}).get(service)
    if not isinstance(svc, dict):
        text = f"{len(snap.get('services', {}))} services, no {service!r}"
    else:
        text = f"{service}: {svc.get('health')} {svc.get('route')}"
        if svc.get("drained"):
            reason = svc.get("drain_reason") or ",".join(svc.get("drain_sources", ()))
            text += f", drained ({reason})"
            if svc.get("drain_left"):
                text += f" {svc['drain_left']:.1f} s left"
    for key in ("state_error", "config_error", "reload_note"):
        value = snap.get(key)
        if value:
            text += f"; {key}: {str(value).splitlines()[0][:140]}"
    return text


@dataclass
class LogLine:
    """One line of node1's exabgp.log (the controller's logfmt lines and ExaBGP's own)."""

    text: str
    fields: dict[str, str]

    @property
    def event(self) -> str | None:
        return self.fields.get("event")


def short(line: str, limit: int = 220) -> str:
    """A log line without its timestamp, cut to ``limit`` characters."""
    if line.startswith("ts="):
        line = line.split(" ", 1)[1] if " " in line else line
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Rig:
    """One started lab (one ExaBGP version) shared by the scenarios run on it."""

    exabgp: str = "5.0"
    lab: Lab = field(init=False)
    profile: Profile | None = None
    wrap: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.lab = Lab(self.exabgp)

    @property
    def version(self) -> str:
        return self.lab.exabgp_version

    def start(self) -> Rig:
        self.lab.start({"node2": self.lab.standin_argv("node2")})
        return self

    def stop(self) -> None:
        self.lab.stop()

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- node1's controller ------------------------------------------------------------------

    def new_profile(self, name: str, config: dict[str, Any] | None = None) -> Profile:
        directory = self.lab.node_dir("node1") / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        return Profile(name, directory, config if config is not None else base_config())

    def argv(self, profile: Profile, wrap: Sequence[str] = ()) -> list[str]:
        return [*wrap, str(ANNOUNCER_BIN), "run", "--config", str(profile.config_path)]

    def start_node1(
        self,
        profile: Profile,
        *,
        wrap: Sequence[str] = (),
        argv: Sequence[str] | None = None,
        wait_normal: bool = True,
        wait_session: bool = True,
        write: bool = True,
        timeout: float = 40.0,
    ) -> None:
        """(Re)start node1's ExaBGP with ``profile``'s controller; by default wait until it
        announces normally and the router has ECMP over both nodes again."""
        self.reset_world()
        if write:
            profile.write()
        self.lab.stop_exabgp("node1")
        self.profile = profile
        self.wrap = tuple(wrap)
        self.lab.start_exabgp(
            "node1",
            list(argv) if argv is not None else self.argv(profile, wrap),
            wait=wait_session,
            timeout=timeout,
        )
        if wait_normal:
            self.wait_normal(timeout)

    def reset_world(self) -> None:
        """Both web servers up and healthy; node2's stand-in running."""
        for node in NODES:
            self.lab.set_healthy(node, True)
            if not self.lab.http_running(node):
                self.lab.start_http(node)
        if not self.lab.exabgp_running("node2"):
            self.lab.start_exabgp("node2", self.lab.standin_argv("node2"), timeout=40.0)

    def wait_normal(self, timeout: float = 40.0) -> float:
        """Wait until node1 is back to normal: its controller says UP ANNOUNCED (not drained),
        the router has its path with the normal attributes on both families and the FIB
        sends the anycast prefix to both nodes. Returns when (monotonic)."""

        def normal() -> bool:
            svc = self.service()
            if svc is None or (svc["health"], svc["route"], svc["drained"]) != (
                "UP",
                "ANNOUNCED",
                False,
            ):
                return False
            for prefix in (PREFIX_V4, PREFIX_V6):
                path = self.lab.bird_paths_by_node(prefix).get("node1")
                if not PathState.of(path).normal:
                    return False
            return self.lab.fib_nodes(PREFIX_V4) == list(NODES)

        wait_until(normal, timeout, interval=0.05, what="node1 back to normal")
        return time.monotonic()

    def controller_pid(self, timeout: float = 20.0) -> int:
        return self.lab.wait_api_pid("node1", timeout)

    def new_controller_pid(self, old: int, timeout: float = 20.0) -> int:
        """The controller ExaBGP started after ``old`` ended."""
        return wait_until(
            lambda: next((p for p in self.lab.api_pids("node1") if p != old), 0),
            timeout,
            what="a new controller",
        )

    def status(self, profile: Profile | None = None, timeout: float = 2.0) -> dict[str, Any] | None:
        """``status`` through the control socket (in-process: the CLI is too slow to poll)."""
        from announcer.client import ControlClient
        from announcer.errors import ControlError

        prof = profile or self.profile
        if prof is None or not prof.socket.is_socket():
            return None
        try:
            with ControlClient(prof.socket, timeout=timeout, connect_retry=0.0) as client:
                return client.request("status")
        except (ControlError, OSError, ValueError):
            return None

    def service(self, name: str = SERVICE) -> dict[str, Any] | None:
        snap = self.status()
        if snap is None:
            return None
        svc = snap.get("services", {}).get(name)
        return svc if isinstance(svc, dict) else None

    def answered(self, name: str = SERVICE, timeout: float = 15.0) -> dict[str, Any]:
        """The service's status once the controller answers (it may be starting)."""
        found = wait_until(
            lambda: self.service(name), timeout, interval=0.05, what=f"status of {name}"
        )
        assert found is not None
        return found

    def status_text(self, service: str = SERVICE) -> str:
        return status_text(self.status(), service)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The real CLI against node1's control socket (exit codes and messages matter)."""
        assert self.profile is not None
        argv = [str(ANNOUNCER_BIN), *args, "--socket", str(self.profile.socket)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    # --- logs --------------------------------------------------------------------------------

    def log_offset(self) -> int:
        try:
            return self.lab.exabgp_log_path("node1").stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, since: int = 0) -> list[LogLine]:
        try:
            with self.lab.exabgp_log_path("node1").open("rb") as fh:
                fh.seek(since)
                data = fh.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in data.splitlines():
            fields = ctl.parse_logfmt(line) if line.startswith("ts=") else {}
            out.append(LogLine(line, fields))
        return out

    def find_log(
        self, since: int, events: Sequence[str] = (), contains: str = ""
    ) -> LogLine | None:
        """The first line after ``since`` with one of ``events`` (or containing ``contains``)."""
        for line in self.log_lines(since):
            if events and line.event in events:
                return line
            if contains and contains in line.text:
                return line
        return None

    def wait_log(
        self, since: int, events: Sequence[str] = (), contains: str = "", timeout: float = 20.0
    ) -> LogLine:
        found = wait_until(
            lambda: self.find_log(since, events, contains),
            timeout,
            interval=0.05,
            what=f"log line {events or contains!r}",
        )
        assert found is not None
        return found

    # --- processes -----------------------------------------------------------------------------

    def descendants(self, pid: int) -> list[int]:
        """Live descendants of ``pid`` (a check's children, and theirs)."""
        out: list[int] = []
        todo = [pid]
        while todo:
            kids = children(todo.pop())
            out += kids
            todo += kids
        return out

    def netns_pids(self, name: str = "node1") -> list[int]:
        text = subprocess.run(
            ["ip", "netns", "pids", self.lab.ns(name)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
        return sorted(int(p) for p in text.split() if p.isdigit() and is_alive(int(p)))


def log_time(fields: Mapping[str, str]) -> float:
    """A controller log line's ``ts`` (UTC, ms) as seconds since the epoch."""
    from datetime import UTC, datetime

    stamp = datetime.strptime(fields["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return stamp.timestamp()


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def thread_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Watch:
    """The router and a client loop around one injection.

    ``with Watch(rig) as w: ...; w.inject()`` marks the moment; :meth:`lost` counts the
    client's failed requests from then on, :meth:`router_saw` the route changes.
    """

    rig: Rig
    client: bool = True
    prefixes: Sequence[str] = (PREFIX_V4,)
    pause: float = 0.005
    t0: float = 0.0
    """Wall-clock time of the injection."""
    m0: float = 0.0
    """Monotonic time of the injection."""
    log0: int = 0
    router: Router = field(init=False)
    loop: ClientLoop | None = None
    _stats_end: Any = None

    def __enter__(self) -> Watch:
        self.router = Router(self.rig.lab, self.prefixes).start()
        if self.client:
            self.loop = self.rig.lab.client_loop(
                URL_V4, timeout=1.0, pause=self.pause, max_seconds=900.0
            ).start()
            self.loop.wait_for_requests(10, 20.0)
        self.t0, self.m0, self.log0 = time.time(), time.monotonic(), self.rig.log_offset()
        return self

    def inject(self) -> None:
        """The fault goes in now."""
        self.t0, self.m0, self.log0 = time.time(), time.monotonic(), self.rig.log_offset()

    def since(self) -> float:
        """Seconds since the injection."""
        return time.monotonic() - self.m0

    def quiet(self) -> bool:
        """The router saw no change of node1's path from the injection on, and BIRD no
        update or withdraw from node1 since the watch began. A change before the injection
        is the start's settling (the route learnt again at a new session), not the fault's."""
        after = [c for c in self.router.changes() if c.at + c.precision >= self.t0]
        counters = self.router.counters().values()
        return not after and all(c.updates == 0 and c.withdraws == 0 for c in counters)

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        if self.loop is not None and self._stats_end is None:
            with contextlib.suppress(Exception):
                self._stats_end = self.loop.stop()
        self.router.stop()

    def requests(self) -> tuple[int, int, str]:
        """(requests made since the injection, failed, what the failures were)."""
        if self.loop is None:
            return 0, 0, ""
        stats = self._stats_end if self._stats_end is not None else self.loop.stats()
        after = stats.between(self.t0, float("inf"))
        kinds: dict[str, int] = {}
        for r in after.errors:
            key = (r.error or "?").split(":")[0]
            kinds[key] = kinds.get(key, 0) + 1
        note = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        return after.total, after.failures, note

    def router_saw(self) -> list[str]:
        return self.router.describe(self.t0)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the block (SIGCONT after it, whatever happens)."""
    import signal

    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
