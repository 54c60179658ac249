"""Small helpers shared by the checks: turning things into short, one-line reasons."""

from __future__ import annotations

import socket

MAX_REASON = 200
"""Reasons longer than this are cut, so a chatty service cannot flood logs and status."""


def seconds(value: float) -> str:
    """Render a duration the way reasons show it: ``1.0``, ``0.5``, ``0.25``."""
    return str(round(float(value), 3))


def timeout_reason(timeout: float) -> str:
    """The one wording every check uses when it ran out of time."""
    return f"timeout after {seconds(timeout)}s"


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """Collapse ``text`` to a single stripped line of at most ``limit`` characters."""
    line = " ".join(text.split())
    if len(line) > limit:
        return line[: limit - 3].rstrip() + "..."
    return line


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, cut to a reason's length ("" if none)."""
    for line in text.splitlines():
        if line.strip():
            return one_line(line)
    return ""


def unexpected(exc: BaseException) -> str:
    """Reason for an exception no check anticipated: its type name leads, so it is findable."""
    detail = one_line(str(exc), MAX_REASON - 40)
    name = type(exc).__name__
    return f"unexpected {name}: {detail}" if detail else f"unexpected {name}"


def os_error(exc: OSError) -> str:
    """A short reason for a socket or file error (timeouts are the caller's to word)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return one_line(f"cannot resolve host: {exc.strerror or exc}")
    if exc.strerror:
        return one_line(exc.strerror.lower())
    return one_line(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__
