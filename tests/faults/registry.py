"""The scenarios, in report order: each one injects one fault and returns one row."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import Row
from .rig import Rig, Watch, short


@dataclass
class Ctx:
    """What a scenario gets: the rig (its lab) and whether this is the quick variant.

    Scenarios that only report figures measured elsewhere (``versions=()``) get no rig.
    """

    lab_rig: Rig | None
    quick: bool
    started: float = field(default_factory=time.monotonic)

    @property
    def rig(self) -> Rig:
        if self.lab_rig is None:
            raise RuntimeError("this scenario runs without a lab")
        return self.lab_rig

    def row(self, scenario: Scenario) -> Row:
        version = self.lab_rig.version if self.lab_rig is not None else "-"
        return Row(id=scenario.id, fault=scenario.fault, exabgp=version, quick=self.quick)


ScenarioFn = Callable[[Ctx, "Scenario"], Row]


@dataclass(frozen=True)
class Scenario:
    """One fault of the issue's list."""

    id: str
    """``1a``: the issue's fault number and a letter (report order)."""
    fault: str
    fn: ScenarioFn
    versions: tuple[str, ...] = ("5.0",)
    """ExaBGP versions it runs on (4.2 too where ExaBGP's own behaviour matters); empty for
    rows that report figures measured outside the lab (the package test's systemd)."""
    quick: bool = False
    """Part of the quick variant (make test)."""

    @property
    def group(self) -> int:
        return int("".join(c for c in self.id if c.isdigit()))


def fill(
    row: Row,
    watch: Watch,
    *,
    events: tuple[str, ...] = (),
    contains: str = "",
    status: str | None = None,
) -> Row:
    """Fill in what every row reports from one :class:`Watch`: the router's changes, the
    client's requests, status (now, unless given) and the first matching log line."""
    rig = watch.rig
    row.router = watch.router_saw()
    row.requests, row.lost, row.lost_note = watch.requests()
    row.status = status if status is not None else rig.status_text()
    line = rig.find_log(watch.log0, events, contains) if (events or contains) else None
    if line is not None:
        row.log_line = short(line.text)
    elif events or contains:
        row.log_line = f"(no {'/'.join(events) or contains!r} line)"
    return row


def judge(row: Row, checks: dict[str, bool], timing: dict[str, bool] | None = None) -> Row:
    """``seen`` names every check that failed; ``ok`` when none did.

    ``checks`` are outcomes (withdrawn, not early, counts): the quick test asserts them.
    ``timing`` compares durations with a bound (on time, within the README's figure): the
    report shows a miss, but a loaded machine can cause one, so nothing asserts them.
    """
    failed = [what for what, good in checks.items() if not good]
    slow = [what for what, good in (timing or {}).items() if not good]
    row.ok = not failed
    row.figures["checks"] = checks
    row.figures["timing"] = timing or {}
    if slow:
        row.seen = "slower than the bound: " + "; ".join(slow) + f". {row.seen}"
    if failed:
        row.seen = "NOT as expected: " + "; ".join(failed) + (f". {row.seen}" if row.seen else "")
    return row


SCENARIOS: list[Scenario] = []


def scenario(
    id: str, fault: str, *, versions: tuple[str, ...] = ("5.0",), quick: bool = False
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register a scenario function under ``id``."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS.append(Scenario(id, fault, fn, versions, quick))
        return fn

    return register


def _key(s: Scenario) -> tuple[int, str]:
    return s.group, s.id


def all_scenarios() -> list[Scenario]:
    """Every scenario, imported and sorted (the modules register themselves)."""
    from . import (  # noqa: F401 - imported for their registrations
        checks_faults,
        clock_faults,
        config_faults,
        control_faults,
        controller_faults,
        drain_faults,
        fleet_faults,
        session_faults,
        soak,
        state_faults,
    )

    return sorted(SCENARIOS, key=_key)
