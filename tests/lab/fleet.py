"""The fleet's lab, shared by its scenarios (tests/integration/lab/test_fleet_lab.py) and
``make demo-fleet``: three nodes with the real controller, a 3-member etcd in the
router's namespace, and the operator's commands against each node's control socket."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from .announcer_config import ANNOUNCER_BIN, default_config
from .etcd import LabEtcd
from .lab import Lab
from .topology import PREFIX_V4

NODES3 = ("node1", "node2", "node3")
LEASE = 3
"""lease_seconds of every node: a killed node leaves the view this long after its last
keepalive."""


def config(etcd: LabEtcd, node: str, **fleet: Any) -> dict[str, Any]:
    """One service ``web`` (HTTP /health, rise 2, fall 2, drain 3 s), group ``lab``,
    min_announcing 1 (the default), max_drained 1."""
    base = default_config(interval=0.5, fast_interval=0.1, rise=2, fall=2, drain_seconds=3)
    base["defaults"].update(max_drained=1)
    base["fleet"] = {
        "endpoints": etcd.endpoints(node),
        "group": "lab",
        "node": node,
        "lease_seconds": LEASE,
        "timeout": 1.0,
        **fleet,
    }
    return base


def announcer(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``announcer ARGS --socket <node's socket>``, as an operator on the host runs it."""
    return subprocess.run(
        [str(ANNOUNCER_BIN), *args, "--socket", str(lab.control_socket(node))],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def fleet_view(lab: Lab, node: str) -> dict[str, Any]:
    """``announcer fleet web --json`` on ``node`` ({} while it does not answer)."""
    out = announcer(lab, node, "fleet", "web", "--json")
    return json.loads(out.stdout) if out.returncode == 0 else {}


def counted(lab: Lab, node: str) -> int | None:
    """How many nodes announce ``web``, as ``node``'s controller last read it."""
    web: dict[str, Any] = fleet_view(lab, node).get("services", {}).get("web", {})
    value = web.get("announcing")
    return value if isinstance(value, int) else None


def paths(lab: Lab) -> dict[str, int | None]:
    """The router's paths for the v4 prefix: node -> MED."""
    return {node: path.med for node, path in lab.bird_paths_by_node(PREFIX_V4).items()}


def start_all(lab: Lab, etcd: LabEtcd) -> None:
    """Every node runs its controller under ExaBGP, healthy (restarted where needed)."""
    lab.ensure({node: lab.announcer_argv(node, config(etcd, node)) for node in NODES3})
