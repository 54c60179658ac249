"""The controller's micro-benchmark (tests/bench/ctlcost.py): it must run every check it
schedules, or the CPU per check it prints would be the cost of doing less."""

from __future__ import annotations

import re

import pytest

from tests.bench import ctlcost


def test_every_scheduled_check_runs_and_a_figure_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """20 services for 2 simulated seconds, twice: 80 checks, each counted."""
    assert ctlcost.main(["-n", "20", "--seconds", "2", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"N=20: ([\d.]+) us of CPU per check .*; 80 checks run of 80 scheduled", out)
    assert match is not None, out
    assert float(match.group(1)) > 0


def test_the_count_is_read_from_callgrinds_summary() -> None:
    """callgrind ends with ``==PID== Collected : N``; anything else is an error, not 0."""
    stderr = "==41== Events    : Ir\n==41== Collected : 4585719629\n==41==\n"
    assert ctlcost.collected(stderr) == 4585719629
    with pytest.raises(RuntimeError, match="no count"):
        ctlcost.collected("valgrind: failed to start tool 'callgrind'\n")


def test_instructions_without_valgrind_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ctlcost.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt install valgrind"):
        ctlcost.instructions_per_check(10)
