"""Drain forwarding's kernel side (announcer/forwarding/kernel.py ``NetKernel``) against
the real kernel, in network namespaces of its own (no lab around it), for each tunnel
type (VXLAN, IPIP, GRE):

- what a reload changes: the prefixes' update replaces the nftables set and leaves the
  rest of the standing part as it was: the tunnel device (same index), the policy
  rules, the route to a draining peer;
- that one device per node serves every peer both ways: three nodes behind a router,
  two of them passing marked TCP to the third through their device while the third
  passes its own to one of them through the same device it decapsulates with;
- that the sysctls it changed go back to their values from before even when the
  controller that changed them was killed: the next one reads them from the device.

IPIP and GRE are kernel modules (``ipip``, ``ip_gre``) that some kernels lack; where the
kernel has neither loaded nor installed, those cases cannot run and skip, saying so."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from announcer.forwarding.settings import TUNNELS
from tests.lab.forwarding import tunnel_unavailable

pytestmark = pytest.mark.lab
TUNNEL_TYPES = sorted(TUNNELS)

IN_NAMESPACE = r"""
import json, subprocess, sys
from ipaddress import IPv4Address, IPv4Network
from announcer.forwarding.kernel import NFT_TABLE, NetKernel, nftables_module
from announcer.forwarding.settings import ForwardingSettings

def seen():
    nft = nftables_module().Nftables()
    nft.set_json_output(True)
    rc, out, err = nft.cmd(f"list table ip {NFT_TABLE}")
    items = json.loads(out)["nftables"] if rc == 0 else []
    sets = [i["set"] for i in items if "set" in i]
    link = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True,
                                     text=True, check=True).stdout)
    ip = lambda *a: subprocess.run(["ip", *a], capture_output=True, text=True).stdout
    return {
        "elements": sets[0].get("elem", []) if sets else None,
        "rules": [i["rule"]["handle"] for i in items if "rule" in i],
        "device": [l["ifindex"] for l in link if l["ifname"] == "anc-fwd"],
        "policy": ip("rule"),
        "table": ip("route", "show", "table", "4140"),
    }

kernel = NetKernel(ForwardingSettings(underlay=IPv4Address("10.0.1.2"), tunnel=sys.argv[1]))
a, b = IPv4Network("192.0.2.10/32"), IPv4Network("192.0.2.20/32")
kernel.install([a])
kernel.route({a: IPv4Address("10.0.1.3")})
before = seen()
kernel.update([a, b])
after = seen()
kernel.route({a: IPv4Address("10.0.1.3"), b: IPv4Address("10.0.1.3")})
routed = seen()
kernel.remove()
print(json.dumps({"before": before, "after": after, "routed": routed, "removed": seen()}))
"""


def needs(tunnel: str) -> None:
    """Skip (saying why) where this test cannot run: no libnftables binding, or a
    kernel without the tunnel type's module."""
    try:
        import nftables  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        pytest.skip("needs libnftables' Python binding (apt-get install python3-nftables)")
    why = tunnel_unavailable(tunnel)
    if why:
        pytest.skip(why)


@contextmanager
def namespace(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def python_in(name: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (name, done.stdout, done.stderr)
    return done


def run_in_namespace(tunnel: str) -> dict[str, Any]:
    with namespace(f"ank-{secrets.token_hex(3)}") as name:
        done = python_in(name, IN_NAMESPACE, tunnel)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


@pytest.mark.parametrize("tunnel", TUNNEL_TYPES)
def test_an_update_of_the_prefixes_replaces_the_set_and_nothing_else(
    lab_requirements: None, tunnel: str
) -> None:
    """After install and a route to a peer, update() leaves the set holding the new
    prefixes and its marking rule in place, while the tunnel device, the policy rules
    and the forwarding table's route are untouched; remove() then takes it all away."""
    needs(tunnel)
    seen = run_in_namespace(tunnel)
    before, after, routed, removed = (seen[k] for k in ("before", "after", "routed", "removed"))
    assert before["elements"] == ["192.0.2.10"], before
    assert sorted(after["elements"]) == ["192.0.2.10", "192.0.2.20"], after
    assert len(after["rules"]) == len(before["rules"]) == 2, (before, after)
    assert after["device"] == before["device"] != [], (before, after)
    assert after["policy"] == before["policy"] and "fwmark 0x414e lookup 4140" in after["policy"]
    assert after["table"] == before["table"] and "192.0.2.10 via 10.0.1.3" in after["table"]
    assert "192.0.2.20 via 10.0.1.3" in routed["table"], routed
    assert removed["elements"] is None and removed["device"] == [], removed
    assert "fwmark" not in removed["policy"] and "0:\tfrom all lookup local" in removed["policy"]


# ---------------------------------------------------------------- a killed controller

KERNEL = r"""
import json, os, signal, subprocess, sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from announcer.forwarding.kernel import NetKernel
from announcer.forwarding.settings import ForwardingSettings

FORWARDING = Path("/proc/sys/net/ipv4/conf/all/forwarding")
kernel = NetKernel(ForwardingSettings(underlay=IPv4Address("10.0.1.2"), tunnel="vxlan"))
kernel.install([IPv4Network("192.0.2.10/32")])
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # no remove(): as a controller killed by systemd
link = json.loads(subprocess.run(["ip", "-j", "link", "show", "anc-fwd"], capture_output=True,
                                 text=True, check=True).stdout)
during = FORWARDING.read_text().strip()
kernel.remove()
print(json.dumps({"alias": link[0].get("ifalias"), "during": during,
                  "after": FORWARDING.read_text().strip()}))
"""


def test_a_killed_controllers_successor_puts_back_the_sysctls_from_before_it(
    lab_requirements: None,
) -> None:
    """In a namespace whose IPv4 forwarding is off, a controller killed after install()
    leaves it on; the next one, finding it on, still turns it off at its remove(): the
    value from before was in the tunnel device's alias."""
    needs("vxlan")
    forwarding = "/proc/sys/net/ipv4/conf/all/forwarding"
    with namespace(f"ank-{secrets.token_hex(3)}") as name:
        run = ["ip", "netns", "exec", name]
        subprocess.run([*run, "sh", "-c", f"echo 0 > {forwarding}"], check=True)
        argv = [*run, sys.executable, "-c", KERNEL, "kill"]
        killed = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert killed.returncode == -9, killed.stderr
        left = subprocess.run([*run, "cat", forwarding], capture_output=True, text=True, check=True)
        assert left.stdout.strip() == "1"
        seen = json.loads(python_in(name, KERNEL, "remove").stdout)
    assert "net/ipv4/conf/all/forwarding=0" in seen["alias"].split(), seen
    assert (seen["during"], seen["after"]) == ("1", "0"), seen


# ---------------------------------------------------------------- one device, every peer

NODE_SETUP = r"""
import json, sys
from ipaddress import IPv4Address, IPv4Network
from announcer.forwarding.kernel import NetKernel
from announcer.forwarding.settings import ForwardingSettings

underlay, tunnel, routes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kernel = NetKernel(ForwardingSettings(underlay=IPv4Address(underlay), tunnel=tunnel))
problems = [m for m in kernel.missing() if "CAP_NET_ADMIN" not in m]
assert not problems, problems
kernel.install([IPv4Network("192.0.2.0/24")])
kernel.route({IPv4Network(p): IPv4Address(gw) for p, gw in routes.items()})
"""

SERVER = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], 9000))
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    conn, _ = srv.accept()
    with conn:
        got = b""
        while len(got) < 65536:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        conn.sendall(got[::-1])
"""

CLIENT = r"""
import os, socket, sys
source, target, mark = sys.argv[1], sys.argv[2], int(sys.argv[3], 16)
data = os.urandom(65536)
with socket.socket() as s:
    # The mark the node's nftables rule would give a forwarded packet: the fwmark rule
    # then sends it through the tunnel (nothing else routes to 192.0.2.0/24 here).
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect((target, 9000))
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
assert got == data[::-1], (len(got), len(data))
print("ok")
"""

NODES = {"n1": 1, "n2": 2, "n3": 3}


def underlay(node: str) -> str:
    return f"10.0.{NODES[node]}.2"


def service(node: str) -> str:
    return f"192.0.2.{NODES[node]}"


def three_nodes(stack: ExitStack, tag: str) -> dict[str, str]:
    """A router and three nodes (underlay 10.0.N.2, MTU 1600 so that full-size packets
    fit encapsulated); each node holds its own service address 192.0.2.N on lo, which
    the router does not know: only a tunnel reaches it."""
    router = stack.enter_context(namespace(f"ank{tag}r"))
    subprocess.run(
        ["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
    )
    names = {}
    for node, n in NODES.items():
        ns = names[node] = stack.enter_context(namespace(f"ank{tag}{node}"))
        inside, outside = f"ank{tag}{n}a", f"ank{tag}{n}b"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                inside,
                "mtu",
                "1600",
                "type",
                "veth",
                "peer",
                outside,
                "mtu",
                "1600",
            ],
            check=True,
        )
        subprocess.run(["ip", "link", "set", inside, "netns", ns, "name", "eth0", "up"], check=True)
        subprocess.run(["ip", "link", "set", outside, "netns", router, "up"], check=True)
        run = [
            ["ip", "-n", router, "addr", "add", f"10.0.{n}.1/24", "dev", outside],
            ["ip", "-n", ns, "addr", "add", f"{underlay(node)}/24", "dev", "eth0"],
            ["ip", "-n", ns, "addr", "add", f"{service(node)}/32", "dev", "lo"],
            ["ip", "-n", ns, "route", "add", "default", "via", f"10.0.{n}.1"],
        ]
        for argv in run:
            subprocess.run(argv, check=True)
    return names


@pytest.mark.parametrize("tunnel", TUNNEL_TYPES)
def test_one_device_per_node_sends_to_and_takes_from_every_peer(
    lab_requirements: None, tunnel: str
) -> None:
    """With each node's device set up by NetKernel (local address, no remote), n2 and n3
    route n1's address to n1's underlay and n1 routes n2's to n2's: marked TCP from n2
    and from n3 reaches n1 (decapsulated from two remotes) and n1's reaches n2 (through
    the device n1 receives on), 64 KiB each way (full-size segments), the answers coming
    back outside the tunnel; n1's device counts what it received."""
    needs(tunnel)
    tag = secrets.token_hex(2)
    with ExitStack() as stack:
        ns = three_nodes(stack, tag)
        routes = {
            "n1": {f"{service('n2')}/32": underlay("n2")},
            "n2": {f"{service('n1')}/32": underlay("n1")},
            "n3": {f"{service('n1')}/32": underlay("n1")},
        }
        for node, table in routes.items():
            python_in(ns[node], NODE_SETUP, underlay(node), tunnel, json.dumps(table))
        for node, clients in (("n1", 2), ("n2", 1)):
            server = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns[node],
                    sys.executable,
                    "-c",
                    SERVER,
                    service(node),
                    str(clients),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            stack.callback(server.kill)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for source, target in (("n2", "n1"), ("n3", "n1"), ("n1", "n2")):
            done = python_in(ns[source], CLIENT, underlay(source), service(target), "0x414e")
            assert done.stdout.strip() == "ok", (source, target, done)
        stats = subprocess.run(
            ["ip", "-n", ns["n1"], "-s", "-j", "link", "show", "anc-fwd"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        received = json.loads(stats)[0]["stats64"]["rx"]["bytes"]
        assert received >= 2 * 65536, stats  # n2's and n3's data (packets: GRO merges them)
