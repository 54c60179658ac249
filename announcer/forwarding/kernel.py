"""The kernel's side of drain forwarding, behind :class:`Kernel` (tests use a fake).

The standing part (:meth:`NetKernel.install`), present from start to stop:

- an nftables table (libnftables' Python binding, Debian's ``python3-nftables``): its
  ``ct state`` match turns connection tracking on in this network namespace, so the
  node knows its own connections before any drain; the rule marks non-SYN TCP packets
  to the prefixes that conntrack does not know (INVALID, with
  ``nf_conntrack_tcp_loose = 0``: no mid-stream pick-up). Packets that came out of the
  tunnel are never marked (no loops);
- a fwmark rule ahead of the ``local`` table (whose rule moves from priority 0 to
  ``local_priority``): the anycast address is local on every node, so without this a
  marked packet would be delivered here and answered with a reset;
- the tunnel device (``tunnel``: the kinds and their options are
  :data:`~announcer.forwarding.settings.TUNNELS`), with the underlay address as its local
  end and no remote, so that one device serves every peer: a VXLAN device with a MAC
  derived from the underlay address so that peers know it without asking, or an NBMA
  IPIP or GRE device whose outer destination is each route's gateway; reverse-path
  filtering off on it (the decapsulated packets' sources are reached through the
  uplink, not the tunnel);
- IPv4 forwarding on (the marked packets are routed out of the tunnel).

The sysctls it changes (:data:`SYSCTLS`) are put back at :meth:`NetKernel.remove`. Their
values from before are written first into the tunnel device's alias (``ip link show``
prints it), so that a controller killed before its remove does not lose them: the next
one reads them there and puts those back, not the values it found.

Until the first :meth:`NetKernel.route`, the forwarding table holds blackhole routes for
the prefixes (a node starting does not know yet who drains). The moving part
(:meth:`NetKernel.route`): the routes of the forwarding table, one per prefix, through
the tunnel to the draining peer's underlay address (with VXLAN an fdb entry and a
permanent neighbour entry per peer, with GRE a permanent neighbour entry). An empty
table lets marked packets fall through to the ``local`` table: they are then delivered
here, as without forwarding.

A reload that changes the forwarding services' prefixes replaces the nftables table
alone (:meth:`NetKernel.update`, one transaction); the rest stays as installed.

All netlink through pyroute2; nothing here runs ``nft`` or ``ip``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol

from announcer.forwarding.settings import TUNNELS, ForwardingSettings, tunnel_mac

NFT_TABLE = "announcer_forward"
LOCAL_TABLE = 255
CAP_NET_ADMIN = 12
PROC = Path("/proc")
RTNH_F_ONLINK = 4
SYSCTLS: dict[str, str] = {
    "net/netfilter/nf_conntrack_tcp_loose": "0",
    "net/ipv4/conf/all/forwarding": "1",
}
"""The sysctls the standing part sets, and to what; each put back at removal."""
ALIAS_TAG = "announcer-sysctls"
"""The first word of the tunnel device's alias that holds the sysctls' values from before."""


class KernelError(Exception):
    """The kernel refused part of the set-up; the message says which part and why."""


class Kernel(Protocol):
    def missing(self) -> list[str]:
        """What stops forwarding from working here (empty: nothing known)."""
        ...

    def install(self, prefixes: Sequence[IPv4Network]) -> None:
        """Set up (or update) the standing part. Raises KernelError."""
        ...

    def update(self, prefixes: Sequence[IPv4Network]) -> None:
        """Mark packets for ``prefixes`` instead, the rest of the installed standing part
        left as it is. Raises KernelError."""
        ...

    def route(self, routes: Mapping[IPv4Network, IPv4Address]) -> None:
        """Make the forwarding table hold exactly ``routes``. Raises KernelError."""
        ...

    def remove(self) -> None:
        """Undo everything :meth:`install` and :meth:`route` did (best effort, never raises)."""
        ...


def nft_ruleset(settings: ForwardingSettings, prefixes: Sequence[IPv4Network]) -> str:
    """The table, replaced as a whole in one transaction (add, flush, then fill)."""
    elements = ", ".join(str(p) for p in prefixes) or "0.0.0.0/32"
    return f"""
add table ip {NFT_TABLE}
flush table ip {NFT_TABLE}
table ip {NFT_TABLE} {{
    set prefixes {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}
    chain prerouting {{
        type filter hook prerouting priority mangle; policy accept;
        iifname "{settings.device}" return
        ip daddr @prefixes tcp flags & syn == 0 ct state invalid meta mark set {settings.mark:#x}
    }}
}}
"""


def has_net_admin(proc: Path = PROC) -> bool | None:
    """CAP_NET_ADMIN in this process's effective set (None: cannot tell)."""
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        return None
    return None


def nftables_module() -> Any:
    """libnftables' binding, or None. Debian's python3-nftables lives in dist-packages,
    outside the virtual environment unless the bootstrap put it in (scripts/bootstrap.sh)."""
    try:
        import nftables  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    return nftables


class NetKernel:
    """The real kernel: libnftables and pyroute2, in this process's network namespace."""

    def __init__(self, settings: ForwardingSettings, proc: Path = PROC) -> None:
        self.settings, self.proc = settings, proc
        self._saved: dict[str, str] = {}
        """Sysctls changed, with the value they had (restored at :meth:`remove`)."""
        self._peers: set[IPv4Address] = set()
        self._installed = False

    # ------------------------------------------------------------ what is missing

    def missing(self) -> list[str]:
        out = []
        if has_net_admin(self.proc) is False:
            out.append("CAP_NET_ADMIN: not in this process's capabilities (see docs/drain.md)")
        if nftables_module() is None:
            out.append(
                "libnftables' Python binding: not importable (apt-get install python3-nftables)"
            )
        tunnel = TUNNELS[self.settings.tunnel]
        if not _module_available(tunnel.module):
            out.append(
                f"kernel module {tunnel.module}: neither loaded nor installed "
                f'(tunnel = "{self.settings.tunnel}")'
            )
        if self._sysctl("net/ipv4/conf/all/rp_filter") == "1":
            out.append(
                "net.ipv4.conf.all.rp_filter is 1 (strict): it overrides the tunnel's 0 and "
                "drops the decapsulated packets; set it to 2 (loose)"
            )
        return out

    # ------------------------------------------------------------ the standing part

    def install(self, prefixes: Sequence[IPv4Network]) -> None:
        # nf_conntrack_tcp_loose appears with nf_conntrack, loaded by the table's ct match.
        self._nft(nft_ruleset(self.settings, prefixes))
        with self._ipr() as ipr:
            left = self._recall(ipr)  # before _device, which may replace the device
            index = self._device(ipr)
            self._keep_sysctls(ipr, index, left)
            self._set(f"net/ipv4/conf/{self.settings.device}/rp_filter", "0")
            self._hold(ipr, prefixes)
            self._rules(ipr)
            ipr.link("set", index=index, state="up")
        self._installed = True

    def update(self, prefixes: Sequence[IPv4Network]) -> None:
        # The table is replaced in one nftables transaction: packets meet the old rule or
        # the new one, never none; conntrack's entries and the rest stay (no flap).
        self._nft(nft_ruleset(self.settings, prefixes))

    def _hold(self, ipr: Any, prefixes: Sequence[IPv4Network]) -> None:
        """Blackhole routes in the forwarding table until the first :meth:`route`: a node
        (re)starting while a peer drains does not know yet where that peer is, and a
        dropped packet is sent again by the client where a reset would end it. Routes
        already there (a controller that was killed left them) stay."""
        present = {
            _dst(r) for r in ipr.get_routes(family=socket.AF_INET, table=self.settings.table)
        }
        for prefix in prefixes:
            if prefix not in present:
                try:
                    ipr.route("add", dst=str(prefix), table=self.settings.table, type="blackhole")
                except Exception as err:
                    raise KernelError(
                        f"forwarding table {self.settings.table}: {_why(err)}"
                    ) from err

    def _recall(self, ipr: Any) -> dict[str, str]:
        """The sysctls' values from before, as a killed controller left them in the alias
        of the tunnel device (empty: no such device, or no such alias). Only keys of
        :data:`SYSCTLS` with a number for a value: the alias is not trusted further."""
        found = ipr.link_lookup(ifname=self.settings.device)
        alias = ipr.get_links(int(found[0]))[0].get_attr("IFLA_IFALIAS") if found else None
        words = str(alias or "").split()
        if words[:1] != [ALIAS_TAG]:
            return {}
        pairs = (word.partition("=") for word in words[1:])
        return {k: v for k, _, v in pairs if k in SYSCTLS and v.isdigit() and len(v) <= 3}

    def _keep_sysctls(self, ipr: Any, index: int, left: Mapping[str, str]) -> None:
        """Note each sysctl's value from before (``left`` behind by a killed controller,
        else the one found), write them to the device's alias, and only then set them."""
        for key, value in SYSCTLS.items():
            old = left.get(key) or self._sysctl(key)
            if old is not None and old != value:
                self._saved.setdefault(key, old)
        alias = " ".join([ALIAS_TAG, *(f"{k}={v}" for k, v in self._saved.items())])
        try:
            ipr.link("set", index=index, ifalias=alias)
        except Exception as err:
            raise KernelError(f"tunnel device {self.settings.device}: {_why(err)}") from err
        for key, value in SYSCTLS.items():
            self._set(key, value)

    def _device(self, ipr: Any) -> int:
        s, tunnel = self.settings, TUNNELS[self.settings.tunnel]
        found = ipr.link_lookup(ifname=s.device)
        kind = _kind(ipr, int(found[0])) if found else None
        if found and kind == tunnel.kind:
            return int(found[0])
        if found and kind not in {t.kind for t in TUNNELS.values()}:
            raise KernelError(f"tunnel device {s.device}: exists and is not a tunnel ({kind})")
        try:
            if found:  # left by a killed controller with another tunnel type: replace it
                ipr.link("del", index=int(found[0]))
            ipr.link("add", ifname=s.device, kind=tunnel.kind, mtu=s.mtu, **tunnel.options(s))
        except Exception as err:
            raise KernelError(f"tunnel device {s.device} ({tunnel.kind}): {_why(err)}") from err
        return int(ipr.link_lookup(ifname=s.device)[0])

    def _rules(self, ipr: Any) -> None:
        s = self.settings
        rules = [_rule(r) for r in ipr.get_rules(family=socket.AF_INET)]
        try:
            if (s.local_priority, LOCAL_TABLE, None) not in rules:
                ipr.rule("add", family=socket.AF_INET, table=LOCAL_TABLE, priority=s.local_priority)
            if (s.rule_priority, s.table, s.mark) not in rules:
                ipr.rule(
                    "add",
                    family=socket.AF_INET,
                    table=s.table,
                    priority=s.rule_priority,
                    fwmark=s.mark,
                )
            if (0, LOCAL_TABLE, None) in rules:
                ipr.rule("del", family=socket.AF_INET, table=LOCAL_TABLE, priority=0)
        except Exception as err:
            raise KernelError(f"policy rules: {_why(err)}") from err

    # ------------------------------------------------------------ the moving part

    def route(self, routes: Mapping[IPv4Network, IPv4Address]) -> None:
        s = self.settings
        try:
            with self._ipr() as ipr:
                index = int(ipr.link_lookup(ifname=s.device)[0])
                for peer in set(routes.values()) - self._peers:
                    self._learn(ipr, index, peer)
                    self._peers.add(peer)
                present = {_dst(r) for r in ipr.get_routes(family=socket.AF_INET, table=s.table)}
                for prefix, peer in routes.items():
                    ipr.route(
                        "replace",
                        dst=str(prefix),
                        gateway=str(peer),
                        oif=index,
                        table=s.table,
                        flags=RTNH_F_ONLINK,
                    )
                for gone in present - set(routes):
                    if gone is not None:
                        ipr.route("del", dst=str(gone), table=s.table)
                for peer in self._peers - set(routes.values()):
                    self._forget(ipr, index, peer)
        except KernelError:
            raise
        except Exception as err:
            raise KernelError(f"forwarding routes: {_why(err)}") from err

    def _learn(self, ipr: Any, index: int, peer: IPv4Address) -> None:
        """The peer's entries on the device, if its tunnel type needs any (TUNNELS)."""
        tunnel = TUNNELS[self.settings.tunnel]
        if tunnel.neighbour is None:
            return
        if tunnel.fdb:
            with contextlib.suppress(Exception):  # already there
                ipr.fdb("append", ifindex=index, lladdr=tunnel_mac(peer), dst=str(peer))
        lladdr = tunnel.neighbour(peer)
        ipr.neigh("replace", dst=str(peer), lladdr=lladdr, ifindex=index, state="permanent")

    def _forget(self, ipr: Any, index: int, peer: IPv4Address) -> None:
        self._peers.discard(peer)
        tunnel = TUNNELS[self.settings.tunnel]
        if tunnel.neighbour is None:
            return
        with contextlib.suppress(Exception):
            ipr.neigh("del", dst=str(peer), ifindex=index)
        if tunnel.fdb:
            with contextlib.suppress(Exception):
                ipr.fdb("del", ifindex=index, lladdr=tunnel_mac(peer), dst=str(peer))

    # ------------------------------------------------------------ removal

    def remove(self) -> None:
        s = self.settings
        with contextlib.suppress(Exception):
            self._nft(f"delete table ip {NFT_TABLE}")
        # The sysctls back while the device still holds their values from before: a
        # controller killed before the device goes finds them there.
        self._restore_sysctls()
        with contextlib.suppress(Exception), self._ipr() as ipr:
            rules = [_rule(r) for r in ipr.get_rules(family=socket.AF_INET)]
            if (0, LOCAL_TABLE, None) not in rules:  # the local table back first, then ours go
                ipr.rule("add", family=socket.AF_INET, table=LOCAL_TABLE, priority=0)
            for priority, table in ((s.local_priority, LOCAL_TABLE), (s.rule_priority, s.table)):
                with contextlib.suppress(Exception):
                    ipr.rule("del", family=socket.AF_INET, table=table, priority=priority)
            with contextlib.suppress(Exception):
                ipr.flush_routes(table=s.table)
            for index in ipr.link_lookup(ifname=s.device):
                ipr.link("del", index=index)
        self._peers.clear()
        self._installed = False

    # ------------------------------------------------------------ helpers

    def _ipr(self) -> Any:
        from announcer.netlink import iproute

        return iproute()

    def _nft(self, text: str) -> None:
        module = nftables_module()
        if module is None:
            raise KernelError("nftables: libnftables' Python binding is not importable")
        nft = module.Nftables()
        rc, _, err = nft.cmd(text)
        if rc != 0:
            raise KernelError(f"nftables: {err.strip() or f'error {rc}'}")

    def _sysctl(self, key: str) -> str | None:
        try:
            return (self.proc / "sys" / key).read_text().strip()
        except OSError:
            return None

    def _set(self, key: str, value: str) -> None:
        if self._sysctl(key) == value:
            return
        try:
            (self.proc / "sys" / key).write_text(value)
        except OSError as err:
            raise KernelError(f"sysctl {key.replace('/', '.')}: {err.strerror or err}") from err

    def _restore_sysctls(self) -> None:
        for key, value in self._saved.items():
            with contextlib.suppress(OSError):
                (self.proc / "sys" / key).write_text(value)
        self._saved.clear()


def _dst(r: Any) -> IPv4Network | None:
    """The destination of a route message (None: the default route)."""
    dst = r.get_attr("RTA_DST")
    return None if dst is None else IPv4Network(f"{dst}/{r['dst_len']}")


def _kind(ipr: Any, index: int) -> str | None:
    """The link kind of device ``index`` (vxlan, ipip, gre...; None: a plain device)."""
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def _rule(r: Any) -> tuple[int, int, int | None]:
    """(priority, table, fwmark) of a policy rule (priority 0 comes without its attribute)."""
    table = r.get_attr("FRA_TABLE") or r.get("table")
    return (r.get_attr("FRA_PRIORITY") or 0, table, r.get_attr("FRA_FWMARK"))


def _module_available(module: str) -> bool:
    """Loaded, compiled in, or installed for the kernel to load on first use."""
    if Path("/sys/module", module).exists():
        return True
    try:
        release = Path("/proc/sys/kernel/osrelease").read_text().strip()
    except OSError:
        return True  # cannot tell: say nothing rather than something wrong
    for index in ("modules.builtin", "modules.dep"):
        with contextlib.suppress(OSError):
            if f"/{module}.ko" in Path("/lib/modules", release, index).read_text():
                return True
    return False


def _why(err: BaseException) -> str:
    code = getattr(err, "code", None)
    if isinstance(code, int) and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({err})"
    return f"{type(err).__name__}: {err}"
