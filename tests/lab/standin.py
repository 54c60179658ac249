"""A stand-in for the controller: announces fixed routes once, then just reads stdin."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from .topology import PREFIX_V4, PREFIX_V6

_SCRIPT = '''\
"""Lab stand-in API process: announce, then keep reading stdin until EOF."""
import sys
import time

LINES = {lines!r}
log = open(sys.argv[1], "a", buffering=1) if len(sys.argv) > 1 else None
for line in LINES:
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()
    if log:
        log.write(f"{{time.time():.3f}} > {{line}}\\n")
for received in sys.stdin:  # ExaBGP answers "done"/"error" and reports neighbour changes
    if log:
        log.write(f"{{time.time():.3f}} < {{received.rstrip()}}\\n")
'''


def announce_lines(
    *,
    med: int = 100,
    community: str | None = None,
    prefixes: Sequence[str] = (PREFIX_V4, PREFIX_V6),
) -> list[str]:
    """The ``announce route`` commands for ``prefixes``, e.g. with ``community="65535:0"``."""
    extra = f" community [ {community} ]" if community else ""
    return [f"announce route {prefix} next-hop self med {med}{extra}" for prefix in prefixes]


def write_standin(directory: Path, lines: Sequence[str], log: Path) -> list[str]:
    """Write a stand-in script printing ``lines`` into ``directory``; return the argv to run it."""
    text = _SCRIPT.format(lines=list(lines))
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    script = directory / f"standin-{digest}.py"
    if not script.exists():
        script.write_text(text)
    return [sys.executable, str(script), str(log)]
