"""The real controller (``announcer run``) on lab nodes: configs, drains, its status and logs.

Drains go through the control socket (``announcer drain SERVICE``) when the CLI
has that command and the node's daemon has created its socket; otherwise
through the node's maintenance file, which every controller config the lab
writes sets (global ``maintenance_file`` in the node's directory).

The controller's stderr is ExaBGP's, so its log lines (logfmt, ``ts=... event=...``)
end up in the node's ``exabgp.log``, next to ExaBGP's own; :func:`log_events`
picks them out.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .announcer_config import ANNOUNCER_BIN, announcer_argv, default_config, node_paths, to_toml
from .lab import Lab
from .waiting import LabError

SERVICE = "web"
"""The one service every lab controller config runs (see :func:`default_config`)."""

COMMUNITY = "65001:100"
"""A standard community the lab's controllers announce with (besides MED)."""
LARGE_COMMUNITY = "65001:0:1"
"""A large community the lab's controllers announce with."""

DrainMechanism = Literal["cli", "maintenance-file"]


def scenario_config(
    *,
    med: int = 100,
    interval: float = 0.3,
    fast_interval: float = 0.1,
    rise: int = 2,
    fall: int = 2,
    drain_seconds: float = 3,
    communities: Sequence[str] = (COMMUNITY,),
    large_communities: Sequence[str] = (LARGE_COMMUNITY,),
    dampening: bool = False,
) -> dict[str, Any]:
    """:func:`default_config` with fast but realistic timings and tagged announcements.

    The ``drain`` attributes stay the controller's built-in ones (MED 1000,
    community 65535:0), so a drain is visible at the router as exactly that.
    Flap dampening is off unless ``dampening``: a test module fails and restores
    the same node far more often than the default (6 changes in 120 s) allows.
    """
    config = default_config(
        med=med,
        interval=interval,
        fast_interval=fast_interval,
        rise=rise,
        fall=fall,
        drain_seconds=drain_seconds,
    )
    announce: dict[str, Any] = {"med": med}
    if communities:
        announce["communities"] = list(communities)
    if large_communities:
        announce["large_communities"] = list(large_communities)
    config["service"][0]["announce"] = announce
    if not dampening:
        config["defaults"]["dampening"] = {"changes": 0}
    return config


def write_node_config(lab: Lab, node: str, config: Mapping[str, Any], name: str) -> Path:
    """Write ``config`` as ``<node dir>/<name>.toml`` with the node's own paths; return the path.

    Each variant gets its own file, so a running controller's config is never
    rewritten under it and :meth:`Lab.ensure` sees a different argv per variant.
    """
    path = lab.node_dir(node) / f"{name}.toml"
    text = to_toml({**node_paths(lab.node_dir(node)), **config})
    if path.exists() and path.read_text() == text:
        return path  # unchanged: never rewrite a file a (re)starting controller may be reading
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)
    return path


def controller_argv(
    lab: Lab, node: str, config: Mapping[str, Any] | None = None, *, name: str = "announcer"
) -> list[str]:
    """Argv of the real controller on ``node`` (config default: :func:`scenario_config`)."""
    path = write_node_config(lab, node, config if config is not None else scenario_config(), name)
    return announcer_argv(path)


def maintenance_file(lab: Lab, node: str) -> Path:
    """The node's maintenance file: while it exists, the node's controller drains every service."""
    return node_paths(lab.node_dir(node))["maintenance_file"]


@functools.cache
def cli_has_drain(binary: Path = ANNOUNCER_BIN) -> bool:
    """True once the CLI has ``drain``/``undrain``/``status`` (``announcer drain --help`` works).

    Cached per process: call :func:`refresh_cli` to look again.
    """
    try:
        proc = subprocess.run(
            [str(binary), "drain", "--help"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def refresh_cli() -> None:
    """Forget what :func:`cli_has_drain` found (the CLI may have changed meanwhile)."""
    cli_has_drain.cache_clear()


def control_ready(lab: Lab, node: str) -> bool:
    """True when drains on ``node`` can go through the control socket."""
    return cli_has_drain() and lab.control_socket(node).is_socket()


def announcer_cli(
    lab: Lab, node: str, *args: str, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """Run ``announcer <args> --socket <node's control socket>`` (from the root namespace)."""
    argv = [str(ANNOUNCER_BIN), *args, "--socket", str(lab.control_socket(node))]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _cli_or_raise(lab: Lab, node: str, *args: str) -> None:
    proc = announcer_cli(lab, node, *args)
    if proc.returncode != 0:
        raise LabError(
            f"announcer {shlex.join(args)} on {node} failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()}"
        )


def drain(lab: Lab, node: str, reason: str = "lab drain") -> DrainMechanism:
    """Drain the node's service now; return how (``cli`` or ``maintenance-file``)."""
    if control_ready(lab, node):
        _cli_or_raise(lab, node, "drain", SERVICE, "--reason", reason)
        return "cli"
    maintenance_file(lab, node).write_text(reason + "\n")
    return "maintenance-file"


def undrain(lab: Lab, node: str) -> None:
    """Lift every drain this module can make on ``node`` (socket drain and maintenance file)."""
    maintenance_file(lab, node).unlink(missing_ok=True)
    if control_ready(lab, node):
        snap = status(lab, node)
        svc = (snap or {}).get("services", {}).get(SERVICE, {})
        if "operator" in svc.get("drain_sources", ()):
            _cli_or_raise(lab, node, "undrain", SERVICE)


def status(lab: Lab, node: str) -> dict[str, Any] | None:
    """What ``announcer status --json`` shows for the node's controller, or None if unreachable.

    Asked in-process through :class:`announcer.client.ControlClient` (the CLI's own
    client, same request and answer): the CLI takes ~0.3 s to start, too slow to poll.
    """
    if not control_ready(lab, node):
        return None
    from announcer.client import ControlClient
    from announcer.errors import ControlError

    try:
        with ControlClient(lab.control_socket(node), timeout=2.0, connect_retry=0.0) as client:
            return client.request("status")
    except (ControlError, OSError):
        return None


_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line (``key=value key="quoted value"``) as a dict."""
    out: dict[str, str] = {}
    for key, raw in _PAIR.findall(line):
        value = raw
        if raw.startswith('"'):
            try:
                value = str(json.loads(raw))
            except ValueError:
                value = raw[1:-1]
        out[key] = value
    return out


def log_events(lab: Lab, node: str) -> list[dict[str, str]]:
    """The controller's log events on ``node`` (every run, in order), parsed from exabgp.log."""
    return [
        parse_logfmt(line)
        for line in lab.exabgp_log(node).splitlines()
        if line.startswith("ts=") and " event=" in line
    ]


PRELUDE = frozenset({"restore", "restored"})
PRELUDE_PREFIXES = ("state_", "control_", "metrics_")
"""Events a controller logs while starting, before its ``start`` event (restoring the state
file, opening the control socket or the metrics endpoint)."""


def _prelude(name: str | None) -> bool:
    return name is not None and (name in PRELUDE or name.startswith(PRELUDE_PREFIXES))


def runs(events: Sequence[Mapping[str, str]]) -> list[list[Mapping[str, str]]]:
    """Split log events into one list per controller run.

    A run is its ``start`` event (which names its ``pid``), the start-up events
    logged just before it (see :data:`PRELUDE_PREFIXES`) and everything after it up
    to the next run. (A ``control_*`` warning logged late in a run may land in the
    next run's prelude; nothing here depends on those.)
    """
    out: list[list[Mapping[str, str]]] = []
    prelude: list[Mapping[str, str]] = []
    for event in events:
        name = event.get("event")
        if _prelude(name):
            prelude.append(event)
        elif name == "start":
            out.append([*prelude, event])
            prelude = []
        else:
            if prelude:  # start-up events not followed by a start: that run died early
                out.append(prelude)
                prelude = []
            if not out:
                out.append([])
            out[-1].append(event)
    if prelude:
        out.append(prelude)
    return out


def run_of(events: Sequence[Mapping[str, str]], pid: int) -> list[Mapping[str, str]]:
    """The events of the controller run whose ``start`` event names ``pid`` (empty if none)."""
    for run in runs(events):
        if any(e.get("event") == "start" and e.get("pid") == str(pid) for e in run):
            return run
    return []
