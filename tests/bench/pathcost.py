"""The whole per-check path in instructions: announcer's process beside P3's floor, pace-free.

    .venv/bin/python -m tests.bench.pathcost                 # N = 200, some 5 minutes
    .venv/bin/python -m tests.bench.pathcost -n 200 --seconds 10 --only announcer

announcer runs as ExaBGP starts it (a stand-in here answers every command ``done``),
with N services of one HTTP check a second each against :mod:`tests.bench.checkserver`
on 127.0.0.1 over kept-alive connections, as in P3, under valgrind's callgrind. Once
every service is UP and the requests flow, its counters are zeroed
(``callgrind_control -z``) and, ``--seconds`` later, dumped: the instructions the whole
process ran, divided by the requests it sent meanwhile. Requests are counted by
callgrind too, as calls to the socket module's ``sock_send`` (one per request: the
endpoints answer at once, so no request is ever sent in parts), so the window's edges
cannot skew the figure the way a count read from ``status`` would (the rounds come in
bursts of N). :mod:`tests.bench.scalefloor` is counted the same way.

Unlike P3's CPU time these figures do not move with the machine's pace (repeated runs
agree within about 1 %), so one run of each commit compares them. They count
instructions, not time: a cache miss costs one, as does a system call (the kernel's
side is not counted at all). Needs valgrind (Debian's ``valgrind``); no root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from announcer.errors import ControlError

from .common import ANNOUNCER_BIN, CHECKSERVER, PYTHON
from .tools import control_request

SETTLE = 3.0
"""Seconds between the requests flowing in full and the counters being zeroed."""
START_LIMIT = 900.0
"""Seconds a process under callgrind may take to reach its steady state (N = 200: about 90)."""
SEND = "sock_send"
"""The C function one request's bytes leave by (asyncio's transports call ``sock.send``)."""


def dump_counts(text: str, function: str = SEND) -> tuple[int, int]:
    """(instructions, calls to ``function``) in a callgrind dump's text."""
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if total is None:
        raise RuntimeError("the callgrind dump has no totals line")
    names: dict[str, str] = {}
    callee: str | None = None
    calls = 0
    for line in text.splitlines():
        named = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if named is not None:
            kind, ident, name = named.groups()
            if name:
                names[ident] = name
            if kind == "cfn":
                callee = names.get(ident)
        elif line.startswith("calls=") and callee == function:
            calls += int(line[6:].split()[0])
    return int(total.group(1)), calls


def _served(stats: Path) -> int:
    """Requests the endpoint has answered so far."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10.0)
        sock.connect(str(stats))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return int(json.loads(data)["requests"])


def _wait(what: str, ready: Callable[[], bool], limit: float = START_LIMIT) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {limit:g} s")
        time.sleep(1.0)


def _acks(stdout: IO[bytes], stdin: IO[bytes]) -> None:
    """ExaBGP's side: every command answered ``done`` (until the pipes close)."""
    try:
        for _ in stdout:
            stdin.write(b"done\n")
            stdin.flush()
    except (OSError, ValueError):
        pass  # the process ended


def _config(tmp: Path, n: int, port: int) -> Path:
    services = "".join(
        f'[[service]]\nname = "s{i:04d}"\nprefixes = ["198.19.{i // 256}.{i % 256}/32"]\n'
        f'[[service.checks]]\ntype = "http"\nurl = "http://127.0.0.1:{port}/s{i}"\n'
        for i in range(n)
    )
    path = tmp / "announcer.toml"
    # No stall guard: under callgrind a turn may take seconds. fast_interval = interval:
    # RISING at four checks a second would take callgrind longer than the rounds allow.
    path.write_text(
        f'state_dir = "{tmp / "state"}"\ncontrol_socket = "{tmp / "control.sock"}"\n'
        f'maintenance_file = "{tmp / "maintenance"}"\nneighbor = "*"\nnext_hop = "self"\n'
        'include = ""\nstall_limit = 3600\n'
        "[defaults]\ninterval = 1.0\nfast_interval = 1.0\nrise = 3\nfall = 3\n"
        "address_guard = false\ndampening = { changes = 0 }\n" + services
    )
    return path


class Counted:
    """A process under callgrind: its counters zeroed, then dumped and read."""

    def __init__(self, argv: list[str], out: Path, **popen: object) -> None:
        self.out = out
        cg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
        self.proc = subprocess.Popen([*cg, *argv], **popen)  # type: ignore[call-overload]

    def control(self, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(self.proc.pid)], capture_output=True, check=True
        )

    def window(self, seconds: float) -> tuple[int, int]:
        """Instructions and requests over ``seconds`` from now."""
        self.control("-z")
        time.sleep(seconds)
        self.control("-d")
        dumps = sorted(self.out.parent.glob(f"{self.out.name}.{self.proc.pid}.*"))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        return dump_counts(dumps[-1].read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _announcer(tmp: Path, n: int, port: int, stats: Path, seconds: float) -> tuple[int, int]:
    config = _config(tmp, n, port)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    counted = Counted(
        [str(PYTHON), str(ANNOUNCER_BIN), "run", "--config", str(config)],
        tmp / "announcer.cg",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp / "announcer.err").open("wb"),
        env=env,
    )
    proc = counted.proc
    assert proc.stdout is not None and proc.stdin is not None
    threading.Thread(target=_acks, args=(proc.stdout, proc.stdin), daemon=True).start()
    sock = tmp / "control.sock"

    def all_up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"announcer exited: {(tmp / 'announcer.err').read_text()[-800:]}")
        try:
            services = control_request(sock, "status", timeout=120.0)["services"]
        except (OSError, ControlError):
            return False  # not listening yet
        return sum(s.get("health") == "UP" for s in services.values()) == n

    try:
        _wait("every service UP", all_up)
        _flowing(stats, n)
        return counted.window(seconds)
    finally:
        proc.stdin.close()
        counted.stop()


def _flowing(stats: Path, n: int) -> None:
    """Wait until the endpoint has seen N requests a second for a second, then settle."""
    before = _served(stats)
    _wait("N requests a second", lambda: _served(stats) - before >= n, limit=60.0)
    time.sleep(SETTLE)


def _floor(tmp: Path, n: int, port: int, stats: Path, seconds: float) -> tuple[int, int]:
    floor = Path(__file__).with_name("scalefloor.py")
    argv = [str(PYTHON), str(floor), "--n", str(n), "--port", str(port)]
    argv += ["--hosts", "127.0.0.1", "--seconds", "36000", "--warmup", "0"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    counted = Counted(
        argv, tmp / "floor.cg", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        before = _served(stats)
        _wait("the floor's first requests", lambda: _served(stats) - before >= 3 * n)
        _flowing(stats, n)
        return counted.window(seconds)
    finally:
        counted.stop()


def measure(n: int, seconds: float, only: str | None = None) -> dict[str, dict[str, float]]:
    """Instructions per request of announcer and of the floor (or ``only`` one of them)."""
    if shutil.which("callgrind_control") is None:
        raise RuntimeError("pathcost needs valgrind (apt install valgrind)")
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        stats, ready = tmp / "stats.sock", tmp / "ready"
        port = _free_port()
        argv = [str(PYTHON), str(CHECKSERVER), "--bind", f"127.0.0.1:{port}"]
        argv += ["--stats", str(stats), "--ready-file", str(ready)]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            _wait("the endpoint", ready.exists, limit=30.0)
            sides = {"announcer": _announcer, "floor": _floor}
            for side, run in sides.items():
                if only in (None, side):
                    instructions, requests = run(tmp, n, port, stats, seconds)
                    if requests == 0:
                        raise RuntimeError(f"{side} sent no request in the window")
                    out[side] = {
                        "instructions": instructions,
                        "requests": requests,
                        "per_request": instructions / requests,
                    }
        finally:
            server.terminate()
            server.wait(30)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=200, help="services (checks a second)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the counted window")
    parser.add_argument("--only", choices=("announcer", "floor"))
    args = parser.parse_args(argv)
    figures = measure(args.n, args.seconds, args.only)
    for side, f in figures.items():
        print(
            f"{side} N={args.n}: {f['per_request']:,.0f} instructions per check "
            f"({f['instructions']:,} over {f['requests']:,} requests)"
        )
    if len(figures) == 2:
        ratio = figures["announcer"]["per_request"] / figures["floor"]["per_request"]
        print(f"announcer / floor: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
