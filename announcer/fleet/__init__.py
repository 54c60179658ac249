"""The fleet guard: the nodes of a group share their routes in etcd, so that a failure
every node sees at once never withdraws the last of them, and drains take turns.

Nothing here is imported unless the config has a ``[fleet]`` table (``requests`` is
loaded then): without one announcer behaves exactly as it always did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from announcer.daemon import Daemon
    from announcer.fleet.guard import FleetGuard
    from announcer.fleet.settings import FleetSettings


def attach(daemon: Daemon, settings: FleetSettings | None) -> FleetGuard | None:
    """The fleet guard plugged into ``daemon`` (its threads started), or None without
    a ``[fleet]`` (and then nothing of the fleet, nor ``requests``, is even imported)."""
    if settings is None:
        return None
    from announcer.fleet.wiring import attach as wire_up

    return wire_up(daemon, settings)
