"""Sampling profiles of the controller with py-spy (optional: skipped when it is not installed).

``py-spy record --gil --format raw`` samples only the thread holding the GIL, that
is where the interpreter is actually running Python (threads blocked in a
syscall or waiting for the GIL are left out; the kernel's own share is not
seen). The collapsed stacks (``frame;frame;... count``) are summarised as self
and inclusive time per function, as a share of those samples; samples / rate /
duration is the Python CPU in cores.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .common import VENV

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


_REPO = str(Path(__file__).resolve().parents[2])


def _short(frame: str) -> str:
    """``run (/x/site-packages/requests/sessions.py:589)`` -> ``requests/sessions.py:run``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", f"{_REPO}/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = "stdlib/" + path.split("/", 1)[1]
            break
    return f"{path}:{match['func']}"


class PySpy:
    binary = VENV / "bin" / "py-spy"

    @classmethod
    def available(cls) -> bool:
        return cls.binary.exists() or shutil.which("py-spy") is not None

    @classmethod
    def profile(
        cls, pid: int, seconds: float, rate: int = 200, top: int = 12, gil: bool = True
    ) -> dict[str, Any]:
        if not cls.available():
            return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
        binary = str(cls.binary) if cls.binary.exists() else "py-spy"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "stacks.txt"
            argv = [binary, "record", "--pid", str(pid), "--duration", str(int(max(1, seconds)))]
            argv += ["--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"]
            if gil:
                argv.append("--gil")
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=False,
            )
            if proc.returncode != 0 or not out.exists():
                return {"skipped": f"py-spy failed: {(proc.stderr or proc.stdout).strip()[-300:]}"}
            text = out.read_text()
        return summarise(text, rate, seconds, top)


def summarise(text: str, rate: int, seconds: float, top: int = 12) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0}

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "share": c / total, "cores": c / rate / seconds}
            for f, c in counter.most_common(top)
        ]

    return {
        "samples": total,
        "busy_cores": total / rate / seconds,
        "seconds": seconds,
        "self": rows(own),
        "inclusive": rows(
            Counter(
                {
                    f: c
                    for f, c in inclusive.items()
                    if not f.startswith(("stdlib/threading.py", "stdlib/concurrent/futures/thread"))
                }
            )
        ),
    }
