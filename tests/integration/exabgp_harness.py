"""Two real ExaBGP processes peering on loopback, for end-to-end tests without root.

A *speaker* ExaBGP runs the API process under test (``encoder text``); a *receiver*
ExaBGP listens passively and logs every UPDATE it receives as JSON through a tiny
process of its own, which stamps each line with the time it was read. Tests then
look at what actually went over the BGP session::

    with ExaBGPPair(exabgp_binary("5"), [sys.executable, str(script)], tmp_path) as pair:
        event = pair.wait_for(lambda evs: [e for e in evs if e.prefix == "192.0.2.1/32"])

Addresses: over IPv4 the receiver is 127.0.0.1 and the speaker 127.0.0.2 (session *i*
uses 127.0.0.(2i+1) and 127.0.0.(2i+2)); over IPv6 both ends are ``::1``. The
receiver listens on a free port picked at start. Nothing leaves loopback.

Every process started here is in the speaker's or the receiver's session (ExaBGP
starts its API processes in their own process groups, but in the same session), and
``stop()`` kills by PID whatever is left of those sessions, then raises
:class:`LeftoverProcessError` if anything survives. A process that calls ``setsid()``
itself escapes that sweep.

Facts this relies on (measured, see docs/exabgp-api.md): both ExaBGP 4.2 and 5.0
take the neighbour knobs ``passive; listen PORT;`` (receiver) and ``connect PORT;``
(speaker), and the environment variables set in :func:`exabgp_env`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root, found from this file's location (tests/integration/..)."""

EXABGP_BINARIES: dict[str, tuple[str, Path]] = {
    "5": ("ANNOUNCER_EXABGP5", REPO_ROOT / ".venv" / "bin" / "exabgp"),
    "4.2": ("ANNOUNCER_EXABGP42", REPO_ROOT / ".venv-exabgp42" / "bin" / "exabgp"),
}
"""Major version -> (environment variable that overrides it, default path)."""

Family = Literal["ipv4", "ipv6"]
Action = Literal["announce", "withdraw"]

# The receiver's API process: one line in, one "<time.time()>\t<line>" out, flushed.
_RECEIVER_SCRIPT = """\
import sys
import time

with open(sys.argv[1], "a", buffering=1, encoding="utf-8") as out:
    for line in sys.stdin:
        out.write(f"{time.time():.6f}\\t{line.rstrip()}\\n")
"""

# Arguments go into the ExaBGP configuration's `run` statement, split on blanks.
_SAFE_ARG = re.compile(r"[A-Za-z0-9_./:=@%+,-]+")
_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """The pair could not be started (the message carries the end of the logs)."""


class LeftoverProcessError(AssertionError):
    """A process the harness started was still alive after ``stop()``."""


# --------------------------------------------------------------------------- binaries


def exabgp_binary(major: str) -> Path | None:
    """Path of the ExaBGP executable for ``major`` ("5" or "4.2"), or None if absent.

    ``ANNOUNCER_EXABGP5`` / ``ANNOUNCER_EXABGP42`` override the repository's venvs
    (``.venv/bin/exabgp``, ``.venv-exabgp42/bin/exabgp``); an override that names no
    executable raises FileNotFoundError rather than skipping tests silently.
    """
    variable, default = EXABGP_BINARIES[major]
    override = os.environ.get(variable)
    path = Path(override) if override else default
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if override:
        raise FileNotFoundError(f"{variable}={override} is not an executable file")
    return None


def exabgp_version(binary: Path) -> str:
    """The version of the ExaBGP at ``binary`` ("5.0.15"), asked of its own interpreter.

    ``exabgp version`` prints nothing in 4.2 when it has no terminal, so this imports
    ``exabgp.version`` with the Python named on the script's ``#!`` line instead.
    """
    with binary.open("rb") as script:
        first = script.readline().decode("utf-8", "replace").strip()
    interpreter = first[2:].split()[0] if first.startswith("#!") else sys.executable
    result = subprocess.run(
        [interpreter, "-c", "from exabgp.version import version; print(version)"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def exabgp_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one ExaBGP: foreground, current user, logs on stdout, no CLI.

    Inherited ``exabgp*`` variables are dropped so the caller's shell cannot change a
    test; ``extra`` is applied last (e.g. ``{"exabgp_api_ack": "false"}``).
    """
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
    env.update(
        {
            "exabgp_daemon_daemonize": "false",
            "exabgp_daemon_user": pwd.getpwuid(os.getuid()).pw_name,
            "exabgp_daemon_pid": "",
            "exabgp_log_destination": "stdout",
            "exabgp_log_statistics": "false",  # 5.0 only; 4.2 ignores it
            "exabgp_api_cli": "false",
            "exabgp_tcp_bind": "",  # no global listener: only the neighbours' `listen`
            # as shipped in etc/systemd/announcer.service (docs/exabgp-api.md, section 7)
            "exabgp_reactor_speed": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcInfo:
    """One process as /proc shows it; (pid, start_time) identifies it across PID reuse."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start_time: int

    @property
    def running(self) -> bool:
        """True unless the process is a zombie or dead (PID 1 here reaps late)."""
        return self.state not in ("Z", "X", "x")


def proc_info(pid: int) -> ProcInfo | None:
    """Read /proc/PID/stat; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()
    # fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
    return ProcInfo(pid, int(rest[1]), int(rest[2]), int(rest[3]), rest[0], int(rest[19]))


def all_processes() -> list[ProcInfo]:
    """Every process in /proc (a snapshot; some may vanish while reading)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                found.append(info)
    return found


def is_running(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie and (if given) started at ``start_time``."""
    info = proc_info(pid)
    if info is None or not info.running:
        return False
    return start_time is None or info.start_time == start_time


def children(pid: int) -> list[ProcInfo]:
    """Running direct children of ``pid`` (found by scanning /proc: no /proc/PID/children)."""
    return [p for p in all_processes() if p.ppid == pid and p.running]


def wait_gone(procs: Sequence[ProcInfo], timeout: float) -> list[ProcInfo]:
    """Wait until none of ``procs`` is running; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if is_running(p.pid, p.start_time)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _kill(proc: ProcInfo, sig: signal.Signals) -> None:
    if is_running(proc.pid, proc.start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


_LIBC = ctypes.CDLL(None, use_errno=True)  # resolved here: no dlopen between fork and exec


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: SIGTERM this child if the test runner dies without tearing down."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class RouteEvent:
    """One prefix announced or withdrawn in an UPDATE the receiver got.

    ``attributes`` is normalised across ExaBGP versions: ``med`` and
    ``local-preference`` are ints, ``as-path`` a list of ints, ``community`` a list of
    "a:b", ``large-community`` a list of "a:b:c", ``next-hop`` a string; any other
    attribute is as ExaBGP's JSON has it. A withdraw has no attributes.
    """

    action: Action
    prefix: str
    family: str
    attributes: Mapping[str, Any]
    peer: str
    received_at: float
    exabgp_time: float

    @property
    def med(self) -> int | None:
        """The MULTI_EXIT_DISC, if the UPDATE carried one."""
        value = self.attributes.get("med")
        return int(value) if value is not None else None

    @property
    def next_hop(self) -> str | None:
        """The next hop of an announce."""
        value = self.attributes.get("next-hop")
        return str(value) if value is not None else None


@dataclass(frozen=True)
class RawEvent:
    """One JSON line of the receiver's API process (state changes, EOR, updates)."""

    received_at: float
    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        """ExaBGP's event type: "state", "update", "notification", ..."""
        return str(self.data.get("type", ""))

    @property
    def peer(self) -> str:
        """The speaker address of the session the event belongs to."""
        return str(self.data.get("neighbor", {}).get("address", {}).get("peer", ""))


def _as_path(value: Any) -> list[int]:
    # 4.2: [65001, 65001]; 5.0: {"0": {"element": "as-sequence", "value": [65001, 65001]}}
    if isinstance(value, dict):
        path: list[int] = []
        for key in sorted(value, key=int):
            path.extend(int(asn) for asn in value[key].get("value", []))
        return path
    return [int(asn) for asn in value]


def _normalise(attributes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(attributes)
    if "as-path" in out:
        out["as-path"] = _as_path(out["as-path"])
    for name in ("community", "large-community"):
        if name in out:
            out[name] = [":".join(str(part) for part in item) for item in out[name]]
    for name in ("med", "local-preference"):
        if name in out:
            out[name] = int(out[name])
    if not out.get("confederation-path", True):
        del out["confederation-path"]  # 4.2 always sends an empty one, 5.0 none
    return out


def route_events(raw: RawEvent) -> list[RouteEvent]:
    """The per-prefix announces and withdraws of one receiver JSON event (else [])."""
    update = raw.data.get("neighbor", {}).get("message", {}).get("update")
    if raw.type != "update" or not isinstance(update, dict):
        return []
    peer, at = raw.peer, float(raw.data.get("time", 0.0))
    events: list[RouteEvent] = []
    for family, nlris in update.get("withdraw", {}).items():
        for nlri in nlris:
            prefix = nlri["nlri"] if isinstance(nlri, dict) else str(nlri)
            events.append(RouteEvent("withdraw", prefix, family, {}, peer, raw.received_at, at))
    attributes = _normalise(update.get("attribute", {}))
    for family, by_next_hop in update.get("announce", {}).items():
        for next_hop, nlris in by_next_hop.items():
            attrs = {**attributes, "next-hop": next_hop}
            for nlri in nlris:
                prefix = nlri["nlri"] if isinstance(nlri, dict) else str(nlri)
                events.append(
                    RouteEvent("announce", prefix, family, attrs, peer, raw.received_at, at)
                )
    return events


# --------------------------------------------------------------------------- the pair


@dataclass(frozen=True)
class PairOptions:
    """Knobs of the two configurations (defaults: one eBGP session over IPv4, v4 only).

    ``neighbor_extra`` is pasted verbatim into the speaker's neighbour block (e.g.
    ``"group-updates false;"``); ``process_extra`` into its ``process`` block;
    ``speaker_env`` / ``receiver_env`` are extra environment variables for each ExaBGP
    (the speaker's API process inherits them). ``sessions`` > 1 (IPv4 only) makes one
    session per loopback address pair, all with the same process. ``stop_timeout`` is
    how long ``stop()`` waits after each SIGTERM before SIGKILL (4.2 waits forever for
    an API process that ignores SIGTERM).
    """

    families: tuple[Family, ...] = ("ipv4",)
    transport: Family = "ipv4"
    speaker_as: int = 65001
    receiver_as: int = 65000
    hold_time: int | None = None
    neighbor_changes: bool = True
    neighbor_extra: str = ""
    process_name: str = "announcer"
    process_extra: str = ""
    speaker_env: Mapping[str, str] = field(default_factory=dict)
    receiver_env: Mapping[str, str] = field(default_factory=dict)
    receiver_binary: Path | None = None
    sessions: int = 1
    stop_timeout: float = 5.0


@dataclass(frozen=True)
class Session:
    """The two ends of one BGP session of the pair."""

    speaker: str
    receiver: str


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} missing)"
    return "\n".join(text[-lines:])


class ExaBGPPair:
    """A speaker ExaBGP running ``process_argv`` peered with a logging receiver ExaBGP.

    Use as a context manager (``stop()`` runs even when the body raises), or call
    ``start()`` / ``stop()`` yourself. All files go to ``workdir``.
    """

    def __init__(
        self,
        exabgp: Path,
        process_argv: Sequence[str],
        workdir: Path,
        options: PairOptions | None = None,
    ) -> None:
        self.exabgp = Path(exabgp)
        self.process_argv = [str(arg) for arg in process_argv]
        self.workdir = Path(workdir)
        self.options = options or PairOptions()
        paths = [*self.process_argv, str(self.workdir), sys.executable]
        unsafe = [a for a in paths if not _SAFE_ARG.fullmatch(a)]
        if unsafe:
            raise ValueError(f"ExaBGP's `run` splits on blanks; unusable arguments: {unsafe}")
        if self.options.transport == "ipv6" and self.options.sessions != 1:
            raise ValueError("over IPv6 only ::1 exists on loopback: one session only")
        self.sessions = self._sessions()
        self.port = 0
        self.speaker: subprocess.Popen[bytes] | None = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.speaker_config = self.workdir / "speaker.conf"
        self.receiver_config = self.workdir / "receiver.conf"
        self.speaker_log = self.workdir / "speaker.log"
        self.receiver_log = self.workdir / "receiver.log"
        self.events_path = self.workdir / "received.jsonl"
        self._receiver_script = self.workdir / "receiver_process.py"
        self._raw: list[RawEvent] = []
        self._offset = 0
        self._stopped = False
        self._leaders: dict[int, int] = {}  # pid -> start time of each ExaBGP started

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(check=exc is None, timeout=self.options.stop_timeout)

    def start(self, wait_up: bool = True, timeout: float = 15.0) -> None:
        """Write both configs, start receiver then speaker; wait for every session up.

        On failure everything started is stopped and :class:`HarnessError` raised.
        """
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = free_port(self.sessions[0].receiver)
            self._receiver_script.write_text(_RECEIVER_SCRIPT, encoding="utf-8")
            self.receiver_config.write_text(self.receiver_config_text(), encoding="utf-8")
            self.speaker_config.write_text(self.speaker_config_text(), encoding="utf-8")
            self.events_path.touch()
            receiver_bin = self.options.receiver_binary or self.exabgp
            self.receiver = self._spawn(
                receiver_bin, self.receiver_config, self.receiver_log, self.options.receiver_env
            )
            self._wait(lambda: _listening(self.port), timeout, "receiver listening")
            self.speaker = self._spawn(
                self.exabgp, self.speaker_config, self.speaker_log, self.options.speaker_env
            )
            if wait_up:
                self.wait_session_up(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop(check=False)
            raise

    def _spawn(
        self, binary: Path, config: Path, log: Path, env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(binary), str(config)],
                cwd=self.workdir,
                env=exabgp_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl, no locks
            )
        info = proc_info(proc.pid)
        self._leaders[proc.pid] = info.start_time if info else 0
        return proc

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in (("receiver", self.receiver), ("speaker", self.speaker)):
                if proc is not None and proc.poll() is not None:
                    raise HarnessError(f"{name} ExaBGP exited ({proc.returncode}) {self.logs()}")
            if time.monotonic() >= deadline:
                raise HarnessError(f"timeout waiting for {what} {self.logs()}")
            time.sleep(0.02)

    def stop(self, check: bool = True, timeout: float = 5.0) -> None:
        """SIGTERM speaker then receiver (SIGKILL after ``timeout``), then kill by PID
        whatever else is left in their sessions. Raises :class:`LeftoverProcessError`
        if something still runs, unless ``check`` is false. Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        for proc in (self.speaker, self.receiver):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        stragglers = self._session_members()
        for straggler in stragglers:
            _kill(straggler, signal.SIGKILL)
        left = wait_gone(stragglers, timeout)
        if left and check:
            raise LeftoverProcessError(f"still running after stop(): {left}")

    def _session_members(self) -> list[ProcInfo]:
        """Running processes in the sessions of the ExaBGPs we started.

        A session's number cannot be handed out again while any process is in it, so
        its members are ours; if the number is back as another process (other start
        time), our session is empty and that one is somebody else's.
        """
        members = []
        for sid, started in self._leaders.items():
            leader = proc_info(sid)
            if leader is not None and leader.start_time != started:
                continue
            members += [p for p in all_processes() if p.sid == sid and p.start_time >= started]
        return [p for p in members if p.running]

    # ----------------------------------------------------------------- configs

    def _sessions(self) -> list[Session]:
        if self.options.transport == "ipv6":
            return [Session(speaker="::1", receiver="::1")]
        return [
            Session(speaker=f"127.0.0.{2 * i + 2}", receiver=f"127.0.0.{2 * i + 1}")
            for i in range(self.options.sessions)
        ]

    def _families(self) -> str:
        return " ".join(f"{family} unicast;" for family in self.options.families)

    def receiver_config_text(self) -> str:
        """The receiver's configuration: passive, `listen` on the pair's port, JSON log."""
        o = self.options
        hold = f"hold-time {o.hold_time}; " if o.hold_time is not None else ""
        blocks = [
            "process receiver-log {\n"
            f"    run {sys.executable} {self._receiver_script} {self.events_path};\n"
            "    encoder json;\n}\n"
        ]
        for s in self.sessions:
            blocks.append(
                f"neighbor {s.speaker} {{\n"
                f"    router-id 127.0.0.1; local-address {s.receiver};\n"
                f"    local-as {o.receiver_as}; peer-as {o.speaker_as};\n"
                f"    passive; listen {self.port}; {hold}\n"
                f"    family {{ {self._families()} }}\n"
                "    api { processes [ receiver-log ]; neighbor-changes;"
                " receive { parsed; update; } }\n}\n"
            )
        return "".join(blocks)

    def speaker_config_text(self) -> str:
        """The speaker's configuration: `connect` to the receiver, our process on the API."""
        o = self.options
        hold = f"hold-time {o.hold_time}; " if o.hold_time is not None else ""
        changes = " neighbor-changes;" if o.neighbor_changes else ""
        blocks = [
            f"process {o.process_name} {{\n"
            f"    run {' '.join(self.process_argv)};\n"
            f"    encoder text;\n{o.process_extra}\n}}\n"
        ]
        for s in self.sessions:
            blocks.append(
                f"neighbor {s.receiver} {{\n"
                f"    router-id 127.0.0.2; local-address {s.speaker};\n"
                f"    local-as {o.speaker_as}; peer-as {o.receiver_as};\n"
                f"    connect {self.port}; {hold}\n"
                f"    family {{ {self._families()} }}\n"
                f"    {o.neighbor_extra}\n"
                f"    api {{ processes [ {o.process_name} ];{changes} }}\n}}\n"
            )
        return "".join(blocks)

    # ----------------------------------------------------------------- processes

    @property
    def speaker_pid(self) -> int:
        """PID of the speaker ExaBGP."""
        assert self.speaker is not None, "not started"
        return self.speaker.pid

    @property
    def receiver_pid(self) -> int:
        """PID of the receiver ExaBGP."""
        assert self.receiver is not None, "not started"
        return self.receiver.pid

    def api_pids(self) -> list[int]:
        """PIDs of the speaker's running API processes (its direct children)."""
        return [p.pid for p in children(self.speaker_pid)]

    def wait_api_pid(self, timeout: float = 10.0, other_than: int | None = None) -> int:
        """Wait for the speaker to have an API process (not ``other_than``: a respawn)."""
        found: list[int] = []

        def ready() -> bool:
            found[:] = [pid for pid in self.api_pids() if pid != other_than]
            return bool(found)

        self._wait(ready, timeout, "the speaker's API process")
        return found[0]

    def logs(self, lines: int = 30) -> str:
        """The end of both ExaBGP logs, for failure messages."""
        return (
            f"\n--- {self.speaker_log}\n{_tail(self.speaker_log, lines)}"
            f"\n--- {self.receiver_log}\n{_tail(self.receiver_log, lines)}"
        )

    # ----------------------------------------------------------------- what was received

    def raw_events(self) -> list[RawEvent]:
        """Every JSON event the receiver logged so far, in order."""
        with self.events_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            stamp, _, payload = line.partition("\t")
            if payload.startswith("{"):
                self._raw.append(RawEvent(float(stamp), json.loads(payload)))
        return list(self._raw)

    def received(self) -> list[RouteEvent]:
        """Every announce/withdraw the receiver got so far, one per prefix, in order."""
        return [event for raw in self.raw_events() for event in route_events(raw)]

    def routes(self, peer: str | None = None) -> dict[str, RouteEvent]:
        """The receiver's current view: prefix -> last announce, minus withdrawn prefixes.

        A session going down empties that peer's routes: ExaBGP reports the state
        change but no withdraws. With several sessions, pass ``peer`` (the speaker's
        address) or a prefix seen on two sessions shows the last announce of either.
        """
        tables: dict[str, dict[str, RouteEvent]] = {}
        for raw in self.raw_events():
            if peer is not None and raw.peer != peer:
                continue
            if raw.type == "state" and raw.data["neighbor"].get("state") == "down":
                tables.pop(raw.peer, None)
            for event in route_events(raw):
                table = tables.setdefault(event.peer, {})
                if event.action == "announce":
                    table[event.prefix] = event
                else:
                    table.pop(event.prefix, None)
        return {prefix: e for table in tables.values() for prefix, e in table.items()}

    def session_state(self, peer: str | None = None) -> str | None:
        """The last state ("connected", "up", "down") the receiver reported for ``peer``."""
        peer = peer or self.sessions[0].speaker
        states = [
            str(r.data["neighbor"].get("state"))
            for r in self.raw_events()
            if r.type == "state" and r.peer == peer
        ]
        return states[-1] if states else None

    def wait_session_up(self, timeout: float = 15.0) -> None:
        """Wait until the receiver reports every session up."""
        self._wait(
            lambda: all(self.session_state(s.speaker) == "up" for s in self.sessions),
            timeout,
            "BGP session(s) up",
        )

    def wait_for(
        self,
        predicate: Callable[[list[RouteEvent]], T],
        timeout: float = 10.0,
        interval: float = 0.01,
    ) -> T:
        """Poll ``predicate(self.received())`` until it returns something truthy; return it.

        Raises TimeoutError (with the last events and the logs) at the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = self.received()
            result = predicate(events)
            if result:
                return result
            if time.monotonic() >= deadline:
                last = "\n".join(repr(e) for e in events[-10:])
                raise TimeoutError(
                    f"condition not met in {timeout}s; last events:\n{last}{self.logs()}"
                )
            time.sleep(interval)
