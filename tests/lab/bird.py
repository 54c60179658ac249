"""BIRD 2 in the router namespace: its configuration and parsers for ``birdc`` output."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .waiting import LabError

ROUTER_AS = 65000
NODE_AS = 65001
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True)
class BgpPeer:
    """One BGP session as BIRD sees it: protocol name, neighbour address, local address."""

    protocol: str
    family: str  # "ipv4" or "ipv6"
    neighbor: str
    local: str
    peer_as: int = NODE_AS


def render_config(router_id: str, peers: list[BgpPeer], log_file: Path) -> str:
    """The router's bird.conf: kernel export with ECMP, GRACEFUL_SHUTDOWN honoured on import."""
    lines = [
        f'log "{log_file}" all;',
        f"router id {router_id};",
        "timeformat route iso long ms;",
        "timeformat protocol iso long ms;",
        "",
        "protocol device { scan time 10; }",
        "",
        "protocol kernel kernel4 {",
        "    ipv4 { import none; export where source = RTS_BGP; };",
        "    merge paths yes limit 16;",
        "}",
        "protocol kernel kernel6 {",
        "    ipv6 { import none; export where source = RTS_BGP; };",
        "    merge paths yes limit 16;",
        "}",
        "",
        "# RFC 8326 GRACEFUL_SHUTDOWN: a path tagged 65535:0 loses to any other path.",
        "filter node_import {",
        "    if (65535, 0) ~ bgp_community then bgp_local_pref = 0;",
        "    accept;",
        "}",
        "",
    ]
    for family in ("ipv4", "ipv6"):
        lines += [
            f"template bgp node_{family} {{",
            f"    local as {ROUTER_AS};",
            # an import filter that accepts is an explicit import policy (RFC 8212)
            f"    {family} {{ import filter node_import; export none; }};",
            "    hold time 3;",
            "    connect delay time 1;",
            "    connect retry time 2;",
            "    error wait time 1, 5;",
            "}",
        ]
    lines.append("")
    for peer in peers:
        lines.append(
            f"protocol bgp {peer.protocol} from node_{peer.family} {{ "
            f"local {peer.local}; neighbor {peer.neighbor} as {peer.peer_as}; }}"
        )
    return "\n".join(lines) + "\n"


NOT_FOUND = "Network not found"


def birdc(socket: Path, *args: str, timeout: float = 5.0, allow: tuple[str, ...] = ()) -> str:
    """Run one ``birdc`` command against the control socket and return its output.

    ``birdc`` exits 1 when BIRD answers with an error; errors whose text is in
    ``allow`` (e.g. :data:`NOT_FOUND`) are returned as output instead of raised.
    """
    proc = subprocess.run(
        ["birdc", "-s", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 and not any(text in proc.stdout for text in allow):
        detail = (proc.stderr or proc.stdout).strip()
        raise LabError(f"birdc {' '.join(args)} failed ({proc.returncode}): {detail}")
    return proc.stdout


@dataclass(frozen=True)
class BirdPath:
    """One path for a prefix in BIRD's table (``show route all``)."""

    prefix: str
    table: str
    protocol: str
    """BIRD protocol that learnt it, e.g. ``node1`` or ``node1_v6``."""
    since: datetime | None
    """When BIRD last changed this path (the time in brackets)."""
    primary: bool
    """BIRD's best path (``*``); ECMP is only visible in the kernel FIB."""
    preference: int
    gateway: str | None
    interface: str | None
    origin: str | None = None
    as_path: tuple[int, ...] = ()
    next_hop: tuple[str, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    attributes: dict[str, str] = field(default_factory=dict, compare=False)
    """Every ``Name: value`` line as printed."""

    @property
    def node(self) -> str:
        """The lab node this path came from (the protocol name without ``_v6``)."""
        return self.protocol.removesuffix("_v6")

    @property
    def age(self) -> float | None:
        """Seconds since :attr:`since` (BIRD prints local time)."""
        return None if self.since is None else (datetime.now() - self.since).total_seconds()

    @property
    def graceful_shutdown(self) -> bool:
        """True if the path carries GRACEFUL_SHUTDOWN (65535:0)."""
        return (65535, 0) in self.communities


_HEADER = re.compile(
    r"^(?P<net>\S+)?\s+(?P<type>\w+) \[(?P<proto>\S+) (?P<since>[^\]]*?)"
    r"(?: from (?P<from>\S+))?\] (?P<primary>\* )?\((?P<pref>\d+)(?:/[^)]*)?\)"
)
_VIA = re.compile(r"^\s+via (?P<gw>\S+) on (?P<dev>\S+)")
_DEV = re.compile(r"^\s+dev (?P<dev>\S+)")
_ATTR = re.compile(r"^\s+(?P<name>[A-Za-z][\w.]*): ?(?P<value>.*)$")
_PAIR = re.compile(r"\((\d+),\s*(\d+)\)")
_TRIPLE = re.compile(r"\((\d+),\s*(\d+),\s*(\d+)\)")


def _parse_since(text: str) -> datetime | None:
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    return None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _finish(current: dict[str, object], attrs: dict[str, str]) -> BirdPath:
    def as_int(name: str) -> int | None:
        value = attrs.get(name)
        return int(value) if value is not None and value.strip().isdigit() else None

    return BirdPath(
        prefix=str(current["prefix"]),
        table=str(current["table"]),
        protocol=str(current["protocol"]),
        since=_parse_since(str(current["since"])),
        primary=bool(current["primary"]),
        preference=int(str(current["preference"])),
        gateway=_optional_str(current.get("gateway")),
        interface=_optional_str(current.get("interface")),
        origin=attrs.get("BGP.origin"),
        as_path=tuple(int(x) for x in attrs.get("BGP.as_path", "").split() if x.isdigit()),
        next_hop=tuple(attrs.get("BGP.next_hop", "").split()),
        med=as_int("BGP.med"),
        local_pref=as_int("BGP.local_pref"),
        communities=tuple(
            (int(a), int(b)) for a, b in _PAIR.findall(attrs.get("BGP.community", ""))
        ),
        large_communities=tuple(
            (int(a), int(b), int(c))
            for a, b, c in _TRIPLE.findall(attrs.get("BGP.large_community", ""))
        ),
        attributes=dict(attrs),
    )


def parse_routes(text: str) -> list[BirdPath]:
    """Parse ``birdc show route all ...`` output into paths, in the order printed."""
    paths: list[BirdPath] = []
    table = ""
    prefix = ""
    current: dict[str, object] | None = None
    attrs: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or (line.startswith("BIRD ") and line.rstrip().endswith("ready.")):
            continue
        if line.startswith("Table "):
            if current is not None:
                paths.append(_finish(current, attrs))
                current = None
            table = line.split()[1].rstrip(":")
            continue
        header = _HEADER.match(line)
        if header:
            if current is not None:
                paths.append(_finish(current, attrs))
            prefix = header["net"] or prefix
            current = {
                "prefix": prefix,
                "table": table,
                "protocol": header["proto"],
                "since": header["since"],
                "primary": bool(header["primary"]),
                "preference": header["pref"],
            }
            attrs = {}
            continue
        if current is None:
            continue
        via = _VIA.match(line)
        if via:
            current["gateway"] = via["gw"]
            current["interface"] = via["dev"]
            continue
        dev = _DEV.match(line)
        if dev:
            current["interface"] = dev["dev"]
            continue
        attr = _ATTR.match(line)
        if attr:
            attrs[attr["name"]] = attr["value"].strip()
    if current is not None:
        paths.append(_finish(current, attrs))
    return paths


@dataclass(frozen=True)
class BirdProtocol:
    """One line of ``birdc show protocols``."""

    name: str
    proto: str
    table: str
    state: str
    since: datetime | None
    info: str

    @property
    def established(self) -> bool:
        """True for a BGP session in state Established."""
        return self.state == "up" and self.info.startswith("Established")


def parse_protocols(text: str) -> dict[str, BirdProtocol]:
    """Parse ``birdc show protocols`` (with ``timeformat protocol iso long ms``)."""
    protocols: dict[str, BirdProtocol] = {}
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 6 or tokens[0] in ("BIRD", "Name") or not re.match(r"\d{4}-", tokens[4]):
            continue
        protocols[tokens[0]] = BirdProtocol(
            name=tokens[0],
            proto=tokens[1],
            table=tokens[2],
            state=tokens[3],
            since=_parse_since(f"{tokens[4]} {tokens[5]}"),
            info=" ".join(tokens[6:]),
        )
    return protocols
