"""What survives a restart of the controller: the state file.

ExaBGP keeps our routes when our process dies and starts a new one. To take
over without a flap, the new process must know what the old one had on the
wire; to keep an operator's drain across a restart or a reboot, it must know
about the drain. Both live in ``<state_dir>/state.json``, rewritten atomically
(temporary file, fsync, rename) whenever they change.

The wire part tells which ExaBGP the previous run talked to (parent PID and
start time, and the boot): after a reboot or an ExaBGP restart nothing of ours
is announced any more. Under the same ExaBGP the file is a belief, not the
truth (a write may have failed), so the takeover asserts the wire again (see
:mod:`announcer.restore`).

Drain deadlines are kept on the boot-time clock (``CLOCK_BOOTTIME``, with the
boot id): a step of the wall clock neither ends a drain early nor makes it last
a day. The wall-clock deadline is written too, for older versions.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from announcer import attributes
from announcer.fsutil import make_dirs
from announcer.state import Route, RouteAttributes

STATE_FILE = "state.json"
FORMAT = 1


@dataclass(frozen=True)
class ServiceRecord:
    """One service as the previous run left it."""

    route: Route = Route.WITHDRAWN
    prefixes: tuple[str, ...] = ()
    attributes: RouteAttributes | None = None
    operator_drain: bool = False
    drain_reason: str = ""
    drain_deadline: float | None = None
    """Wall-clock time (seconds since the epoch) at which a drain withdraws: only
    read from files of older versions, which had nothing else."""
    drain_boottime: float | None = None
    """``CLOCK_BOOTTIME`` reading at which a drain withdraws (valid in the boot
    :attr:`Snapshot.boot_id` names)."""


@dataclass(frozen=True)
class Snapshot:
    """The whole state file."""

    exabgp: str = ""
    """Identity of the ExaBGP process that ran us (see :func:`parent_identity`)."""
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    inflight: tuple[str, ...] = ()
    """Prefixes whose commands were being sent when this was written."""
    boot_id: str = ""
    """The kernel's boot id when this was written ("" in files of older versions)."""


def boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """This boot's id, "" if the kernel does not say."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def parent_identity(pid: int | None = None, proc: Path = Path("/proc")) -> str:
    """``"<pid>:<start time>"`` of our parent: stable for its lifetime, unique across restarts."""
    ppid = os.getppid() if pid is None else pid
    try:
        stat = (proc / str(ppid) / "stat").read_text()
        # Field 22 (start time) comes after the command name, which may hold spaces.
        start = stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        start = "?"
    return f"{ppid}:{start}"


def encode(snapshot: Snapshot) -> bytes:
    services = {
        name: {
            "route": rec.route.value,
            "prefixes": list(rec.prefixes),
            "attributes": attributes.to_json(rec.attributes),
            "operator_drain": rec.operator_drain,
            "drain_reason": rec.drain_reason,
            "drain_deadline": rec.drain_deadline,
            "drain_boottime": rec.drain_boottime,
        }
        for name, rec in sorted(snapshot.services.items())
    }
    body = {
        "format": FORMAT,
        "exabgp": snapshot.exabgp,
        "boot_id": snapshot.boot_id,
        "services": services,
        "inflight": list(snapshot.inflight),
    }
    # No indent: json's C encoder then writes it, several times faster than its
    # pure-Python one (with 2,000 services, tens of ms per write on the daemon's loop).
    # Every version reads either form.
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def decode(data: bytes) -> Snapshot:
    """Parse a state file; raises ValueError when it is not one we wrote."""
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError("not an announcer state file of a known format")
    services: dict[str, ServiceRecord] = {}
    raw = body.get("services", {})
    if not isinstance(raw, dict):
        raise ValueError("services is not a table")
    for name, rec in raw.items():
        if not isinstance(rec, dict):
            continue
        deadline = rec.get("drain_deadline")
        boottime = rec.get("drain_boottime")
        services[str(name)] = ServiceRecord(
            route=Route(rec.get("route", "WITHDRAWN")),
            prefixes=tuple(str(p) for p in rec.get("prefixes", ())),
            attributes=attributes.from_json(rec.get("attributes")),
            operator_drain=bool(rec.get("operator_drain", False)),
            drain_reason=str(rec.get("drain_reason", "")),
            drain_deadline=_number(deadline),
            drain_boottime=_number(boottime),
        )
    inflight = body.get("inflight", [])
    return Snapshot(
        exabgp=str(body.get("exabgp", "")),
        services=services,
        inflight=tuple(str(p) for p in inflight) if isinstance(inflight, list) else (),
        boot_id=str(body.get("boot_id", "")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def read(state_dir: Path) -> Snapshot | None:
    """The previous run's snapshot; None if there is none. Raises ValueError if corrupt."""
    try:
        data = (state_dir / STATE_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"cannot read {state_dir / STATE_FILE}: {err.strerror}") from err
    try:
        return decode(data)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{state_dir / STATE_FILE}: {err}") from err


def write(state_dir: Path, snapshot: Snapshot) -> None:
    """Replace the state file atomically. Raises OSError."""
    make_dirs(state_dir)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(snapshot))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_dir / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
