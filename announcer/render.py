"""Text for operators: the pieces the commands' answers are rendered with (durations,
attributes, a service's last check and drain, aligned tables), each tolerant of a
field that is missing or odd (a daemon of another version).

Each command's own rendering is in its entry in :mod:`announcer.client`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from announcer import attributes
from announcer.protocol import ServiceStatus


def clean(text: object) -> str:
    """One line of printable text (reasons come from checks and may hold anything)."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def format_duration(seconds: object, *, up: bool = False) -> str:
    """``12s``, ``3m04s``, ``2h05m``, ``3d04h``; ``-`` when unknown.

    ``up`` rounds up (for countdowns: a drain 0.2 s from its end shows 1s).
    """
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = math.ceil(seconds) if up else math.floor(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_attributes(attrs: object) -> str:
    """The attributes on the wire, compact: ``med 1000 comm 65535:0``; ``-`` for none."""
    return attributes.describe(attrs)


def format_last_check(svc: ServiceStatus, width: int = 40) -> str:
    ok = svc.get("last_ok")
    if ok is None:
        return "-"
    reason = clean(svc.get("last_reason") or "")
    text = ("ok" if ok else "fail") + (f": {reason}" if reason else "")
    return truncate(text, width)


def format_drain(svc: ServiceStatus) -> str:
    left = svc.get("drain_left")
    if left is not None:
        return format_duration(left, up=True)
    if svc.get("drained"):
        return "done" if svc.get("route") == "WITHDRAWN" else "yes"
    return "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, without trailing blanks."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def services_of(result: Mapping[str, Any]) -> dict[str, ServiceStatus]:
    """The ``services`` of an answer, those that are objects (by name)."""
    services = result.get("services")
    if not isinstance(services, Mapping):
        return {}
    return {str(k): cast(ServiceStatus, v) for k, v in services.items() if isinstance(v, Mapping)}


__all__ = [
    "clean",
    "format_attributes",
    "format_drain",
    "format_duration",
    "format_last_check",
    "services_of",
    "table",
    "truncate",
]
