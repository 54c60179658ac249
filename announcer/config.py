"""Configuration: one main TOML file plus an optional ``conf.d/*.toml`` directory.

The main file holds the global settings, a ``[defaults]`` table for every
per-service setting, and optionally ``[[service]]`` entries; each ``conf.d``
file holds only ``[[service]]`` entries. Per service, a setting comes from the
service's own table, else from ``[defaults]``, else from the built-in default;
the attribute tables (``announce``, ``drain``, ``down``) merge key by key.

Everything is validated before anything runs. All problems found are reported
at once in one :class:`~announcer.errors.ConfigError`, one per line, each naming
the file, the service and the field::

    conf.d/web.toml: service 'web': checks[0].url: Input should be a valid URL

:func:`load` raises nothing else, whatever is in the files (a byte that is not
UTF-8, nesting too deep for the parser): the daemon reloads on SIGHUP, and an
exception escaping there would end the process.

Every config that loads is kept in ``state_dir`` (:func:`save_last_good`); a
controller started (or respawned by ExaBGP) while the operator's file does not
load runs on that copy instead (:func:`load_last_good`) rather than dying in a
loop until ExaBGP gives up and drops every route.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import grp
import ipaddress
import json
import os
import re
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from announcer.attributes import FIELDS as ATTRIBUTE_FIELDS
from announcer.attributes import U32, RouteAttributes
from announcer.attributes import table as attributes_table
from announcer.checks import CHECK_TYPES, CheckSpec
from announcer.defaults import (
    DEFAULT_CONFIG,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_MAINTENANCE_FILE,
    DEFAULT_STATE_DIR,
)
from announcer.errors import ConfigError
from announcer.fleet.settings import FleetSettings
from announcer.forwarding.settings import ForwardingSettings
from announcer.fsutil import make_dirs
from announcer.hooks import HooksSpec
from announcer.state import Dampening, OnDown, Policy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_CONTROL_SOCKET",
    "DEFAULT_MAINTENANCE_FILE",
    "DEFAULT_STATE_DIR",
    "LAST_GOOD_FILE",
    "Config",
    "ConfigError",
    "LastGood",
    "Service",
    "Settings",
    "load",
    "load_last_good",
    "save_last_good",
]


def _ranges(*items: tuple[str, str]) -> tuple[tuple[int, int, str, str], ...]:
    """(first, last, as shown, kind) of each range, compared as integers: with 50,000
    prefixes, ipaddress' overlaps() and subnet_of() doubled the time a config took to load."""
    out = []
    for text, kind in items:
        net = ipaddress.ip_network(text)
        shown = str(net.network_address) if net.num_addresses == 1 else text
        out.append((int(net.network_address), int(net.broadcast_address), shown, kind))
    return tuple(out)


# Ranges no anycast service can own: routers drop them, or worse, act on them. This
# is ipaddress' is_unspecified / is_loopback / is_link_local / is_multicast, widened
# from "inside" to "overlaps": 0.0.0.0/1 or 8000::/1 would carry 127.0.0.0/8 or
# fe80::/10 along (so does 0.0.0.0/8 the address 0.0.0.0), and no prefix that
# short belongs to one service.
_UNANNOUNCEABLE = {
    4: _ranges(
        ("0.0.0.0/32", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
    ),
    6: _ranges(
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ),
}


def _unannounceable(net: IPNetwork) -> str | None:
    """Why ``net`` must not be announced, or None."""
    first = int(net.network_address)
    last = first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)  # broadcast_address is slow
    for low, high, text, kind in _UNANNOUNCEABLE[net.version]:
        if first > high or last < low:
            continue
        if low <= first and last <= high:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{net} is {article} {kind} prefix"
        return f"{net} contains {text} ({kind})"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _attributes_base() -> type[_Model]:
    """The attribute tables' fields, made from the one definition (:mod:`announcer.attributes`):
    its types, defaults, ranges and checks; scalars strict, tuples lax (TOML arrays are lists)."""
    fields: dict[str, Any] = {}
    for f in ATTRIBUTE_FIELDS:
        spec = f.spec
        limits: dict[str, Any] = {
            k: v for k, v in (("ge", spec.ge), ("le", spec.le)) if v is not None
        }
        if not f.is_tuple:
            limits["strict"] = True
        annotation = f.type if spec.check is None else Annotated[f.type, AfterValidator(spec.check)]
        fields[f.name] = (annotation, Field(default=f.default, **limits))
    return create_model("Attributes", __base__=_Model, __module__=__name__, **fields)


class Attributes(_attributes_base()):  # type: ignore[misc]  # a base made at run time
    """BGP attributes for one route state. Unset fields are not sent."""

    def to_route_attributes(self) -> RouteAttributes:
        return RouteAttributes(**dict(self))


_BUILTIN = Policy(prefixes=())
_IFNAME = r"^[^/\s:]{1,15}$"  # what the kernel takes as an interface name
"""The state machine's defaults: the built-in defaults of every per-service setting."""

BUILTIN_ATTRIBUTES: dict[str, dict[str, Any]] = {
    f.name: attributes_table(getattr(_BUILTIN, f.name))
    for f in dataclasses.fields(Policy)
    if isinstance(getattr(_BUILTIN, f.name), RouteAttributes)
}
"""The attribute tables (``announce``, ``drain``, ``down``) as TOML would give them."""

_MERGED_TABLES = frozenset({*BUILTIN_ATTRIBUTES, "dampening", "hooks"})
"""Tables a service merges key by key with [defaults] rather than replacing."""

Require = Literal["all", "any"] | int


def _require(value: Any) -> Any:
    if value in ("all", "any") or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"must be 'all', 'any' or a number of checks, not {value!r}")


def _checks_list(value: Any) -> Any:
    if isinstance(value, dict):
        raise ValueError("must be a list of tables: write [[service.checks]], not [service.checks]")
    return value


_DAMPENING = Dampening()
"""The built-in dampening settings (on: :class:`Policy` itself defaults to none)."""


class DampeningSettings(_Model):
    """Flap dampening; ``changes = 0`` switches it off."""

    changes: int = Field(default=_DAMPENING.changes, ge=0, le=1000, strict=True)
    window: float = Field(default=_DAMPENING.window, gt=0, le=86400, strict=True)
    penalty: float = Field(default=_DAMPENING.penalty, gt=0, le=86400, strict=True)
    max_penalty: float = Field(default=_DAMPENING.max_penalty, gt=0, le=86400, strict=True)

    @model_validator(mode="after")
    def _order(self) -> DampeningSettings:
        if self.max_penalty < self.penalty:
            raise ValueError(f"max_penalty ({self.max_penalty}) is below penalty ({self.penalty})")
        return self

    def to_state(self) -> Dampening | None:
        if self.changes == 0:
            return None
        return Dampening(**dict(self))


class _Unset(_Model):
    """Settings a service and ``[defaults]`` spell the same way, unset (None) by default."""

    manage_addresses: str | None = Field(default=None, pattern=_IFNAME)
    """Put the host prefixes' addresses on this interface, and take them off after the
    withdraw (announcer/managed.py)."""
    # The fleet guard ([fleet]); None without one. With one, min_announcing defaults to 1
    # and on_unknown to the [fleet] table's (see _fill_fleet); max_drained None: no limit.
    min_announcing: int | None = Field(default=None, ge=0, le=127, strict=True)
    """Peers that must still announce before this node may withdraw (0: no guard). At
    most 127: the guard's etcd transaction compares that many keys and writes one, and
    etcd refuses more than 128 operations in one (its --max-txn-ops default)."""
    max_drained: int | None = Field(default=None, ge=1, le=1000, strict=True)
    """Nodes of the group that may be drained at once."""
    on_unknown: Literal["local", "hold"] | None = None
    hooks: HooksSpec | None = None
    """Commands run after a route change (announcer/hooks.py)."""


class ServiceDefaults(_Unset):
    """The ``[defaults]`` table: any per-service setting, applied to every service."""

    interval: float | None = Field(default=None, gt=0, le=3600, strict=True)
    fast_interval: float | None = Field(default=None, gt=0, le=3600, strict=True)
    timeout: float | None = Field(default=None, gt=0, le=3600, strict=True)
    rise: int | None = Field(default=None, ge=1, le=1000, strict=True)
    fall: int | None = Field(default=None, ge=1, le=1000, strict=True)
    on_down: Literal["withdraw", "lower"] | None = None
    drain_seconds: float | None = Field(default=None, ge=0, le=86400, strict=True)
    require: Require | None = None
    announce: Attributes | None = None
    drain: Attributes | None = None
    down: Attributes | None = None
    dampening: DampeningSettings | None = None
    drain_until_idle: bool | None = None
    drain_idle_threshold: int | None = Field(default=None, ge=0, strict=True)
    address_guard: bool | None = None
    forward_connections: bool | None = None

    @field_validator("require", mode="before")
    @classmethod
    def _check_require(cls, v: Any) -> Any:
        return v if v is None else _require(v)


class Service(_Unset):
    """One service: the prefixes it owns and the checks that decide them."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    prefixes: tuple[IPNetwork, ...] = Field(min_length=1)
    checks: tuple[CheckSpec, ...] = Field(min_length=1)
    require: Require = "all"
    interval: float = Field(default=1.0, gt=0, le=3600, strict=True)
    fast_interval: float = Field(default=0.25, gt=0, le=3600, strict=True)
    timeout: float | None = Field(default=None, gt=0, le=3600, strict=True)
    rise: int = Field(default=_BUILTIN.rise, ge=1, le=1000, strict=True)
    fall: int = Field(default=_BUILTIN.fall, ge=1, le=1000, strict=True)
    on_down: Literal["withdraw", "lower"] = Field(default=_BUILTIN.on_down.value)
    drain_seconds: float = Field(default=_BUILTIN.drain_seconds, ge=0, le=86400, strict=True)
    announce: Attributes = Attributes(**BUILTIN_ATTRIBUTES["announce"])
    drain: Attributes = Attributes(**BUILTIN_ATTRIBUTES["drain"])
    down: Attributes = Attributes(**BUILTIN_ATTRIBUTES["down"])
    maintenance_file: Path | None = None
    """While this file exists the service is drained (for configuration management)."""
    dampening: DampeningSettings = DampeningSettings()
    drain_until_idle: bool = False
    """Withdraw a drain early once open connections to the prefixes reach the threshold."""
    drain_idle_threshold: int = Field(default=0, ge=0, strict=True)
    address_guard: bool = _BUILTIN.guard
    """Announce a prefix only while the kernel would deliver it here (README)."""
    forward_connections: bool = False
    """Connection-preserving drain (docs/drain.md): while a peer drains this service,
    pass the packets of its established connections to it through the tunnel of
    ``[forwarding]``. Needs ``[fleet]``, ``[forwarding]`` and ``max_drained = 1``."""

    @field_validator("require", mode="before")
    @classmethod
    def _check_require(cls, v: Any) -> Any:
        return _require(v)

    @field_validator("checks", mode="before")
    @classmethod
    def _check_checks(cls, v: Any) -> Any:
        return _checks_list(v)

    @field_validator("prefixes", mode="before")
    @classmethod
    def _parse_prefixes(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        out: list[IPNetwork] = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise ValueError(f"prefixes[{i}]: must be a string like '192.0.2.10/32'")
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError as err:
                raise ValueError(f"prefixes[{i}]: {err}") from err
            if net.prefixlen == 0:
                raise ValueError(
                    f"prefixes[{i}]: {item} is a default route; refusing to announce it"
                )
            why = _unannounceable(net)
            if why is not None:
                raise ValueError(f"prefixes[{i}]: {why}; refusing to announce it")
            out.append(net)
        return out

    @field_validator("prefixes")
    @classmethod
    def _unique_prefixes(cls, v: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
        seen: set[IPNetwork] = set()
        for net in v:
            if net in seen:
                raise ValueError(f"{net} is listed twice")
            seen.add(net)
        return v

    @model_validator(mode="after")
    def _timing(self) -> Service:
        if self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout: {self.timeout}s must not exceed interval ({self.interval}s)"
            )
        if self.fast_interval > self.interval:
            raise ValueError(
                f"fast_interval: {self.fast_interval}s must not exceed interval ({self.interval}s)"
            )
        if isinstance(self.require, int) and not 1 <= self.require <= len(self.checks):
            n = len(self.checks)
            raise ValueError(
                f"require: {self.require} is more than the {n} check{'s' if n != 1 else ''} "
                "this service has (or use 'all' or 'any')"
            )
        return self

    @property
    def effective_timeout(self) -> float:
        return self.timeout if self.timeout is not None else self.interval

    @property
    def prefix_strings(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.prefixes)

    def policy(self) -> Policy:
        return Policy(
            prefixes=self.prefix_strings,
            rise=self.rise,
            fall=self.fall,
            on_down=OnDown(self.on_down),
            drain_seconds=self.drain_seconds,
            announce=self.announce.to_route_attributes(),
            drain=self.drain.to_route_attributes(),
            down=self.down.to_route_attributes(),
            dampening=self.dampening.to_state(),
            guard=self.address_guard,
            min_announcing=self.min_announcing or None,
            hold_when_unknown=self.on_unknown == "hold",
        )


class Settings(_Model):
    """Global settings: the top level of the main file."""

    neighbor: str | tuple[str, ...] = "*"
    next_hop: str = "self"
    next_hop6: str | None = None
    """Next-hop for IPv6 prefixes (default: next_hop). Set an IPv6 address when the
    IPv6 prefixes go over an IPv4 session: ExaBGP refuses ``self`` there."""
    local_as: int | None = Field(default=None, ge=1, le=U32, strict=True)
    acks: bool = True
    allowed_prefixes: tuple[IPNetwork, ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    maintenance_file: Path | None = DEFAULT_MAINTENANCE_FILE
    """While this file exists every service is drained."""
    include: str = "conf.d/*.toml"
    log_format: Literal["logfmt", "json"] = "logfmt"
    workers: int = Field(default=32, ge=1, le=1024, strict=True)
    metrics_listen: str | None = None
    """``"127.0.0.1:9716"`` serves Prometheus metrics there; off by default."""
    stall_limit: float = Field(default=10.0, gt=0, le=3600, strict=True)
    """A main loop stuck this long exits the process (status 70) so ExaBGP starts a new one."""
    fleet: FleetSettings | None = None
    """The fleet guard on etcd (docs/fleet.md); without it every node decides alone."""
    forwarding: ForwardingSettings | None = None
    """This node's end of the drain-forwarding tunnel (docs/drain.md)."""

    @field_validator("metrics_listen")
    @classmethod
    def _check_listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError as err:
            raise ValueError(f"{v!r} must be ADDRESS:PORT, e.g. 127.0.0.1:9716") from err
        if not sep or not 0 < number < 65536:
            raise ValueError(f"{v!r} must be ADDRESS:PORT, e.g. 127.0.0.1:9716")
        return v

    @field_validator("control_group")
    @classmethod
    def _check_group(cls, v: str | None) -> str | None:
        # A number is taken as a gid as it is (the control socket does the same).
        if v is None or v.isdigit():
            return v
        try:
            grp.getgrnam(v)
        except (KeyError, ValueError):
            raise ValueError(f"no such group {v!r}") from None
        return v

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("neighbor")
    @classmethod
    def _check_neighbor(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        items = (v,) if isinstance(v, str) else v
        if not items:
            raise ValueError("give '*' for every neighbour, or one or more addresses")
        for item in items:
            if item == "*" and len(items) == 1:
                continue
            try:
                ipaddress.ip_address(item)
            except ValueError as err:
                raise ValueError(
                    f"{item!r} is not an IP address (use '*' alone for every neighbour)"
                ) from err
        return v

    @field_validator("next_hop")
    @classmethod
    def _check_next_hop(cls, v: str) -> str:
        if v == "self":
            return v
        try:
            return str(ipaddress.ip_address(v))
        except ValueError as err:
            raise ValueError(f"{v!r} must be 'self' or an IP address") from err

    @field_validator("next_hop6")
    @classmethod
    def _check_next_hop6(cls, v: str | None) -> str | None:
        if v is None or v == "self":
            return v
        try:
            return str(ipaddress.IPv6Address(v))
        except ValueError as err:
            raise ValueError(f"{v!r} must be 'self' or an IPv6 address") from err

    @field_validator("allowed_prefixes", mode="before")
    @classmethod
    def _parse_allowed(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        try:
            return [ipaddress.ip_network(x, strict=True) for x in v]
        except (ValueError, TypeError) as err:
            raise ValueError(str(err)) from err

    @property
    def neighbors(self) -> tuple[str, ...]:
        """The selector as a tuple; ``()`` means every neighbour."""
        if isinstance(self.neighbor, str):
            return () if self.neighbor == "*" else (self.neighbor,)
        return self.neighbor


@dataclass(frozen=True)
class ServiceEntry:
    """A validated service and the file it came from."""

    service: Service
    source: Path


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    settings: Settings
    defaults: ServiceDefaults
    services: tuple[ServiceEntry, ...]

    def service(self, name: str) -> Service:
        for entry in self.services:
            if entry.service.name == name:
                return entry.service
        raise KeyError(name)

    def effective(self) -> dict[str, Any]:
        """The configuration with every default filled in, as plain data."""
        settings = self.settings.model_dump(mode="json", exclude_none=True)
        if settings.get("fleet", {}).get("password") is not None:
            settings["fleet"]["password"] = "********"  # noqa: S105 - masked: print-config shows it
        settings["service"] = [
            {
                **e.service.model_dump(mode="json", exclude_none=True),
                "timeout": e.service.effective_timeout,
                "_source": str(e.source),
            }
            for e in self.services
        ]
        return settings


# ---------------------------------------------------------------- loading


def load(path: Path | str) -> Config:
    """Read and validate the main file and every file its ``include`` matches.

    Raises :class:`ConfigError` and nothing else: the daemon reloads from a signal
    handler's message, where any other exception would end the process.
    """
    main = Path(path)
    try:
        return _load(main)
    except ConfigError:
        raise
    except Exception as err:
        # A case _load does not foresee; still the operator's file, never a crash.
        raise ConfigError([f"{main}: cannot load: {type(err).__name__}: {err}"]) from err


def _load(main: Path) -> Config:
    problems: list[str] = []
    raw = _read_toml(main, main, problems)
    if raw is None:
        raise ConfigError(problems)

    raw_services = raw.pop("service", [])
    raw_defaults = raw.pop("defaults", {})
    settings = _validate_settings(main, raw, problems)
    defaults = _validate_defaults(main, raw_defaults, problems)

    sources: list[tuple[Path, Any]] = [(main, raw_services)]
    include = settings.include if settings else "conf.d/*.toml"
    if include:
        pattern = include if os.path.isabs(include) else str(main.parent / include)
        for extra in sorted(glob.glob(pattern)):
            extra_path = Path(extra)
            data = _read_toml(extra_path, main, problems)
            if data is None:
                continue
            services = data.pop("service", [])
            for key in data:
                problems.append(
                    f"{_show(extra_path, main)}: {key}: unknown key (files in conf.d hold only "
                    "[[service]] tables)"
                )
            sources.append((extra_path, services))

    entries: list[ServiceEntry] = []
    for source, services in sources:
        if not isinstance(services, list):
            problems.append(f"{_show(source, main)}: service: must be [[service]] tables")
            continue
        for index, table in enumerate(services):
            entry = _validate_service(source, main, index, table, raw_defaults, problems)
            if entry is not None:
                entries.append(entry)

    if settings is not None:
        _cross_checks(main, settings, entries, problems)
        entries = _fill_fleet(settings, entries)
    if problems or settings is None or defaults is None:
        raise ConfigError(problems)
    return Config(path=main, settings=settings, defaults=defaults, services=tuple(entries))


def _read_toml(path: Path, main: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problems.append(f"{_show(path, main)}: no such file")
    except PermissionError:
        problems.append(f"{_show(path, main)}: permission denied")
    except IsADirectoryError:
        problems.append(f"{_show(path, main)}: is a directory, expected a TOML file")
    except tomllib.TOMLDecodeError as err:
        problems.append(f"{_show(path, main)}: invalid TOML: {err}")
    except UnicodeDecodeError as err:
        # tomllib decodes the whole file first: a ValueError, not a TOMLDecodeError.
        line = err.object.count(b"\n", 0, err.start) + 1
        problems.append(
            f"{_show(path, main)}: not UTF-8 text: invalid byte 0x{err.object[err.start]:02x} "
            f"at line {line}"
        )
    except OSError as err:
        problems.append(f"{_show(path, main)}: cannot read: {err.strerror or err}")
    except Exception as err:  # noqa: BLE001 - reported as a problem of this file
        # E.g. RecursionError from arrays nested thousands deep: name the file, never crash.
        problems.append(f"{_show(path, main)}: cannot read: {type(err).__name__}: {err}")
    return None


def _show(path: Path, main: Path) -> str:
    """A file name as the operator thinks of it: relative to the main file's folder."""
    if path == main:
        return str(path)
    try:
        return str(path.relative_to(main.parent))
    except ValueError:
        return str(path)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in CHECK_TYPES:
            pass  # the tag pydantic adds for a discriminated union
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


def _messages(err: ValidationError) -> list[str]:
    out: list[str] = []
    errors = err.errors(include_url=False)
    nested = {e["loc"][0] for e in errors if len(e["loc"]) > 1}
    for e in errors:
        if e["type"] == "too_short" and len(e["loc"]) == 1 and e["loc"][0] in nested:
            continue  # the elements' own errors say why there are too few valid ones
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "union_tag_invalid":
            tag = e.get("input", {}).get("type") if isinstance(e.get("input"), dict) else None
            msg = f"unknown check type {tag!r} (known: {', '.join(sorted(CHECK_TYPES))})"
        elif e["type"] == "union_tag_not_found":
            msg = f"missing 'type' (one of: {', '.join(sorted(CHECK_TYPES))})"
        where = _loc(tuple(e["loc"]))
        if where and msg.startswith(where + "["):
            out.append(msg)  # the validator already named the element, e.g. prefixes[1]
        else:
            out.append(f"{where}: {msg}" if where else msg)
    return out


def _validate_settings(main: Path, raw: dict[str, Any], problems: list[str]) -> Settings | None:
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        problems.extend(f"{main}: {m}" for m in _messages(err))
        return None


def _validate_defaults(main: Path, raw: Any, problems: list[str]) -> ServiceDefaults | None:
    if not isinstance(raw, dict):
        problems.append(f"{main}: defaults: must be a table ([defaults])")
        return None
    try:
        return ServiceDefaults.model_validate(raw)
    except ValidationError as err:
        problems.extend(f"{main}: defaults.{m}" for m in _messages(err))
        # Reported once, here: drop the bad settings so that they are not merged into
        # (and reported again for) every service that does not set them itself.
        for e in err.errors():
            if e["loc"]:
                raw.pop(e["loc"][0], None)
        return None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key in _MERGED_TABLES and isinstance(value, Mapping):
            prior = out.get(key)
            out[key] = {**(prior if isinstance(prior, Mapping) else {}), **value}
        else:
            out[key] = value
    return out


def _validate_service(
    source: Path,
    main: Path,
    index: int,
    table: Any,
    raw_defaults: Any,
    problems: list[str],
) -> ServiceEntry | None:
    where = _show(source, main)
    if not isinstance(table, dict):
        problems.append(f"{where}: service[{index}]: must be a table")
        return None
    name = table.get("name")
    label = f"service {name!r}" if isinstance(name, str) and name else f"service[{index}]"
    merged = _merge(BUILTIN_ATTRIBUTES, raw_defaults if isinstance(raw_defaults, dict) else {})
    merged = _merge(merged, table)
    try:
        service = Service.model_validate(merged)
    except ValidationError as err:
        problems.extend(f"{where}: {label}: {m}" for m in _messages(err))
        return None
    return ServiceEntry(service=service, source=source)


def _cross_checks(
    main: Path, settings: Settings, entries: list[ServiceEntry], problems: list[str]
) -> None:
    names: dict[str, ServiceEntry] = {}
    owners: dict[IPNetwork, ServiceEntry] = {}
    for entry in entries:
        svc, where = entry.service, _show(entry.source, main)
        label = f"{where}: service {svc.name!r}"
        first = names.get(svc.name)
        if first is not None:
            problems.append(
                f"{label}: name: duplicate service name (first defined in "
                f"{_show(first.source, main)})"
            )
        else:
            names[svc.name] = entry
        for i, net in enumerate(svc.prefixes):
            owner = owners.get(net)
            if owner is not None and owner is not entry:
                problems.append(
                    f"{label}: prefixes[{i}]: {net} already belongs to service "
                    f"{owner.service.name!r} ({_show(owner.source, main)})"
                )
            else:
                owners[net] = entry
            if settings.allowed_prefixes and not any(
                net.version == allowed.version and net.subnet_of(allowed)  # type: ignore[arg-type]
                for allowed in settings.allowed_prefixes
            ):
                allowed_text = ", ".join(str(a) for a in settings.allowed_prefixes)
                problems.append(
                    f"{label}: prefixes[{i}]: {net} is outside allowed_prefixes ({allowed_text})"
                )
        if settings.fleet is None:
            problems.extend(
                f"{label}: {key}: needs a [fleet] table (the group it counts)"
                for key in _FLEET_KEYS
                if getattr(svc, key) is not None
            )
        if svc.forward_connections:
            problems.extend(f"{label}: {p}" for p in _forwarding_problems(settings, svc))
        for table in BUILTIN_ATTRIBUTES:
            attrs: Attributes = getattr(svc, table)
            if attrs.as_path_prepend and settings.local_as is None:
                problems.append(
                    f"{label}: {table}.as_path_prepend: needs local_as set at the top of "
                    f"{main} (the AS that is repeated)"
                )


_FLEET_KEYS = ("min_announcing", "max_drained", "on_unknown")


def _forwarding_problems(settings: Settings, svc: Service) -> list[str]:
    """Why ``forward_connections = true`` cannot work for ``svc`` (field: reason)."""
    out = []
    if settings.fleet is None:
        out.append(
            "forward_connections: needs a [fleet] table (peers find the draining node there)"
        )
    if settings.forwarding is None:
        out.append("forward_connections: needs a [forwarding] table (this node's tunnel end)")
    if svc.max_drained != 1:
        # Each node has one place to send a packet it does not know: with two drained
        # nodes it cannot tell whose connection the packet belongs to.
        out.append(
            f"max_drained: must be 1 with forward_connections (is {svc.max_drained}): a "
            "node cannot tell which of two drained nodes holds a connection it does not know"
        )
    if svc.manage_addresses is not None:
        out.append(
            "manage_addresses: cannot go with forward_connections: the drained node must keep "
            "the address after the withdraw to deliver its connections' forwarded packets"
        )
    for i, net in enumerate(svc.prefixes):
        if net.version != 4:
            out.append(f"prefixes[{i}]: {net}: forward_connections covers IPv4 prefixes only")
    return out


def _fill_fleet(settings: Settings, entries: list[ServiceEntry]) -> list[ServiceEntry]:
    """With a [fleet], every service is guarded (min_announcing 1) unless it says
    otherwise, and takes the fleet's on_unknown; without one, nothing changes."""
    fleet = settings.fleet
    if fleet is None:
        return entries
    out = []
    for e in entries:
        svc = e.service
        filled = svc.model_copy(
            update={
                "min_announcing": 1 if svc.min_announcing is None else svc.min_announcing,
                "on_unknown": svc.on_unknown or fleet.on_unknown,
            }
        )
        out.append(dataclasses.replace(e, service=filled))
    return out


# ---------------------------------------------------------------- the last good config

LAST_GOOD_FILE = "last-good-config.json"
_LAST_GOOD_FORMAT = 1
_STATE_DIR_LINE = re.compile(
    r"""^[ \t]*state_dir[ \t]*=[ \t]*(?:"([^"\\\n]*)"|'([^'\n]*)')""", re.MULTILINE
)


@dataclass(frozen=True)
class LastGood:
    """The config kept by the last successful load, for a start whose file does not load."""

    config: Config
    file: Path
    """Where it was kept: ``<state_dir>/last-good-config.json``."""
    saved: float
    """When it was kept, in seconds since the epoch."""


def save_last_good(config: Config) -> Path:
    """Keep ``config`` as ``<state_dir>/last-good-config.json``; returns that path.

    Kept are the validated models as plain data, not a copy of the files: conf.d
    includes and relative paths would not survive a copy, whereas the models come
    back equal through the same validation (:func:`load_last_good`). Not
    :meth:`Config.effective` either: it fills in every timeout, and the services
    would then differ from a fresh load of the same file on the next reload.
    The data may hold secrets (HTTP headers, command environments): mode 0600,
    replaced atomically. Raises OSError.
    """
    body = {
        "format": _LAST_GOOD_FORMAT,
        "config": os.path.abspath(config.path),
        "saved": time.time(),
        "settings": config.settings.model_dump(mode="json", exclude_none=True),
        "defaults": config.defaults.model_dump(mode="json", exclude_none=True),
        "services": [
            {
                "source": str(e.source),
                "service": e.service.model_dump(mode="json", exclude_none=True),
            }
            for e in config.services
        ],
    }
    data = json.dumps(body, indent=1).encode() + b"\n"
    state_dir = config.settings.state_dir
    target = state_dir / LAST_GOOD_FILE
    make_dirs(state_dir)  # not mkdir: ExaBGP's umask (0137) would leave it unsearchable
    fd, tmp = tempfile.mkstemp(prefix=".last-good-", suffix=".tmp", dir=state_dir)  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return target


def load_last_good(path: Path | str) -> LastGood | None:
    """The config last kept for the main file ``path``, validated again; None if none.

    Looked for in the ``state_dir`` the (broken) file seems to name, then in the
    default one. A copy kept for another main file, or one that cannot be read or
    parsed, counts as none. The returned config's ``path`` is ``path``: a reload
    reads the operator's file, never the copy. Raises :class:`ConfigError` when
    the copy for ``path`` no longer validates (e.g. its control_group is gone).
    """
    main = Path(path)
    wanted = os.path.abspath(main)
    dirs = [_state_dir_hint(main)]
    if DEFAULT_STATE_DIR not in dirs:
        dirs.append(DEFAULT_STATE_DIR)
    for state_dir in dirs:
        file = state_dir / LAST_GOOD_FILE
        try:
            body = json.loads(file.read_bytes())
        except (OSError, ValueError):
            continue
        if (
            not isinstance(body, dict)
            or body.get("format") != _LAST_GOOD_FORMAT
            or body.get("config") != wanted
        ):
            continue
        try:
            return _restore_last_good(main, file, body)
        except ConfigError:
            raise
        except Exception as err:
            raise ConfigError([f"{file}: cannot use: {type(err).__name__}: {err}"]) from err
    return None


def _restore_last_good(main: Path, file: Path, body: dict[str, Any]) -> LastGood:
    """Validate a kept config exactly as a loaded one (less the reading and merging)."""
    problems: list[str] = []
    raw_settings = body.get("settings")
    settings = _validate_settings(
        file, raw_settings if isinstance(raw_settings, dict) else {}, problems
    )
    defaults = _validate_defaults(file, body.get("defaults", {}), problems)
    entries: list[ServiceEntry] = []
    services = body.get("services")
    for index, item in enumerate(services if isinstance(services, list) else []):
        if not isinstance(item, dict):
            problems.append(f"{file}: services[{index}]: must be a table")
            continue
        source = Path(str(item.get("source", main)))
        # The tables hold every value already: no [defaults] to merge in again.
        entry = _validate_service(source, main, index, item.get("service"), {}, problems)
        if entry is not None:
            entries.append(entry)
    if settings is not None:
        _cross_checks(main, settings, entries, problems)
        entries = _fill_fleet(settings, entries)
    if problems or settings is None or defaults is None or not isinstance(services, list):
        raise ConfigError(
            [
                f"{file}: the last good config no longer validates: {p.removeprefix(f'{file}: ')}"
                for p in problems
            ]
            or [f"{file}: the last good config is incomplete"]
        )
    saved = body.get("saved")
    return LastGood(
        config=Config(path=main, settings=settings, defaults=defaults, services=tuple(entries)),
        file=file,
        saved=float(saved) if isinstance(saved, int | float) else 0.0,
    )


def _state_dir_hint(main: Path) -> Path:
    """The ``state_dir`` a main file that does not load most likely names, else the default.

    Read leniently: bad bytes replaced, and when the TOML itself is broken, the
    first ``state_dir = "..."`` line above any table.
    """
    try:
        text = main.read_bytes().decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return DEFAULT_STATE_DIR
    value: Any = None
    try:
        value = tomllib.loads(text).get("state_dir")
    except Exception:  # noqa: BLE001 - broken TOML (or worse): fall back to the line
        head = re.split(r"(?m)^[ \t]*\[", text, maxsplit=1)[0]
        match = _STATE_DIR_LINE.search(head)
        if match is not None:
            value = match.group(1) if match.group(1) is not None else match.group(2)
    return Path(value) if isinstance(value, str) and value else DEFAULT_STATE_DIR
