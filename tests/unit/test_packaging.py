"""The wheel and the .deb carry every package of the source tree."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_for_setuptools() -> None:
    """Each directory of announcer/ with an __init__.py is in pyproject's package list (a
    missing one installs nothing of it: the installed controller then fails to import)."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "announcer").rglob("__init__.py")
    }
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"
