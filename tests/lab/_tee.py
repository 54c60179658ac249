"""ExaBGP's API process for the wire transcript: runs the controller and copies every
byte it writes to ExaBGP into a file as well, so a test reads exactly what ExaBGP read.

    python _tee.py OUT CODE -- ARGV...

``CODE`` is the source tree whose ``announcer`` package runs (its directory becomes the
child's working directory and ``PYTHONPATH``, so an older checkout runs as it was).
stdin and stderr are the controller's own (ExaBGP's pipe, ExaBGP's log); only stdout
passes through here. SIGTERM and SIGINT are passed on to the controller. When the
controller ends, this process stays (its exit status goes to ``OUT.exit``) until it is
signalled or ExaBGP is gone: ExaBGP would otherwise start the controller again and the
transcript would grow past the story's end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType


def main(argv: list[str]) -> int:
    out, code, sep, *command = argv
    if sep != "--" or not command:
        sys.stderr.write("usage: _tee.py OUT CODE -- ARGV...\n")
        return 2
    env = {**os.environ, "PYTHONPATH": code}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=code, env=env)
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    assert child.stdout is not None
    with open(out, "ab", buffering=0) as copy:
        # whatever the pipe has, at once: ExaBGP waits for these bytes
        while chunk := os.read(child.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            copy.write(chunk)
    status = child.wait()
    with open(out + ".exit", "w") as done:
        done.write(f"{status}\n")
    parent = os.getppid()
    while not stopping and os.getppid() == parent:
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
