"""The core stays small enough to read (issue 12): announcer/daemon.py is at most 300
lines, and no class in announcer/ or checks/ is over 300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 300


def _classes(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    ]


def test_the_daemon_module_is_at_most_300_lines() -> None:
    """The loop and its dispatch table, nothing more."""
    lines = len((ROOT / "announcer" / "daemon.py").read_text().splitlines())
    assert lines <= LIMIT, f"announcer/daemon.py has {lines} lines"


def test_no_class_is_over_300_lines() -> None:
    """Every class in the package (fleet/ and forwarding/ too) and in checks/ (a class's
    lines: from ``class`` to its last line, docstrings and comments included)."""
    # announcer/checks is a link to checks/: read once, from there
    package = [
        p for p in (ROOT / "announcer").rglob("*.py") if p.relative_to(ROOT).parts[1] != "checks"
    ]
    files = sorted(package) + sorted((ROOT / "checks").rglob("*.py"))
    assert len(files) > 40  # the package is where this looks
    over = [
        f"{path.relative_to(ROOT)}: {name} ({size} lines)"
        for path in files
        for name, size in _classes(path)
        if size > LIMIT
    ]
    assert not over, over
