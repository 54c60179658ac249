"""Structured logs on stderr, one event per line (stdout belongs to ExaBGP).

``logfmt`` (default) reads well in a terminal and in journald::

    ts=2026-11-26T03:40:00.123Z level=info event=route service=web from=WITHDRAWN to=ANNOUNCED

``json`` gives one JSON object per line for log shippers.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Literal, TextIO

Level = Literal["debug", "info", "warning", "error"]
_ORDER = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _quote(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):  # a Path, an exception, ...: as the json format does
            text = str(value)
    # Quote anything with a space, quote, =, backslash or a non-printable (\n, \r, \t, ...).
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text)


class Logger:
    """Writes events; thread-safe; never raises on a closed or broken stream."""

    def __init__(
        self,
        stream: TextIO | None = None,
        fmt: Literal["logfmt", "json"] = "logfmt",
        level: Level = "info",
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.level = level
        self._lock = threading.Lock()

    def event(self, level: Level, event: str, **fields: Any) -> None:
        if _ORDER[level] < _ORDER[self.level]:
            return
        now = time.time()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        # The pid tells the lines of a respawned process from its predecessor's.
        pid = os.getpid()
        if self.fmt == "json":
            line = json.dumps(
                {"ts": ts, "level": level, "pid": pid, "event": event, **fields}, default=str
            )
        else:
            parts = [f"ts={ts}", f"level={level}", f"pid={pid}", f"event={_quote(event)}"]
            parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
            line = " ".join(parts)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass

    def debug(self, event: str, **fields: Any) -> None:
        self.event("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.event("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event("error", event, **fields)
