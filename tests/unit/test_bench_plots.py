"""The benchmark's report and plots from saved results (no lab): P1 (d), its floor and the
idle cost reach the page and its goals; the SVGs are drawn, embedded and reproducible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.bench import plots, report
from tests.bench.common import Results, summary


def _tool(samples: list[float]) -> dict[str, Any]:
    return {"failover": summary(samples), "samples": samples, "missed": 0}


def _results() -> Results:
    r = Results(quick=True, command="bench")
    fast = [0.06, 0.08, 0.07]
    r.sections["P1"] = {
        "trials": 3,
        "cpu_window_s": 1.0,
        "profiles": [
            {"key": "c", "title": "fast", "label": "interval 0.1", "tools": ["announcer", "exa"]}
            | {"announcer": _tool(fast), "exa": _tool([0.15, 0.16, 0.2])},
            {
                "key": "d",
                "title": "web server SIGKILLed",
                "label": "interval 0.1",
                "tools": ["announcer", "exa", "floor"],
                "crash": True,
                "check": "process",
                "announcer": _tool([0.012, 0.014, 0.03]),
                "exa": _tool([0.15, 0.17, 0.18]),
                "floor": _tool([0.004, 0.005, 0.006]),
            },
        ],
        "idle": {
            "window_s": 60.0,
            "timing": "interval 1",
            "variants": {
                "with": {"core_fraction": 0.0021},
                "without": {"core_fraction": 0.0020},
                "without-again": {"core_fraction": 0.00205},
            },
            "difference": 0.0001,
            "noise": 0.00005,
        },
    }
    r.sections["P3"] = {
        "runs": [
            {"tool": "announcer", "n": 10, "core_fraction": 0.005, "peak_rss_mb": 40.0},
            {"tool": "announcer", "n": 200, "core_fraction": 0.03, "peak_rss_mb": 45.0},
            {"tool": "exa", "n": 10, "core_fraction": 0.15, "peak_rss_mb": 300.0},
        ]
    }
    return r


def test_row_d_the_floor_and_the_idle_cost_reach_the_goals_and_tables() -> None:
    """(d)'s p99 is judged against 50 ms with the floor beside it, the idle difference against
    0.05 % of a core, and the floor's row and announcer's distance to it are in P1's table."""
    page = report.render(_results())
    assert "| P1 (d) web server SIGKILLed, `process` check | p99 ≤ 0.050 s | 0.030 s" in page
    assert "the floor: 0.006 s | **met** |" in page
    assert "≤ 0.05 % of one core | 0.010 % (noise 0.005 %) | **met** |" in page
    assert "| floor (stand-in) | 0.005 |" in page
    assert "| (d) announcer minus the floor |  | +9 ms |" in page
    assert "process check on the pid file" in page


def test_plots_are_drawn_embedded_and_reproducible(tmp_path: Path) -> None:
    """Both SVGs are written, the page links them under their sections, and the same
    results draw byte-identical files (they are committed under docs/)."""
    try:
        plots.pyplot()
    except ImportError as exc:
        pytest.skip(f"no matplotlib here (bootstrap installs it as root): {exc}")
    results = _results()
    drawn = plots.draw(results.sections, tmp_path / "one")
    assert drawn == {"P1": plots.P1_FILE, "P3": plots.P3_FILE}
    again = plots.draw(results.sections, tmp_path / "two")
    for name in again.values():
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    svg = (tmp_path / "one" / plots.P1_FILE).read_text()
    assert "(d) floor" in svg
    assert "(c) EXA" in svg
    page = report.render(results, {k: f"img/{v}" for k, v in drawn.items()})
    assert "## P1 Failover\n\n![P1](img/p1-failover.svg)" in page
    assert "## P3 Cost at scale\n\n![P3](img/p3-cost.svg)" in page
