"""The view of the daemon served to the control socket (``announcer status``), the
metrics' neighbours and systemd's status line. Reads only; built on the main thread."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from announcer import state as sm
from announcer.attributes import to_json as attributes_json
from announcer.exabgp import Writer
from announcer.runtime import EventSeen, ServiceRuntime


@dataclass(frozen=True)
class Notes:
    """What the operator is told about the config and the state file."""

    config_error: str | None
    state_error: str | None
    reload_note: str | None


def status_line(services: Mapping[str, ServiceRuntime]) -> str:
    """One line for systemd's status: ``3 services: 2 announced, 1 withdrawn``."""
    counts: dict[str, int] = {}
    for rt in services.values():
        route = sm.shown_route(rt.state)
        counts[route] = counts.get(route, 0) + 1
    parts = [f"{n} {route.lower()}" for route, n in sorted(counts.items())]
    return f"{len(services)} services: " + (", ".join(parts) or "none")


def _left(until: float | None, now: float) -> float | None:
    return None if until is None else round(max(0.0, until - now), 3)


def guard_text(rt: ServiceRuntime) -> str | None:
    """What the fleet guard is doing for the service, or None (always None without a fleet)."""
    st = rt.state
    if st.guard_held:
        minimum = rt.policy.min_announcing
        return f"held by the fleet guard: {st.guard_announcing} announcing, min {minimum}"
    if st.guard_deadline is not None:
        return "asking the fleet guard"
    return None


def service_view(rt: ServiceRuntime, now: float) -> dict[str, Any]:
    st = rt.state
    guard = guard_text(rt)
    return {
        "health": st.health.value,
        "route": sm.shown_route(st),
        "prefixes": list(rt.policy.prefixes),
        "wire_prefixes": list(st.wire_prefixes),
        "attributes": attributes_json(st.wire_attributes),
        "drained": st.drained,
        "drain_sources": sorted(rt.drain_sources),
        "drain_reason": st.drain_reason,
        "drain_left": _left(st.drain_deadline, now),
        "health_for": round(now - st.health_since, 3),
        "route_for": round(now - st.route_since, 3),
        "last_ok": rt.last_ok,
        "last_reason": rt.last_reason,
        "last_duration": round(rt.last_duration, 4),
        "checks_run": rt.rounds,
        "check_failures": rt.check_failures,
        "transitions": rt.transitions,
        "retiring": rt.retiring,
        "connections": rt.connections,
        "dampened_for": _left(st.held_until, now),
        "address_guard": rt.policy.guard,
        "held": {p: why.value for p, why in sm.held(rt.policy, st).items()},
        **({"fleet_guard": guard} if guard else {}),
        **({"fleet_slot": rt.slot_note} if rt.slot_note else {}),
        # A drain asked for that has not begun: ``drain --wait`` waits on through it.
        **({"drain_waiting": True} if rt.slot_note or rt.peers_awaited else {}),
        **({"forward_connections": True} if rt.service.forward_connections else {}),
        **({"forwarding": rt.forward_note} if rt.forward_note else {}),
        **({"last_event": _event_view(rt.last_event, now)} if rt.last_event else {}),
    }


def _event_view(seen: EventSeen, now: float) -> dict[str, Any]:
    written = None if seen.written is None else round(seen.written, 6)
    return {
        "check": seen.check,
        "reason": seen.reason,
        "ago": round(max(0.0, now - seen.at), 3),
        "down": seen.down,
        "route": seen.route,
        "written": written,
    }


def checked_view(rt: ServiceRuntime, number: int) -> dict[str, Any]:
    """The results of ``rt``'s last closed round, for ``announcer check`` (round ``number``
    or a later one)."""
    return {
        "round": number,
        "ok": rt.last_ok,
        "reason": rt.last_reason,
        "health": rt.state.health.value,
        "route": sm.shown_route(rt.state),
        "checks": [
            {"check": check.name, "ok": r.ok, "reason": r.reason, "duration": round(r.duration, 4)}
            for check, r in zip(rt.checks, rt.last_results, strict=False)
        ],
    }


def snapshot(
    services: Mapping[str, ServiceRuntime],
    *,
    now: float,
    uptime: float,
    neighbors: Mapping[str, str],
    writer: Writer,
    notes: Notes,
) -> dict[str, Any]:
    """A plain-data picture of every service (the control protocol's status)."""
    return {
        "uptime": round(uptime, 3),
        "neighbors": dict(neighbors),
        "exabgp": {
            "sent": writer.sent,
            "done": writer.done,
            "error": writer.errors,
            "pending": writer.pending,
            "last_error": writer.last_error.command if writer.last_error else None,
        },
        "config_error": notes.config_error,
        "state_error": notes.state_error,
        "reload_note": notes.reload_note,
        "services": {name: service_view(rt, now) for name, rt in services.items()},
    }
