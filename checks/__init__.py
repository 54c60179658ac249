"""Health checks: validated specs, and the checks built from them.

The daemon builds each check once with :func:`build_check` and then calls
``run(timeout)`` as often as it likes; ``run`` never raises. ``close`` releases
what a check keeps (the HTTP check's kept-alive connection).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, cast

from announcer.checks.base import Check, CheckResult, Clock, LoopCheck, OnDone, monotonic
from announcer.checks.command import CommandCheck
from announcer.checks.file import FileCheck
from announcer.checks.http import ConnectionFactory, HttpCheck
from announcer.checks.specs import (
    CHECK_TYPES,
    CheckSpec,
    CommandCheckSpec,
    DnsCheckSpec,
    FileCheckSpec,
    HttpCheckSpec,
    TcpCheckSpec,
)
from announcer.checks.tcp import TcpCheck

if TYPE_CHECKING:
    from announcer.checks.dns import DnsCheck

__all__ = [
    "CHECK_TYPES",
    "Check",
    "CheckResult",
    "CheckSpec",
    "Clock",
    "CommandCheck",
    "CommandCheckSpec",
    "ConnectionFactory",
    "DnsCheck",
    "DnsCheckSpec",
    "FileCheck",
    "FileCheckSpec",
    "HttpCheck",
    "HttpCheckSpec",
    "LoopCheck",
    "OnDone",
    "TcpCheck",
    "TcpCheckSpec",
    "build_check",
    "monotonic",
]


def __getattr__(name: str) -> Any:
    """``DnsCheck`` on first use: dnspython costs 5 MB of RSS, only worth it with a DNS check."""
    if name == "DnsCheck":
        return importlib.import_module("announcer.checks.dns").DnsCheck
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_check(
    spec: CheckSpec,
    *,
    clock: Clock = monotonic,
    connection_factory: ConnectionFactory | None = None,
) -> Check:
    """The check that runs ``spec``.

    ``clock`` is given to every check; ``connection_factory`` (which makes the
    connection an HTTP check keeps; tests pass fakes; by default its own asyncio
    connection, :mod:`announcer.checks.http_protocol`) only when given. The spec names
    its check (``implementation``): there is no list of check types here.
    """
    implementation = getattr(type(spec), "implementation", None)
    if not isinstance(implementation, str):
        raise TypeError(f"not a check spec: {type(spec).__name__}")
    module, name = implementation.split(":")
    factory = getattr(importlib.import_module(f"announcer.checks.{module}"), name)
    options = {} if connection_factory is None else {"connection_factory": connection_factory}
    return cast(Check, factory(spec, clock=clock, **options))
