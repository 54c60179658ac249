"""P1 (c)'s CPU floor: the least a fresh-connection HTTP check every 0.1 s can cost here.

    checkfloor.py --url http://192.0.2.10/health --mode asyncio --seconds 6

Every ``--interval`` seconds: a new TCP connection, one GET, read until the server
closes, close. Nothing else: no HTTP parsing beyond finding the status line, no
state, no timers but the next run's. ``--mode asyncio`` does it on an asyncio loop
(a non-blocking socket, a Protocol), as announcer's checks run; ``--mode blocking``
with a blocking socket on the main thread, as a check thread would. Prints one JSON
line: its own CPU seconds (user and system) over the window, the window, the checks
run and the ones that failed. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from urllib.parse import urlsplit


def _request(url: str) -> tuple[tuple[str, int], bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    head = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: floor\r\n\r\n"
    return (host, port), head.encode()


def _ok(response: bytes) -> bool:
    return response.split(b" ", 2)[1:2] == [b"200"]


def blocking(
    address: tuple[str, int], request: bytes, interval: float, seconds: float
) -> tuple[int, int]:
    """(checks run, checks failed)."""
    checks, failed, due, end = 0, 0, time.monotonic(), time.monotonic() + seconds
    while time.monotonic() < end:
        due += interval
        checks += 1
        try:
            with socket.create_connection(address, timeout=1.0) as sock:
                sock.sendall(request)
                response = b""
                while chunk := sock.recv(65536):
                    response += chunk
            failed += not _ok(response)
        except OSError:
            failed += 1
        time.sleep(max(0.0, due - time.monotonic()))
    return checks, failed


class _Read(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[bytes]) -> None:
        self.request, self.done, self.response = request, done, b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.response += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.response)


async def _one(address: tuple[str, int], request: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, address)
    except OSError:
        sock.close()
        raise
    await loop.create_connection(lambda: _Read(request, done), sock=sock)
    return await asyncio.wait_for(done, 1.0)


async def on_loop(
    address: tuple[str, int], request: bytes, interval: float, seconds: float
) -> tuple[int, int]:
    """(checks run, checks failed)."""
    loop = asyncio.get_running_loop()
    checks, failed, due, end = 0, 0, loop.time(), loop.time() + seconds
    while loop.time() < end:
        due += interval
        checks += 1
        try:
            failed += not _ok(await _one(address, request))
        except (OSError, TimeoutError):
            failed += 1
        await asyncio.sleep(max(0.0, due - loop.time()))
    return checks, failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("asyncio", "blocking"), required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    address, request = _request(args.url)
    cpu, began = time.process_time(), time.monotonic()
    if args.mode == "blocking":
        checks, failed = blocking(address, request, args.interval, args.seconds)
    else:
        checks, failed = asyncio.run(on_loop(address, request, args.interval, args.seconds))
    cpu, wall = time.process_time() - cpu, time.monotonic() - began
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "checks": checks, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
