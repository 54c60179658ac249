"""Exec wrapper ExaBGP runs in front of a health checker: wait for a go, then exec.

    cgwrap.py --wait-file PATH [--poll SECONDS] [--stamp PATH] -- PROGRAM ARGS...

Waits (polling every ``--poll`` seconds, default 0.02, at most an hour) until
``--wait-file`` exists, writes the wall-clock time to ``--stamp`` and execs the
program (same PID, same stdin/stdout, so ExaBGP talks to the program directly).
Meanwhile the benchmark moves this PID into its cgroup from the outside (``ip
netns exec`` mounts a sysfs of its own, without /sys/fs/cgroup, so the wrapper
cannot join it itself); the program and every child it forks are then accounted
there from their first instruction. Standard library only; no argument may
contain spaces (ExaBGP splits ``run`` on whitespace).
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: cgwrap.py --wait-file F [--poll S] [--stamp F] -- PROGRAM ARGS...")
    split = argv.index("--")
    options, program = argv[:split], argv[split + 1 :]
    wait_file = stamp = None
    poll = 0.02
    i = 0
    while i < len(options):
        key, value = options[i], options[i + 1]
        if key == "--wait-file":
            wait_file = value
        elif key == "--poll":
            poll = float(value)
        elif key == "--stamp":
            stamp = value
        else:
            sys.exit(f"cgwrap: unknown option {key}")
        i += 2
    if wait_file is not None:
        deadline = time.monotonic() + 3600
        while not os.path.exists(wait_file) and time.monotonic() < deadline:
            time.sleep(poll)
    if stamp is not None:
        with open(stamp + ".tmp", "w") as out:
            out.write(f"{time.time():.6f}\n")
        os.rename(stamp + ".tmp", stamp)
    os.execv(program[0], program)  # noqa: S606 - replacing ourselves is the point


if __name__ == "__main__":
    main(sys.argv[1:])
