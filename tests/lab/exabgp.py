"""ExaBGP on a lab node: its configuration and environment."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .bird import NODE_AS, ROUTER_AS
from .waiting import LabError


@dataclass(frozen=True)
class ExaNeighbor:
    """One BGP session from a node to the router."""

    peer: str
    """The router's address on the link."""
    local: str
    """The node's address on the link."""
    router_id: str
    family: str  # "ipv4" or "ipv6"


_UNSAFE = re.compile(r"[\s;{}]")


def render_config(api_argv: Sequence[str], neighbors: Sequence[ExaNeighbor]) -> str:
    """exabgp.conf: one process ``announcer`` fed neighbour changes, one neighbour per session.

    ExaBGP splits ``run`` on whitespace and has no quoting, so no argument may
    contain whitespace, ``;`` or braces.
    """
    for arg in api_argv:
        if not arg or _UNSAFE.search(arg):
            raise LabError(f"ExaBGP cannot run an argument with spaces, ';' or braces: {arg!r}")
    lines = [
        "process announcer {",
        f"    run {' '.join(api_argv)};",
        "    encoder text;",
        "}",
        "",
    ]
    for n in neighbors:
        lines += [
            f"neighbor {n.peer} {{",
            f"    router-id {n.router_id};",
            f"    local-address {n.local};",
            f"    local-as {NODE_AS};",
            f"    peer-as {ROUTER_AS};",
            "    hold-time 3;",
            f"    family {{ {n.family} unicast; }}",
            "    api { processes [ announcer ]; neighbor-changes; }",
            "}",
            "",
        ]
    return "\n".join(lines)


REACTOR_SPEED = "0.1"
"""``exabgp.reactor.speed`` as shipped in etc/systemd/announcer.service (ExaBGP's
default is 1.0): its loop sleeps 1 ms between turns instead of 10 ms, so a burst
of prefixes lands about twice as fast (docs/exabgp-api.md, section 7)."""


def environment() -> dict[str, str]:
    """The environment ExaBGP (5.0 and 4.2 alike) runs with: foreground, root, no CLI
    pipes, and the reactor speed announcer ships with."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "LANG", "LC_ALL", "HOME", "TZ") or key.startswith("PYTHON")
    }
    env.update(
        exabgp_daemon_daemonize="false",
        exabgp_daemon_user="root",
        exabgp_daemon_drop="false",
        exabgp_log_destination="stdout",
        exabgp_api_cli="false",
        exabgp_reactor_speed=REACTOR_SPEED,
        PYTHONUNBUFFERED="1",
    )
    return env


def version_of(binary: Path) -> str:
    """The ExaBGP version a binary belongs to, read from its venv (no process started)."""
    lib = binary.resolve().parent.parent / "lib"
    for version_file in sorted(lib.glob("python3*/site-packages/exabgp/version.py")):
        match = re.search(r'^release\s*=\s*["\']([^"\']+)', version_file.read_text(), re.M)
        if match:
            return match.group(1)
    raise LabError(f"cannot tell the ExaBGP version of {binary}")
