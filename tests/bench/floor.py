"""P1 (d)'s floor: an ExaBGP API process that withdraws the instant a process dies.

    floor.py --pid-file PATH --prefix 192.0.2.10/32 [--med 100] [--log PATH]

Announces ``--prefix`` while the process named by ``--pid-file`` lives, waiting on
it with a pidfd (no polling); the moment the pidfd says it exited, it writes the
withdraw to ExaBGP. Then it polls the pid file (every 10 ms, only while nothing
lives) until it names another live process and announces again at once: no rise,
no dampening, no checks, no state. Nothing real can be faster from the same
ExaBGP, so P1 shows how far announcer's ``process`` check is from this.
Standard library only (ExaBGP runs it; no argument may contain spaces).
"""

from __future__ import annotations

import argparse
import os
import selectors
import sys
import time

POLL = 0.01


def live_pid(pid_file: str, dead: int | None) -> int | None:
    """The PID the file names if that process lives and is not ``dead``, else None."""
    try:
        with open(pid_file) as handle:
            pid = int(handle.read().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != dead else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--med", type=int, default=100)
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    log = open(args.log, "a", buffering=1) if args.log else None  # noqa: SIM115 - whole run

    def send(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if log:
            log.write(f"{time.time():.6f} > {line}\n")

    stdin = sys.stdin.fileno()
    selector = selectors.DefaultSelector()
    # ExaBGP's answers ("done") are read and dropped so its pipe never fills; EOF: it stopped
    selector.register(stdin, selectors.EVENT_READ, "stdin")
    dead: int | None = None
    while True:
        pid = live_pid(args.pid_file, dead)
        if pid is None:
            for key, _ in selector.select(POLL):
                if key.data == "stdin" and not os.read(stdin, 65536):
                    return 0
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            dead = pid
            continue
        send(f"announce route {args.prefix} next-hop self med {args.med}")
        selector.register(pidfd, selectors.EVENT_READ, "pid")
        exited = False
        while not exited:
            for key, _ in selector.select():
                if key.data == "pid":
                    send(f"withdraw route {args.prefix} next-hop self")
                    exited = True
                elif not os.read(stdin, 65536):
                    return 0
        selector.unregister(pidfd)
        os.close(pidfd)
        dead = pid


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
