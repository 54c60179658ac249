"""Taking over from the previous run: a pure plan from the state file and who we are.

ExaBGP keeps our routes when our process dies and starts a new one; the new
one must neither flap a healthy route nor leave a dead one announced. What it
finds decides how much it may believe:

* a state file written under another ExaBGP (or another boot): that ExaBGP is
  gone with everything it announced, so the wire is known to be empty; only
  the operator's drains are kept;
* a state file written under this same ExaBGP: the previous run's routes and
  drains are the starting belief, but the file may be stale (a write that
  failed on a full or read-only disk), so the wire is *uncertain*: once the
  checks decide, the whole wanted state is asserted (see
  :attr:`announcer.state.ServiceState.wire_certain`);
* no state file, or one that cannot be read: nothing is known, so every
  configured prefix may be on the wire; the same assertion follows the first
  decision, and a failing service is withdrawn explicitly.

No I/O here: the daemon reads the file and the clocks and applies the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from announcer import state as sm
from announcer.persist import ServiceRecord, Snapshot


@dataclass(frozen=True, slots=True)
class Clocks:
    """Readings taken once, at the takeover."""

    now: float
    """The daemon's own (monotonic) clock."""
    boottime: float
    """``CLOCK_BOOTTIME``: what drain deadlines are kept in."""
    wall: float
    """Wall-clock time: only for drain deadlines in files of older versions."""
    boot_id: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What the new run starts from."""

    services: dict[str, sm.Restored]
    """Per configured service; a service missing here starts fresh."""
    withdraw: tuple[str, ...]
    """Prefixes no configured service owns that may still be announced (a service no
    longer configured, or a withdraw the previous run had in flight)."""
    wire: str
    """Why the wire is believed as it is, for the log: ``new_exabgp``, ``same_exabgp``,
    ``no_state_file`` or ``state_unreadable``."""


def plan(
    snapshot: Snapshot | None,
    *,
    readable: bool,
    identity: str,
    policies: Mapping[str, sm.Policy],
    clocks: Clocks,
) -> Plan:
    """The takeover plan; ``readable`` is false when a state file exists but could not be read."""
    if snapshot is None:
        unknown = {
            name: sm.Restored(sm.Route.WITHDRAWN, policy.prefixes)
            for name, policy in policies.items()
        }
        return Plan(unknown, (), "no_state_file" if readable else "state_unreadable")
    same = snapshot.exabgp == identity and snapshot.boot_id in ("", clocks.boot_id)
    services: dict[str, sm.Restored] = {}
    for name, policy in policies.items():
        rec = snapshot.services.get(name)
        drained = rec is not None and rec.operator_drain
        reason = rec.drain_reason if rec is not None and drained else ""
        if not same:
            if drained:
                services[name] = sm.Restored(
                    sm.Route.WITHDRAWN, (), drained=True, drain_reason=reason, certain=True
                )
            continue
        route = rec.route if rec is not None else sm.Route.WITHDRAWN
        recorded = rec.prefixes if rec is not None else ()
        deadline = None
        if rec is not None and route is sm.Route.DRAINING:
            deadline = _drain_deadline(rec, snapshot, policy, clocks)
        services[name] = sm.Restored(
            route=route,
            prefixes=tuple(dict.fromkeys((*recorded, *policy.prefixes))),
            attributes=rec.attributes if rec is not None else None,
            drained=drained,
            drain_reason=reason,
            drain_deadline=deadline,
        )
    withdraw: tuple[str, ...] = ()
    if same:
        kept = {p for policy in policies.values() for p in policy.prefixes}
        # A retired service's withdraw may have been in flight: its record is gone.
        retired = [
            p
            for name, rec_ in snapshot.services.items()
            if name not in policies
            for p in rec_.prefixes
        ]
        gone = (p for p in (*retired, *snapshot.inflight) if p not in kept)
        withdraw = tuple(dict.fromkeys(gone))
    return Plan(services, withdraw, "same_exabgp" if same else "new_exabgp")


def _drain_deadline(
    rec: ServiceRecord, snapshot: Snapshot, policy: sm.Policy, clocks: Clocks
) -> float:
    """When a restored drain withdraws, on the daemon's clock: never later than a whole
    ``drain_seconds`` from now, whatever a clock step did to the recorded time."""
    if rec.drain_boottime is not None and snapshot.boot_id == clocks.boot_id:
        left = rec.drain_boottime - clocks.boottime
    elif rec.drain_deadline is not None:
        left = rec.drain_deadline - clocks.wall  # a file of an older version
    else:
        left = policy.drain_seconds
    return clocks.now + min(max(left, 0.0), policy.drain_seconds)
