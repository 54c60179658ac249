"""The file check: healthy while a path exists, or while it is absent.

``exists: true`` follows symlinks (``os.path.exists``): a dangling symlink is
missing. ``exists: false`` looks at the path itself (``os.path.lexists``): any
entry there, even a dangling symlink, is present. Both read "cannot tell" (for
instance a directory on the way that may not be searched) as a failure, rather
than guessing, as ``os.path.exists`` would, that the file is not there.
"""

from __future__ import annotations

import errno
import os

from announcer.checks._text import one_line
from announcer.checks.base import CheckResult, Clock, monotonic, timed_run
from announcer.checks.specs import FileCheckSpec

__all__ = ["FileCheck"]

_ABSENT = (errno.ENOENT, errno.ENOTDIR)


class FileCheck:
    """Runs a :class:`FileCheckSpec`."""

    def __init__(self, spec: FileCheckSpec, *, clock: Clock = monotonic) -> None:
        self._spec = spec
        self._clock = clock

    @property
    def name(self) -> str:
        return f"file {'exists' if self._spec.exists else 'absent'} {self._spec.path}"

    def run(self, timeout: float) -> CheckResult:
        """Look at the path once; ``timeout`` is not needed for a local stat."""
        return timed_run(self._clock, lambda start: self._run())

    def close(self) -> None:
        """Nothing is kept between runs."""

    def _run(self) -> tuple[bool, str]:
        path = self._spec.path
        try:
            if self._spec.exists:
                os.stat(path)
            else:
                os.lstat(path)
        except OSError as exc:
            if exc.errno not in _ABSENT:
                detail = (exc.strerror or type(exc).__name__).lower()
                return False, one_line(f"cannot check {path}: {detail}")
            if self._spec.exists:
                dangling = os.path.lexists(path)
                return False, one_line(f"{'dangling symlink' if dangling else 'missing'}: {path}")
            return True, one_line(f"absent: {path}")
        if self._spec.exists:
            return True, one_line(f"present: {path}")
        return False, one_line(f"present: {path}")
