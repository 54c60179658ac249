"""Drain forwarding's tunnel types (announcer/forwarding/settings.py ``TUNNELS``): VXLAN,
IPIP and GRE in the config, the netlink calls :class:`NetKernel` makes for each (on a
fake pyroute2 IPRoute, no root), what ``missing()`` says of an absent module, and peers
whose tunnel type differs from this node's (never forwarded to, logged)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, get_args

import pytest

from announcer import config as cfg
from announcer.errors import ConfigError
from announcer.forwarding import kernel, plan
from announcer.forwarding.settings import (
    TUNNEL_OVERHEAD,
    TUNNELS,
    ForwardingSettings,
    TunnelType,
)
from tests.unit import test_forwarding as base
from tests.unit.loop import Loop
from tests.unit.test_fleet_loop import FakeWorker
from tests.unit.test_forwarding import (
    FLEET,
    LATER,
    NET,
    WANTED,
    FakeKernel,
    asking,
    last,
    peer,
    view,
    write,
)

# The fixtures of test_forwarding.py: a fake fleet thread, a fake kernel, the loop.
worker, fake_kernel, loop = base.worker, base.fake_kernel, base.loop

ON = "forward_connections = true\nmax_drained = 1\n"
PEER = IPv4Address("10.0.2.2")

# ---------------------------------------------------------------- config


def test_every_tunnel_type_has_one_entry_with_its_overhead() -> None:
    """The config's choices and the table of tunnel types are the same set; the
    overheads are VXLAN 50, IPIP 20, GRE 24 bytes."""
    assert set(get_args(TunnelType)) == set(TUNNELS)
    assert TUNNEL_OVERHEAD == {"vxlan": 50, "ipip": 20, "gre": 24}


@pytest.mark.parametrize("tunnel", ["ipip", "gre"])
def test_ipip_and_gre_are_accepted(tmp_path: Path, tunnel: str) -> None:
    """tunnel = "ipip" or "gre" loads, the rest of [forwarding] at its defaults."""
    top = FLEET + f'[forwarding]\nunderlay = "10.0.1.2"\ntunnel = "{tunnel}"\n'
    fwd = cfg.load(write(tmp_path, top, ON)).settings.forwarding
    assert fwd is not None and (fwd.tunnel, fwd.mtu, fwd.device) == (tunnel, 1500, "anc-fwd")


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ('tunnel = "fou"\n', "forwarding.tunnel: "),
        (
            'tunnel = "gre"\nvni = 7\n',
            'forwarding: vni: only for tunnel = "vxlan" (tunnel is "gre")',
        ),
        (
            'tunnel = "ipip"\nport = 4790\nvni = 7\n',
            'forwarding: port, vni: only for tunnel = "vxlan" (tunnel is "ipip")',
        ),
    ],
    ids=["unknown-type", "vni-with-gre", "port-and-vni-with-ipip"],
)
def test_a_wrong_tunnel_setting_is_named(tmp_path: Path, lines: str, why: str) -> None:
    """An unknown tunnel type, or VXLAN's vni/port given with another type (they would
    do nothing), is refused naming the file and the field."""
    path = write(tmp_path, FLEET + '[forwarding]\nunderlay = "10.0.1.2"\n' + lines, ON)
    with pytest.raises(ConfigError) as err:
        cfg.load(path)
    assert any(p.startswith(f"{path}: ") and why in p for p in err.value.problems), err.value


# ---------------------------------------------------------------- kernel calls


@dataclass
class FakeIPRoute:
    """pyroute2's IPRoute as NetKernel uses it: records every call by name."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    links: dict[str, int] = field(default_factory=dict)
    kinds: dict[int, str | None] = field(default_factory=dict)
    aliases: dict[int, str] = field(default_factory=dict)
    proc: Path | None = None
    """Where the kernel under test keeps its sysctls: each alias set records them here."""
    sysctls_at_alias: list[dict[str, str]] = field(default_factory=list)

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.links[ifname]] if ifname in self.links else []

    def link(self, command: str, **kw: Any) -> None:
        self.calls.append(("link", (command,), kw))
        if command == "add":
            self.links[kw["ifname"]] = 7
            self.kinds[7] = kw["kind"]
        elif command == "del":
            self.links.clear()
            self.aliases.pop(kw["index"], None)
        elif "ifalias" in kw:
            self.aliases[kw["index"]] = kw["ifalias"]
            if self.proc is not None:
                self.sysctls_at_alias.append(sysctls(self.proc))

    def get_links(self, index: int) -> list[Any]:
        kind = self.kinds[index]
        info = None if kind is None else Attrs({"IFLA_INFO_KIND": kind})
        return [Attrs({"IFLA_LINKINFO": info, "IFLA_IFALIAS": self.aliases.get(index)})]

    def get_routes(self, **kw: Any) -> list[Any]:
        return []

    def get_rules(self, **kw: Any) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        # route, rule, fdb, neigh, flush_routes: recorded, nothing returned.
        return lambda *args, **kw: self.calls.append((name, args, kw))

    def named(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, kw) for n, a, kw in self.calls if n == name]


FORWARDING, LOOSE = "net/ipv4/conf/all/forwarding", "net/netfilter/nf_conntrack_tcp_loose"


def sysctls(proc: Path) -> dict[str, str]:
    """Every sysctl file under a fake /proc, by key."""
    root = proc / "sys"
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


@dataclass
class Attrs:
    """A netlink message as NetKernel reads it: get_attr(name) and nothing else."""

    attrs: dict[str, Any]

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def net_kernel(
    monkeypatch: pytest.MonkeyPatch, tunnel: str
) -> tuple[kernel.NetKernel, FakeIPRoute]:
    ipr = FakeIPRoute()
    settings = ForwardingSettings.model_validate({"underlay": "10.0.1.2", "tunnel": tunnel})
    k = kernel.NetKernel(settings)
    monkeypatch.setattr(k, "_ipr", lambda: ipr)
    monkeypatch.setattr(k, "_nft", lambda text: None)
    monkeypatch.setattr(k, "_set", lambda key, value, save=True: None)
    return k, ipr


@pytest.mark.parametrize(
    ("tunnel", "device"),
    [
        (
            "vxlan",
            {
                "kind": "vxlan",
                "vxlan_id": 4242,
                "vxlan_local": "10.0.1.2",
                "vxlan_port": 4789,
                "vxlan_learning": 0,
                "address": "02:a5:0a:00:01:02",
            },
        ),
        ("ipip", {"kind": "ipip", "ipip_local": "10.0.1.2"}),
        ("gre", {"kind": "gre", "gre_local": "10.0.1.2"}),
    ],
)
def test_the_device_has_a_local_end_and_no_remote(
    monkeypatch: pytest.MonkeyPatch, tunnel: str, device: dict[str, Any]
) -> None:
    """install() creates one device of the tunnel's kind, with the underlay address as
    its local end, the configured MTU and no remote (one device serves every peer)."""
    k, ipr = net_kernel(monkeypatch, tunnel)
    k.install([NET])
    added = [kw for (command,), kw in ipr.named("link") if command == "add"]
    assert added == [{"ifname": "anc-fwd", "mtu": 1500, **device}]
    assert not any("remote" in key for key in added[0])


@pytest.mark.parametrize(
    ("left", "created"),
    [("vxlan", False), ("ipip", True), ("gre", True)],
)
def test_a_device_left_behind_is_kept_only_if_of_the_configured_kind(
    monkeypatch: pytest.MonkeyPatch, left: str, created: bool
) -> None:
    """A tunnel device of the same name left by a killed controller is reused if it has
    the configured kind (vxlan here) and replaced otherwise (the tunnel type changed
    meanwhile: the old kind cannot reach the peers)."""
    k, ipr = net_kernel(monkeypatch, "vxlan")
    ipr.links["anc-fwd"], ipr.kinds[3] = 3, left
    k.install([NET])
    commands = [(command, kw.get("index")) for (command,), kw in ipr.named("link")]
    changes = [c for c in commands if c[0] in ("add", "del")]
    assert changes == ([("del", 3), ("add", None)] if created else [])


def test_a_device_of_that_name_that_is_no_tunnel_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device named like the tunnel that is no tunnel at all (not ours) is neither
    used nor deleted: install() refuses, naming it."""
    k, ipr = net_kernel(monkeypatch, "gre")
    ipr.links["anc-fwd"], ipr.kinds[3] = 3, None
    with pytest.raises(kernel.KernelError, match="anc-fwd: exists and is not a tunnel"):
        k.install([NET])
    assert ipr.named("link") == []


@pytest.mark.parametrize(
    ("tunnel", "entries"),
    [
        (
            "vxlan",
            [
                (
                    "fdb",
                    ("append",),
                    {"ifindex": 7, "lladdr": "02:a5:0a:00:02:02", "dst": str(PEER)},
                ),
                (
                    "neigh",
                    ("replace",),
                    {
                        "dst": str(PEER),
                        "lladdr": "02:a5:0a:00:02:02",
                        "ifindex": 7,
                        "state": "permanent",
                    },
                ),
            ],
        ),
        ("ipip", []),
        (
            "gre",
            [
                (
                    "neigh",
                    ("replace",),
                    {"dst": str(PEER), "lladdr": str(PEER), "ifindex": 7, "state": "permanent"},
                )
            ],
        ),
    ],
)
def test_a_route_to_a_peer_goes_through_its_gateway(
    monkeypatch: pytest.MonkeyPatch, tunnel: str, entries: list[Any]
) -> None:
    """route(): the prefix goes via the peer's underlay address, onlink, through the
    device in table 4140 for every type; the peer's own entries differ: VXLAN its tunnel
    MAC (fdb and neighbour), GRE a neighbour whose link-layer address is the underlay
    address (ipgre_header's outer destination), IPIP none (ip_tunnel_xmit takes the
    route's gateway); they go when the peer is no longer routed to."""
    k, ipr = net_kernel(monkeypatch, tunnel)
    k.install([NET])
    k.route({NET: PEER})
    replaced = [kw for (command, *_), kw in ipr.named("route") if command == "replace"]
    assert replaced == [
        {"dst": str(NET), "gateway": str(PEER), "oif": 7, "table": 4140, "flags": 4}
    ]
    assert [(n, a, kw) for n, a, kw in ipr.calls if n in ("fdb", "neigh")] == entries
    before = len(ipr.calls)
    k.route({})
    gone = [name for name, *_ in ipr.calls[before:] if name in ("fdb", "neigh")]
    assert gone == [name for name, *_ in reversed(entries)]


@pytest.mark.parametrize(
    ("tunnel", "module"), [("vxlan", "vxlan"), ("ipip", "ipip"), ("gre", "ip_gre")]
)
def test_missing_names_the_tunnels_kernel_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tunnel: str, module: str
) -> None:
    """missing() names the module of the configured tunnel type when the kernel has it
    neither loaded nor installed, and says nothing of the other types' modules."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("CapEff:\t0000000000001000\n")
    monkeypatch.setattr(kernel, "nftables_module", object)  # importable
    monkeypatch.setattr(kernel, "_module_available", lambda name: name != module)
    settings = ForwardingSettings.model_validate({"underlay": "10.0.1.2", "tunnel": tunnel})
    assert kernel.NetKernel(settings, proc=tmp_path).missing() == [
        f'kernel module {module}: neither loaded nor installed (tunnel = "{tunnel}")'
    ]
    monkeypatch.setattr(kernel, "_module_available", lambda name: True)
    assert kernel.NetKernel(settings, proc=tmp_path).missing() == []


# ---------------------------------------------------------------- sysctls across a kill


def proc_kernel(
    monkeypatch: pytest.MonkeyPatch, proc: Path, ipr: FakeIPRoute, **values: str
) -> kernel.NetKernel:
    """A NetKernel whose sysctls are files under ``proc`` (set to ``values`` the first
    time: forwarding, loose), on the fake ``ipr``."""
    for key, value in ((FORWARDING, values.get("forwarding")), (LOOSE, values.get("loose"))):
        path = proc / "sys" / key
        if value is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)
    (proc / "sys" / "net/ipv4/conf/anc-fwd").mkdir(parents=True, exist_ok=True)
    (proc / "sys" / "net/ipv4/conf/anc-fwd/rp_filter").write_text("1")
    ipr.proc = proc
    settings = ForwardingSettings.model_validate({"underlay": "10.0.1.2", "tunnel": "vxlan"})
    k = kernel.NetKernel(settings, proc=proc)
    monkeypatch.setattr(k, "_ipr", lambda: ipr)
    monkeypatch.setattr(k, "_nft", lambda text: None)
    return k


def test_the_values_from_before_are_in_the_alias_before_any_sysctl_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """install() writes each sysctl's value from before into the tunnel device's alias
    while the sysctls still hold it, then sets them; remove() puts them back."""
    ipr = FakeIPRoute()
    k = proc_kernel(monkeypatch, tmp_path, ipr, forwarding="0", loose="1")
    k.install([NET])
    assert ipr.sysctls_at_alias[0][FORWARDING] == "0"
    assert ipr.sysctls_at_alias[0][LOOSE] == "1"
    assert ipr.aliases[7].split() == [kernel.ALIAS_TAG, f"{LOOSE}=1", f"{FORWARDING}=0"]
    assert (sysctls(tmp_path)[FORWARDING], sysctls(tmp_path)[LOOSE]) == ("1", "0")
    k.remove()
    assert (sysctls(tmp_path)[FORWARDING], sysctls(tmp_path)[LOOSE]) == ("0", "1")


def test_after_a_killed_controller_the_values_from_before_it_come_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A controller killed after install() leaves forwarding at 1 and the device with its
    alias; the next one finds 1 but puts back the 0 from the alias at its remove()."""
    ipr = FakeIPRoute()
    proc_kernel(monkeypatch, tmp_path, ipr, forwarding="0", loose="1").install([NET])
    again = proc_kernel(monkeypatch, tmp_path, ipr)  # the sysctls as the first one left them
    assert sysctls(tmp_path)[FORWARDING] == "1"
    again.install([NET])
    assert ipr.aliases[7].split()[1:] == [f"{LOOSE}=1", f"{FORWARDING}=0"]
    again.remove()
    assert (sysctls(tmp_path)[FORWARDING], sysctls(tmp_path)[LOOSE]) == ("0", "1")


def test_values_already_as_wanted_are_left_as_they_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A node that forwarded before the controller (forwarding 1) keeps forwarding after
    its remove(), killed in between or not."""
    ipr = FakeIPRoute()
    proc_kernel(monkeypatch, tmp_path, ipr, forwarding="1", loose="0").install([NET])
    assert ipr.aliases[7] == kernel.ALIAS_TAG
    again = proc_kernel(monkeypatch, tmp_path, ipr)
    again.install([NET])
    again.remove()
    assert (sysctls(tmp_path)[FORWARDING], sysctls(tmp_path)[LOOSE]) == ("1", "0")


@pytest.mark.parametrize(
    "alias",
    [
        "description of someone else's device net/ipv4/conf/all/forwarding=0",
        f"{kernel.ALIAS_TAG} net/ipv4/conf/all/rp_filter=1 ../../x=1 {FORWARDING}=abc",
        f"{kernel.ALIAS_TAG} {FORWARDING}=1000000",
    ],
)
def test_an_alias_is_read_only_for_its_own_keys_and_numbers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, alias: str
) -> None:
    """An alias without the tag, with other keys or with values that are not small numbers
    is not taken: remove() then writes no file but those it changed itself, and nothing
    it read there (the alias of a device is anyone's to set)."""
    ipr = FakeIPRoute()
    ipr.links["anc-fwd"], ipr.kinds[3], ipr.aliases[3] = 3, "vxlan", alias
    k = proc_kernel(monkeypatch, tmp_path, ipr, forwarding="1", loose="1")
    before = sysctls(tmp_path)
    k.install([NET])
    assert ipr.aliases[3].split() == [kernel.ALIAS_TAG, f"{LOOSE}=1"]
    k.remove()
    assert sysctls(tmp_path) == before | {"net/ipv4/conf/anc-fwd/rp_filter": "0"}


# ---------------------------------------------------------------- peers of another type


@pytest.mark.parametrize(
    ("theirs", "ours", "chosen"),
    [
        ("", "vxlan", True),
        ("vxlan", "vxlan", True),
        ("ipip", "ipip", True),
        ("ipip", "vxlan", False),
        ("", "gre", False),
    ],
    ids=["legacy-is-vxlan", "same", "same-ipip", "ipip-vs-vxlan", "legacy-vs-gre"],
)
def test_a_draining_peer_with_another_tunnel_is_not_chosen_but_named(
    theirs: str, ours: str, chosen: bool
) -> None:
    """A peer asking for its packets gets them only if its tunnel type is this node's (a
    record without one is VXLAN, the only type before); otherwise mismatched() names it
    with its type, so that the daemon says why nothing is forwarded."""
    record = dataclasses.replace(asking("n2"), tunnel=theirs)
    records = {"web": {"n2": record}}
    got = plan.targets("n1", WANTED, records, 0.0, ours)
    odd = plan.mismatched(plan.asking("n1", WANTED, records, 0.0), ours)
    assert ("web" in got) is chosen
    assert odd == ({} if chosen else {"web": (("n2", theirs or "vxlan"),)})


def test_the_record_carries_the_tunnel_and_a_peer_of_another_type_is_logged_once(
    loop: Loop, fake_kernel: FakeKernel, worker: FakeWorker
) -> None:
    """The node's record says its tunnel type; a draining peer with another type gets
    no route (the view sets an empty table) and one error line, not one per view."""
    assert last(worker).tunnel == "vxlan"
    draining = {"underlay": "10.0.2.2", "forward_until": LATER, "drained": True}
    view(loop, peer("n2", connections=4, tunnel="ipip", **draining))
    view(loop, peer("n2", connections=4, tunnel="ipip", **draining))
    assert fake_kernel.routed == [{}]
    text = loop.log.getvalue()
    line = "event=forwarding_tunnel_mismatch service=web node=n2 tunnel=ipip ours=vxlan"
    assert text.count(line) == 1, text
