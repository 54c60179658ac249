"""Directories the controller creates itself, usable whatever the umask.

ExaBGP starts the controller with its own umask (0137 by default), under which
``mkdir`` makes directories without the search bit: 0750 becomes 0640, and
nothing inside such a directory can be opened, not even by its owner unless it
is root. So every directory we create gets its mode set outright, parents too.
"""

from __future__ import annotations

import os
from pathlib import Path


def make_dirs(path: Path, mode: int = 0o750) -> list[Path]:
    """Create ``path`` and any missing parents with exactly ``mode``; returns those created.

    Directories that already exist are left as they are (an operator's choice).
    Raises OSError as ``mkdir`` and ``chmod`` do.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            # Another process made it meanwhile; whether it is a directory is
            # for the caller's next operation to find out.
            continue
        os.chmod(directory, mode)  # mkdir's mode is masked by the umask
        created.append(directory)
    return created
