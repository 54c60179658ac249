"""The controller with a fault injector: SIGUSR2 blocks its main thread for good.

Run by ExaBGP instead of ``announcer`` (``python _hang.py run --config ...``). The
handler runs on the main thread, between two steps of the daemon's loop, and never
returns: a main loop blocked inside a callback, as a deadlock or a call that never
comes back would leave it. Every other thread (the stall guard, the control socket,
the check workers) keeps running. The daemon does not use SIGUSR2 itself.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType


def _block(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("fault: SIGUSR2: the main loop blocks here for good\n")
    sys.stderr.flush()
    threading.Event().wait()


def main() -> int:
    signal.signal(signal.SIGUSR2, _block)
    from announcer.cli import main as announcer_main

    return announcer_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
