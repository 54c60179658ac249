"""The benchmark judges absolute CPU goals at the pace issue 12 set them at (run D's
``python -c pass`` of 28 ms), scaling each figure by the pace measured around it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.common import GOAL_PACE_S, Results, at_goal_pace
from tests.bench.report import goals


def test_a_slower_machine_is_judged_as_if_it_had_the_goals_pace() -> None:
    """Twice the goals' pace: half the CPU counts; a faster machine counts more."""
    assert at_goal_pace(0.12, 2 * GOAL_PACE_S) == pytest.approx(0.06)
    assert at_goal_pace(0.10, GOAL_PACE_S / 2) == pytest.approx(0.20)


@pytest.mark.parametrize("pace_s", [None, 0.0])
def test_without_a_pace_the_figure_stands_as_measured(pace_s: float | None) -> None:
    """An old run's results with no pace are judged as they were measured."""
    assert at_goal_pace(0.12, pace_s) == 0.12


def _p3(cpu: float, row_pace: float | None, section_pace: float = GOAL_PACE_S) -> Results:
    row: dict[str, Any] = {
        "tool": "announcer",
        "n": 1000,
        "core_fraction": cpu,
        "peak_rss_mb": 50.0,
        "on_time_fraction": 1.0,
    }
    if row_pace is not None:
        row["pace_s"] = row_pace
    results = Results(quick=False, command="test")
    results.sections["P3"] = {"pace_s": section_pace, "runs": [row]}
    return results


def _p3_row(results: Results) -> list[str]:
    return next(row for row in goals(results) if row[0] == "P3 N = 1000")


@pytest.mark.parametrize(
    ("cpu", "row_pace", "verdict"),
    [
        (0.12, 0.042, "**met**"),  # 8 % at 28 ms
        (0.09, 0.020, "**missed**"),  # 12.6 % at 28 ms
        (0.095, GOAL_PACE_S, "**met**"),
        (0.105, GOAL_PACE_S, "**missed**"),
    ],
)
def test_p3_goal_is_judged_at_the_rows_own_pace(cpu: float, row_pace: float, verdict: str) -> None:
    """P3's 10 % goal at N = 1,000 takes the row's CPU scaled by the pace around that row,
    and the page shows the raw figure, the pace and the scaled figure."""
    row = _p3_row(_p3(cpu, row_pace))
    assert row[3] == verdict
    assert f"{100 * cpu:.1f} % at a pace of {1000 * row_pace:.0f} ms" in row[2]
    assert f"{100 * at_goal_pace(cpu, row_pace):.1f} % at 28 ms" in row[2]


def test_a_row_without_its_own_pace_takes_the_sections() -> None:
    """Results from before rows had a pace: the section's start is the best there is."""
    row = _p3_row(_p3(0.12, None, section_pace=0.042))
    assert row[3] == "**met**"
    assert "at a pace of 42 ms" in row[2]


def test_p1_fast_profile_cpu_is_judged_at_the_sections_pace() -> None:
    """P1 (c)'s 1 % goal takes the mean of the pace at P1's start and end."""
    results = Results(quick=False, command="test")
    announcer = {"failover": {"p99": 0.15}, "checker_core_fraction": 0.012}
    results.sections["P1"] = {"profiles": [{"key": "c", "label": "c", "announcer": announcer}]}

    def cpu_row() -> list[str]:
        return next(row for row in goals(results) if row[0].endswith("CPU per service"))

    assert cpu_row()[3] == "**missed**"  # no pace: 1.2 % as measured
    results.machine["section_pace"] = {"P1": [0.040, 0.044]}  # 0.8 % at 28 ms
    assert cpu_row()[3] == "**met**"
    assert "1.20 % at a pace of 42 ms, 0.80 % at 28 ms" in cpu_row()[2]
