"""Validated, immutable descriptions of health checks, one model per check type.

A spec says *what* to check; it holds no timeout (the scheduler passes one to
``run``) and no I/O. Everything that can be wrong in a spec is rejected here,
when the configuration is loaded, with a message naming the field, so that a
check never discovers a bad regex or an impossible port at 3 a.m.

The models are discriminated on ``type``; :data:`CheckSpec` is the union the
configuration loader embeds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CHECK_TYPES",
    "CheckSpec",
    "CommandCheckSpec",
    "DnsCheckSpec",
    "FileCheckSpec",
    "HttpCheckSpec",
    "ProcessCheckSpec",
    "TcpCheckSpec",
    "status_ranges",
]

if TYPE_CHECKING:
    import dns.rdata

_MIN_STATUS = 100
_MAX_STATUS = 599
_STATUS_RANGE = re.compile(r"^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP token (RFC 9110 section 5.6.2): what a method or a header name may be."""


def _not_bool(value: object) -> object:
    # pydantic's lax int takes True as 1; a boolean where a number belongs is a config typo.
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


StrictishInt = Annotated[int, BeforeValidator(_not_bool)]
Port = Annotated[StrictishInt, Field(ge=1, le=65535)]


def _no_nul(value: str, field: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{field} must not contain a NUL character")
    return value


def _nonblank(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} must not be empty")
    return _no_nul(value, field)


def _parse_status(item: int | str) -> tuple[int, int]:
    """One ``expect_status`` item as an inclusive range; raises ValueError with a clear message."""
    if isinstance(item, int):
        low = high = item
    else:
        match = _STATUS_RANGE.match(item)
        if match is None:
            raise ValueError(
                f"expect_status item {item!r} is neither a status code nor a range like '200-399'"
            )
        low = int(match.group(1))
        high = int(match.group(2) or low)
    for code in (low, high):
        if not _MIN_STATUS <= code <= _MAX_STATUS:
            raise ValueError(
                f"expect_status item {item!r}: {code} is not an HTTP status"
                f" ({_MIN_STATUS}-{_MAX_STATUS})"
            )
    if low > high:
        raise ValueError(f"expect_status range {item!r} is backwards")
    return low, high


def status_ranges(expect_status: tuple[int | str, ...]) -> tuple[tuple[int, int], ...]:
    """The inclusive ``(low, high)`` ranges an already validated ``expect_status`` stands for."""
    return tuple(_parse_status(item) for item in expect_status)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    implementation: ClassVar[str]
    """The check that runs this spec, ``module:Class`` in :mod:`announcer.checks`, imported
    by :func:`announcer.checks.build_check` (so a new check type is its spec here and its
    module, nothing else)."""

    immediate: bool = False
    """A failure this check reports as an event (a check that has events: ``process``)
    takes the service down at once, without waiting for ``fall`` rounds. Checks without
    events only have rounds, where ``fall`` always applies."""


class HttpCheckSpec(_Spec):
    """An HTTP(S) request whose status (and optionally body) tells health.

    Redirects are not followed: a 3xx is judged against ``expect_status`` like any status.
    """

    implementation: ClassVar[str] = "http:HttpCheck"

    type: Literal["http"] = "http"
    url: str
    method: str = "GET"
    expect_status: tuple[StrictishInt | str, ...] = ("200-399",)
    body_regex: re.Pattern[str] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True
    ca_file: str | None = None
    retries: Annotated[StrictishInt, Field(ge=0, le=5)] = 1

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if any(ch.isspace() for ch in url) or "\x00" in url:
            raise ValueError("url must not contain whitespace or NUL")
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"url must be http:// or https://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url has an invalid port: {url!r}") from None
        if port == 0:
            raise ValueError(f"url has an invalid port: {url!r}")
        return url

    @field_validator("method")
    @classmethod
    def _check_method(cls, method: str) -> str:
        if not _TOKEN.match(method):
            raise ValueError(f"method {method!r} is not a valid HTTP method")
        return method.upper()

    @field_validator("expect_status", mode="before")
    @classmethod
    def _status_as_list(cls, value: Any) -> Any:
        # A single code or range is a list of one.
        if isinstance(value, int | str):
            return [value]
        return value

    @field_validator("expect_status")
    @classmethod
    def _check_status(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        if not value:
            raise ValueError("expect_status must list at least one status code or range")
        for item in value:
            _parse_status(item)
        return value

    @field_validator("body_regex", mode="before")
    @classmethod
    def _compile_regex(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"body_regex {value!r} is not a valid regular expression: {exc}"
                ) from None
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"headers: {name!r} is not a valid header name")
            if any(ch in value for ch in "\r\n\x00"):
                raise ValueError(f"headers: value of {name!r} must be a single line")
        return headers

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, ca_file: str | None) -> str | None:
        return None if ca_file is None else _nonblank(ca_file, "ca_file")

    @model_validator(mode="after")
    def _check_consistency(self) -> HttpCheckSpec:
        if self.ca_file is not None:
            if not self.verify_tls:
                raise ValueError("ca_file is set but verify_tls is false: drop one of them")
            if urlsplit(self.url).scheme.lower() != "https":
                raise ValueError("ca_file is set but url is not https://")
        if self.method == "HEAD" and self.body_regex is not None:
            raise ValueError("body_regex cannot match anything with method HEAD (no body)")
        return self


class TcpCheckSpec(_Spec):
    """A TCP connect; optionally ``send`` a probe and ``expect`` a reply starting with a prefix."""

    implementation: ClassVar[str] = "tcp:TcpCheck"

    type: Literal["tcp"] = "tcp"
    host: str
    port: Port
    send: str | None = None
    expect: str | None = None

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        if not host.strip() or any(ch.isspace() for ch in host):
            raise ValueError(f"host {host!r} must be a non-empty name or address without spaces")
        return _no_nul(host, "host")

    @field_validator("send")
    @classmethod
    def _check_send(cls, send: str | None) -> str | None:
        if send is not None and not send:
            raise ValueError("send must not be empty (leave it out to only connect)")
        return send

    @field_validator("expect")
    @classmethod
    def _check_expect(cls, expect: str | None) -> str | None:
        if expect is not None and not expect:
            raise ValueError("expect must not be empty (leave it out to accept any reply)")
        return expect


class DnsCheckSpec(_Spec):
    """A UDP DNS query to ``server`` that must answer with records of ``rdtype``."""

    implementation: ClassVar[str] = "dns:DnsCheck"

    type: Literal["dns"] = "dns"
    name: str
    rdtype: str = "A"
    server: str
    port: Port = 53
    expect: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        _nonblank(name, "name")
        import dns.exception  # dnspython only where a DNS check is configured: 5 MB of RSS
        import dns.name

        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(f"name {name!r} is not a valid DNS name: {exc}") from None
        return name

    @field_validator("rdtype")
    @classmethod
    def _check_rdtype(cls, rdtype: str) -> str:
        import dns.exception
        import dns.rdatatype

        try:
            value = dns.rdatatype.from_text(rdtype.strip())
        except dns.exception.DNSException:
            raise ValueError(f"rdtype {rdtype!r} is not a DNS record type") from None
        if dns.rdatatype.is_metatype(value):
            raise ValueError(f"rdtype {rdtype!r} is a meta type, not a record type")
        return dns.rdatatype.to_text(value)

    @field_validator("server")
    @classmethod
    def _check_server(cls, server: str) -> str:
        try:
            return str(ipaddress.ip_address(server.strip()))
        except ValueError:
            raise ValueError(f"server must be an IP address, got {server!r}") from None

    @model_validator(mode="after")
    def _check_expect(self) -> DnsCheckSpec:
        if self.expect is not None:
            import dns.exception

            try:
                parse_expected_rdata(self.rdtype, self.expect)
            except (dns.exception.DNSException, ValueError) as exc:
                raise ValueError(
                    f"expect {self.expect!r} is not a valid {self.rdtype} record: {exc}"
                ) from None
        return self


def parse_expected_rdata(rdtype: str, text: str) -> dns.rdata.Rdata:
    """``text`` as a record of ``rdtype``; relative names are taken as absolute."""
    _nonblank(text, "expect")
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    return dns.rdata.from_text(
        dns.rdataclass.IN,
        dns.rdatatype.from_text(rdtype),
        text,
        origin=dns.name.root,
        relativize=False,
    )


class CommandCheckSpec(_Spec):
    """A local command whose exit status tells health: 0 is healthy.

    Without ``shell`` the command is ``argv`` and runs without a shell. With
    ``shell: true`` it is the string ``command``, run by ``/bin/sh -c``.
    ``env`` adds to (and overrides) the controller's own environment.
    """

    implementation: ClassVar[str] = "command:CommandCheck"

    type: Literal["command"] = "command"
    argv: tuple[str, ...] | None = None
    command: str | None = None
    shell: bool = False
    env: dict[str, str] | None = None
    cwd: str | None = None

    @field_validator("argv")
    @classmethod
    def _check_argv(cls, argv: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if argv is None:
            return None
        if not argv:
            raise ValueError("argv must not be empty: it needs at least the program")
        _nonblank(argv[0], "argv[0] (the program)")
        for arg in argv:
            _no_nul(arg, "argv")
        return argv

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: str | None) -> str | None:
        return None if command is None else _nonblank(command, "command")

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (env or {}).items():
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"env: {key!r} is not a valid variable name")
            _no_nul(value, f"env[{key!r}]")
        return env

    @field_validator("cwd")
    @classmethod
    def _check_cwd(cls, cwd: str | None) -> str | None:
        return None if cwd is None else _nonblank(cwd, "cwd")

    @model_validator(mode="after")
    def _check_form(self) -> CommandCheckSpec:
        if self.shell:
            if self.command is None:
                raise ValueError("shell: true needs `command` (a string for /bin/sh -c)")
            if self.argv is not None:
                raise ValueError("shell: true takes `command`, not `argv`: drop argv")
        else:
            if self.command is not None:
                raise ValueError(
                    "`command` (a shell string) needs shell: true;"
                    " use `argv` to run without a shell"
                )
            if self.argv is None:
                raise ValueError("`argv` is required (or `command` with shell: true)")
        return self


class FileCheckSpec(_Spec):
    """Healthy while ``path`` exists (``exists: true``), or while it is absent (``false``)."""

    implementation: ClassVar[str] = "file:FileCheck"

    type: Literal["file"] = "file"
    path: str
    exists: bool = True

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        return _nonblank(path, "path")


_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
"""What systemd takes in a unit name (systemd.unit(5)); ``\\`` for its escapes."""
MAX_GRACE = 600.0


class ProcessCheckSpec(_Spec):
    """Healthy while a process is alive: the one a pid file names, or a systemd unit's main
    process (``MainPID``). The check waits on it with a pidfd and reports its death as an
    event (``immediate``, on by default). ``grace``: a death followed within that many
    seconds by a new live process (a rewritten pid file, a new main PID of the unit) is no
    failure (a planned restart)."""

    implementation: ClassVar[str] = "process:ProcessCheck"

    type: Literal["process"] = "process"
    pid_file: str | None = None
    unit: str | None = None
    immediate: bool = True
    grace: float = Field(default=0.0, ge=0.0, le=MAX_GRACE, strict=True)

    @field_validator("pid_file")
    @classmethod
    def _check_pid_file(cls, pid_file: str | None) -> str | None:
        if pid_file is None:
            return None
        _nonblank(pid_file, "pid_file")
        if not pid_file.startswith("/"):
            raise ValueError(f"pid_file must be an absolute path, got {pid_file!r}")
        return pid_file

    @field_validator("unit")
    @classmethod
    def _check_unit(cls, unit: str | None) -> str | None:
        if unit is None:
            return None
        if not _UNIT.match(unit) or unit.startswith("-"):
            raise ValueError(f"unit {unit!r} is not a systemd unit name (e.g. 'nginx.service')")
        return unit

    @model_validator(mode="after")
    def _check_form(self) -> ProcessCheckSpec:
        if (self.pid_file is None) == (self.unit is None):
            raise ValueError("give exactly one of pid_file and unit")
        return self


CheckSpec = Annotated[
    HttpCheckSpec
    | TcpCheckSpec
    | DnsCheckSpec
    | CommandCheckSpec
    | FileCheckSpec
    | ProcessCheckSpec,
    Field(discriminator="type"),
]
"""Any check spec; the ``type`` field picks the model."""

CHECK_TYPES: frozenset[str] = frozenset(
    model.model_fields["type"].default for model in get_args(get_args(CheckSpec)[0])
)
"""The ``type`` of every check spec in :data:`CheckSpec`: the one list of check types."""
