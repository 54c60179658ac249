"""Drain forwarding's kernel side (announcer/forwarding/kernel.py ``NetKernel``) against
the real kernel, in a network namespace of its own (no lab around it): what a reload
changes. The prefixes' update replaces the nftables set and leaves the rest of the
standing part as it was: the tunnel device (same index), the policy rules, the route to
a draining peer."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.lab

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

kernel = NetKernel(ForwardingSettings(underlay=IPv4Address("10.0.1.2")))
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


def run_in_namespace() -> dict[str, Any]:
    name = f"ank-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c", IN_NAMESPACE],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_an_update_of_the_prefixes_replaces_the_set_and_nothing_else(
    lab_requirements: None,
) -> None:
    """After install and a route to a peer, update() leaves the set holding the new
    prefixes and its marking rule in place, while the tunnel device, the policy rules
    and the forwarding table's route are untouched; remove() then takes it all away."""
    try:
        import nftables  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        pytest.skip("needs libnftables' Python binding (apt-get install python3-nftables)")
    seen = run_in_namespace()
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
