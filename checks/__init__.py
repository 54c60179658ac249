"""Health checks: validated specs, and the checks built from them.

The daemon builds each check once with :func:`build_check` and then calls
``run(timeout)`` as often as it likes; ``run`` never raises. ``close`` releases
what a check keeps (the HTTP check's kept-alive session).
"""

from __future__ import annotations

from checks.base import Check, CheckResult, Clock, monotonic
from checks.command import CommandCheck
from checks.dns import DnsCheck
from checks.file import FileCheck
from checks.http import HttpCheck, SessionFactory
from checks.specs import (
    CheckSpec,
    CommandCheckSpec,
    DnsCheckSpec,
    FileCheckSpec,
    HttpCheckSpec,
    TcpCheckSpec,
)
from checks.tcp import TcpCheck

__all__ = [
    "Check",
    "CheckResult",
    "CheckSpec",
    "Clock",
    "CommandCheck",
    "CommandCheckSpec",
    "DnsCheck",
    "DnsCheckSpec",
    "FileCheck",
    "FileCheckSpec",
    "HttpCheck",
    "HttpCheckSpec",
    "SessionFactory",
    "TcpCheck",
    "TcpCheckSpec",
    "build_check",
    "monotonic",
]


def build_check(
    spec: CheckSpec,
    *,
    clock: Clock = monotonic,
    session_factory: SessionFactory | None = None,
) -> Check:
    """The check that runs ``spec``.

    ``clock`` is given to every check; ``session_factory`` (which makes the
    :class:`requests.Session` an HTTP check keeps) only to HTTP checks, and
    defaults to a plain session that ignores proxy settings in the environment.
    """
    match spec:
        case HttpCheckSpec():
            return HttpCheck(spec, clock=clock, session_factory=session_factory)
        case TcpCheckSpec():
            return TcpCheck(spec, clock=clock)
        case DnsCheckSpec():
            return DnsCheck(spec, clock=clock)
        case CommandCheckSpec():
            return CommandCheck(spec, clock=clock)
        case FileCheckSpec():
            return FileCheck(spec, clock=clock)
    raise TypeError(f"not a check spec: {type(spec).__name__}")
