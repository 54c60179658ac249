"""The whole-path instruction count (tests/bench/pathcost.py): requests are counted from
callgrind's own call counts, so a dump's parsing decides the figure."""

from __future__ import annotations

import pytest

from tests.bench import pathcost

DUMP = """# callgrind format
events: Ir
fn=(1) _PyEval_EvalFrameDefault
0 500
cfn=(2) sock_send
calls=7 0x0
0 90
cfn=(3) sock_sendall
calls=100 0x0
0 40
fn=(4) method_vectorcall
0 20
cfn=(2)
calls=5 0x0
0 60
summary: 123456
"""


def test_requests_are_the_calls_to_sock_send_and_instructions_the_summary() -> None:
    """Calls are summed under every caller (a name is given once, then only its number);
    other callees (sendall: the control socket's replies) are not requests."""
    assert pathcost.dump_counts(DUMP) == (123456, 12)
    assert pathcost.dump_counts(DUMP, "sock_sendall") == (123456, 100)


def test_a_dump_without_totals_is_an_error_not_zero() -> None:
    with pytest.raises(RuntimeError, match="no totals"):
        pathcost.dump_counts("events: Ir\nfn=(1) x\n0 5\n")


def test_without_valgrind_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pathcost.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt install valgrind"):
        pathcost.measure(10, 1.0)
