"""``announcer status --watch``: the status table, redrawn until interrupted.

On a terminal the table is redrawn in place with three ANSI sequences every
terminal (and every SSH client) understands: cursor home, erase to the end of the
line, erase to the end of the screen. No curses and no alternate screen: it
works over SSH in a plain terminal, and the last table stays on screen after
Ctrl-C. Lines are cut to the terminal's width and the table to its height, so a
redraw never scrolls. When stdout is not a terminal (a pipe, a file, ``tee``),
each refresh is appended after a ``--- HH:MM:SS`` line instead (with ``--json``,
one JSON object a line).

A daemon that stops answering (restarted by ExaBGP, say) is shown as such and
asked again at the next refresh; only the first request's failure ends the watch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from announcer.errors import ControlError
from announcer.protocol import EXIT_OK
from announcer.render import truncate
from announcer.transport import Transport

HOME = "\x1b[H"
ERASE_LINE = "\x1b[K"
ERASE_DOWN = "\x1b[J"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"


def watch(
    client: Transport,
    fields: Mapping[str, Any],
    render: Callable[[Mapping[str, Any]], str],
    *,
    interval: float,
    as_json: bool,
    out: TextIO,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show ``status`` every ``interval`` seconds until Ctrl-C (exit 0)."""
    if threading.current_thread() is threading.main_thread():
        # Started from a script as a background job, SIGINT comes in ignored (sh does
        # that), and Python then never raises KeyboardInterrupt: Ctrl-C must still end it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    tty = out.isatty()
    first = True
    try:
        if tty:
            out.write(HIDE_CURSOR)
        while True:
            started = time.monotonic()
            try:
                result = client.request("status", **fields)
                text = json.dumps(result) + "\n" if as_json else render(result)
            except ControlError as error:
                if first:
                    raise
                client.close()  # a new connection next time: the daemon may have restarted
                text = f"announcer: {error}; asking again every {interval:g}s\n"
            first = False
            stamp = time.strftime("%H:%M:%S")
            if tty:
                _redraw(out, f"announcer status every {interval:g}s, {stamp} (Ctrl-C ends)", text)
            elif as_json:
                out.write(text)
            else:
                out.write(f"--- {stamp}\n{text}")
            out.flush()
            sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if tty:
            out.write(SHOW_CURSOR + "\n")
            out.flush()


def _size(out: TextIO) -> tuple[int, int]:
    # The terminal's own size first: $COLUMNS and $LINES (which shutil prefers) can be
    # stale or inherited from elsewhere, and a redraw cut to them hides columns.
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, ValueError):
        size = shutil.get_terminal_size((100, 24))
    return size.columns, size.lines


def _redraw(out: TextIO, header: str, text: str) -> None:
    width, height = _size(out)
    lines = [header, "", *text.rstrip("\n").splitlines()][: max(1, height - 1)]
    out.write(HOME + "".join(truncate(line, width - 1) + ERASE_LINE + "\n" for line in lines))
    out.write(ERASE_DOWN)
