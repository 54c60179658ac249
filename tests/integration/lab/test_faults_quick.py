"""The fault suite's quick variant (issue 11) in the namespace lab, as ``make test`` runs it.

Each test is one row of docs/reliability.md, run the quick way (shorter windows, fewer
requests) on ExaBGP 5.0, and on 4.2 too where ExaBGP's own behaviour is the point. The
row's expected outcome is what is asserted (every check of the row must hold); durations
are measured and reported, never asserted. The rows are kept in .cache/faults/quick/ and
rendered into .cache/faults/quick/reliability-quick.md at the end; ``make faults`` runs
every row and rewrites docs/reliability.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.faults import run as runner  # noqa: E402
from tests.faults.model import Store  # noqa: E402
from tests.faults.registry import Ctx, Scenario, all_scenarios  # noqa: E402
from tests.faults.rig import Rig  # noqa: E402

pytestmark = pytest.mark.lab

PLAN = runner.select(all_scenarios(), None, True, None)
"""(scenario, ExaBGP version) of the quick variant, in report order."""


class Rigs:
    """One started lab per ExaBGP version, made when a test first needs it."""

    def __init__(self) -> None:
        self.rigs: dict[str, Rig] = {}

    def get(self, version: str) -> Rig:
        rig = self.rigs.get(version)
        if rig is None:
            rig = self.rigs[version] = Rig(version).start()
        return rig

    def drop(self, version: str) -> None:
        rig = self.rigs.pop(version, None)
        if rig is not None:
            rig.stop()

    def close(self) -> None:
        for version in list(self.rigs):
            self.drop(version)


@pytest.fixture(scope="module")
def rigs(lab_requirements: None) -> Iterator[Rigs]:
    """The module's labs; stopped, and the quick report rendered, at the end."""
    made = Rigs()
    began = time.monotonic()
    try:
        yield made
    finally:
        made.close()
        store = Store("quick")
        store.save_meta(
            {"duration_min": round((time.monotonic() - began) / 60, 1), "machine": runner.machine()}
        )
        runner.render(store, True, store.directory / "reliability-quick.md")


@pytest.mark.parametrize(
    ("scenario", "version"),
    [(sc, v) for sc, v in PLAN if v is not None],
    ids=[f"{sc.id}-exabgp{v}" for sc, v in PLAN if v is not None],
)
def test_fault(rigs: Rigs, scenario: Scenario, version: str) -> None:
    """Inject the row's fault into node1 of the lab and check the row's expected outcome:
    every check the scenario makes (route at the router, requests, status, log line,
    processes and descriptors) holds. The row's figures are saved for the quick report."""
    rig = rigs.get(version)
    began = time.monotonic()
    try:
        row = scenario.fn(Ctx(rig, quick=True), scenario)
    except BaseException:
        rigs.drop(version)  # a scenario that raised may leave the lab in any state
        raise
    row.duration_s = round(time.monotonic() - began, 1)
    Store("quick").save(row)
    failed = [what for what, good in row.figures.get("checks", {}).items() if not good]
    assert row.ok, f"{row.id} ({row.fault}, ExaBGP {row.exabgp}): {failed}\n{row.seen}"
