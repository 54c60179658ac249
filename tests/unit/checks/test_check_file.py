"""The file check on real paths in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from announcer.checks import FileCheckSpec, build_check


def run(path: Path, exists: bool = True) -> tuple[bool, str]:
    check = build_check(FileCheckSpec(type="file", path=str(path), exists=exists))
    result = check.run(1.0)
    return result.ok, result.reason


def test_exists_true(tmp_path: Path) -> None:
    """exists: true passes while the file is there and fails once it is gone."""
    path = tmp_path / "ready"
    path.touch()
    assert run(path) == (True, f"present: {path}")
    path.unlink()
    assert run(path) == (False, f"missing: {path}")


def test_exists_false(tmp_path: Path) -> None:
    """exists: false (a drain flag) passes while the file is absent, fails while present."""
    path = tmp_path / "drain"
    assert run(path, exists=False) == (True, f"absent: {path}")
    path.touch()
    assert run(path, exists=False) == (False, f"present: {path}")


def test_directories_count(tmp_path: Path) -> None:
    """A directory at the path is present too."""
    assert run(tmp_path)[0]


def test_dangling_symlink(tmp_path: Path) -> None:
    """A dangling symlink is missing for exists: true and present for exists: false."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    assert run(link) == (False, f"dangling symlink: {link}")
    assert run(link, exists=False) == (False, f"present: {link}")


def test_path_through_a_file_is_absent(tmp_path: Path) -> None:
    """A path under a regular file (ENOTDIR) is simply absent."""
    parent = tmp_path / "plain"
    parent.touch()
    assert run(parent / "child", exists=False) == (True, f"absent: {parent / 'child'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may search any directory")
def test_unsearchable_directory_is_a_failure_not_absence(tmp_path: Path) -> None:
    """When the path cannot be looked at, neither mode guesses: both fail."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        assert run(locked / "flag", exists=False)[0] is False
        assert run(locked / "flag", exists=True)[0] is False
    finally:
        locked.chmod(0o700)


def test_duration_and_name_use_the_spec_and_clock(tmp_path: Path) -> None:
    """duration comes from the injected clock; the name says what is watched."""
    ticks = iter([5.0, 5.25])
    check = build_check(FileCheckSpec(type="file", path=str(tmp_path)), clock=lambda: next(ticks))
    assert check.run(1.0).duration == pytest.approx(0.25)
    assert check.name == f"file exists {tmp_path}"
    check.close()
    check.close()
