"""Reload: what a new config changes, as a pure plan the daemon executes.

Services added start from INIT; removed ones are drained, then dropped once withdrawn
(retiring); a retiring service that is back is undrained; changed ones get their new
policy (and new checks, when those changed). Settings that shape every command or the
process itself (:data:`RESTART_KEYS`) keep their running values until a restart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from announcer.config import LAST_GOOD_FILE, Config, Service, load, save_last_good
from announcer.errors import ConfigError
from announcer.log import Logger
from announcer.runtime import ServiceRuntime

if TYPE_CHECKING:  # only types: prometheus_client is imported when metrics are on
    from announcer.metrics import Metrics

RESTART_KEYS = (
    "neighbor",
    "next_hop",
    "next_hop6",
    "local_as",
    "acks",
    "state_dir",
    "control_socket",
    "control_group",
    "workers",
    "log_format",
    "fleet",  # its etcd client and threads start with the process
    "forwarding",  # the tunnel, mark, table and rules the standing part was installed with
)


@dataclass(frozen=True)
class ReloadPlan:
    config: Config
    """The config to run: the new one, with :data:`RESTART_KEYS` held at their old values."""
    added: tuple[Service, ...]
    removed: tuple[str, ...]
    revived: tuple[str, ...]
    """Retiring services the new config has again: undrained."""
    changed: tuple[Service, ...]
    new_checks: frozenset[str]
    """Changed services whose checks changed: built again, their open round dropped."""
    same: tuple[str, ...]
    restart_needed: tuple[str, ...]

    def changes(self) -> dict[str, list[str]]:
        return {
            "added": [s.name for s in self.added],
            "changed": [s.name for s in self.changed],
            "removed": list(self.removed),
            "same": list(self.same),
        }


def plan(old: Config, new: Config, running: Mapping[str, ServiceRuntime]) -> ReloadPlan:
    """What loading ``new`` over ``old`` changes for the services ``running`` (read only)."""
    wanted = {e.service.name: e.service for e in new.services}
    if old.settings.fleet is None and new.settings.fleet is not None:
        # No fleet runs until a restart: the services keep deciding alone (no guard that
        # nobody would answer).
        unguarded = dict.fromkeys(("min_announcing", "max_drained", "on_unknown"))
        wanted = {n: s.model_copy(update=unguarded) for n, s in wanted.items()}
    if old.settings.fleet is None or old.settings.forwarding is None:
        # No forwarder runs until a restart (it starts with the fleet and [forwarding]):
        # a service must not claim forward_connections (drain --wait would wait for its
        # connections; status would say it forwards).
        off = {"forward_connections": False}
        wanted = {
            n: s.model_copy(update=off) if s.forward_connections else s for n, s in wanted.items()
        }
    removed = tuple(n for n, r in running.items() if n not in wanted and not r.retiring)
    added: list[Service] = []
    changed: list[Service] = []
    same: list[str] = []
    revived: list[str] = []
    for name, svc in wanted.items():
        found = running.get(name)
        if found is None:
            added.append(svc)
            continue
        if found.retiring:
            revived.append(name)
        if svc == found.service:
            same.append(name)
        else:
            changed.append(svc)
    kept = tuple(k for k in RESTART_KEYS if getattr(old.settings, k) != getattr(new.settings, k))
    config = new
    if kept:
        settings = new.settings.model_copy(update={k: getattr(old.settings, k) for k in kept})
        entries = tuple(
            dataclasses.replace(e, service=wanted[e.service.name]) for e in new.services
        )
        config = Config(path=new.path, settings=settings, defaults=new.defaults, services=entries)
    return ReloadPlan(
        config=config,
        added=tuple(added),
        removed=removed,
        revived=tuple(revived),
        changed=tuple(changed),
        new_checks=frozenset(s.name for s in changed if s.checks != running[s.name].service.checks),
        same=tuple(same),
        restart_needed=kept,
    )


class ConfigKeeper:
    """The config running, and what the operator is told about it: why the file did not
    load (``error``), what a reload could not apply without a restart (``note``).

    Every config that loads is kept as ``state_dir/last-good-config.json``: a later
    start whose file does not load runs on it (see :func:`announcer.config.load_last_good`).
    """

    def __init__(
        self, config: Config, log: Logger, metrics: Metrics | None, start_error: str | None
    ) -> None:
        """``start_error``: why the operator's file did not load at start; ``config`` is
        then the last good one, run until a reload of the file succeeds."""
        self.config, self.log, self.metrics = config, log, metrics
        self.error: str | None = None
        self.note: str | None = None
        self.reloaded: list[Callable[[], None]] = []
        """Called once a reload's plan is applied (drain forwarding's standing part)."""
        self._last_good: str | None = None
        if start_error is not None:
            where = config.settings.state_dir / LAST_GOOD_FILE
            self._last_good = f"running on the last good config, kept in {where}"
            self.error = f"{start_error}\n{self._last_good}"
        else:
            self.keep(config)
        self._ok(start_error is None)

    def load(self) -> Config:
        """The config file as it is now; :class:`ConfigError` (logged, and kept for
        status) if it does not load."""
        try:
            new = load(self.config.path)
        except ConfigError as err:
            refused = ConfigError([*err.problems, *([self._last_good] if self._last_good else [])])
            self.error = str(refused)
            for problem in err.problems:
                self.log.error("reload_failed", problem=problem)
            kept = "last good config" if self._last_good else "previous config"
            self.log.error("reload_failed", action=f"still running on the {kept}")
            self._ok(False)
            raise refused from err
        # What the file says now, before the settings that need a restart are held back:
        # a process respawned on a broken file is to run what this file said.
        self.keep(new)
        return new

    def applied(self, reload_plan: ReloadPlan) -> None:
        self.config, self.error, self._last_good = reload_plan.config, None, None
        self.note = None
        if reload_plan.restart_needed:
            self.note = "restart needed to apply: " + ", ".join(reload_plan.restart_needed)
            self.log.warning("reload", note=self.note)
        self._ok(True)
        for then in self.reloaded:
            then()

    def failed(self, err: Exception) -> None:
        """A reload failed half-way (a bug): say so, keep running."""
        self.error = f"reload failed: {type(err).__name__}: {err}"
        self.log.error("reload_failed", why=self.error, action="still running; reload again")
        self._ok(False)

    def keep(self, config: Config) -> None:
        """Keep a config that loaded, for a later start whose file does not load."""
        try:
            save_last_good(config)
        except Exception as err:  # noqa: BLE001 - a copy is never worth a crash
            # Only the fallback for a broken file at the next start is lost.
            self.log.warning(
                "last_good_config_not_saved", state_dir=str(config.settings.state_dir), why=str(err)
            )

    def _ok(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.config_ok(ok)
