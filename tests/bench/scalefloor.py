"""P3's floor: the least N HTTP checks a second on one asyncio loop, parsed by h11, cost here.

    scalefloor.py --n 2000 --port 8081 --hosts 127.0.0.1,127.0.0.2 --seconds 60

N kept-alive connections (service i to ``http://<hosts[i % len]>:<port>/svc/<i>``, as
P3's announcer services), each sending a GET once every ``--interval``: in batches of
:data:`BATCH` spread evenly over the interval, each response read by a fresh h11
connection as announcer's HTTP check reads it (the request's bytes are sent as they
are). Nothing else: no check results, no rounds, no state machine, no timers per
request, no logging. This is the design issue 12 asks for (non-blocking sockets on
one loop, h11 for HTTP) with nothing of a controller around it. Prints one JSON line:
its own CPU seconds over the window (after ``--warmup``), the window, and the requests
sent, answered and answered with another status than 200 meanwhile. Needs h11 (the
repository's venv).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time

import h11

BATCH = 32
"""Requests sent per turn of the loop (announcer's runner starts up to 32 per turn)."""


_BUFFER = memoryview(bytearray(64 * 1024))
"""One receive buffer for every connection, as announcer's HTTP check has (a plain
Protocol would have asyncio allocate 256 KiB per read)."""


class _Service(asyncio.BufferedProtocol):
    def __init__(self, request: bytes, tally: dict[str, int]) -> None:
        self.request, self.tally = request, tally
        self.transport: asyncio.Transport | None = None
        self.http = h11.Connection(h11.CLIENT)
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        assert self.transport is not None
        self.http = h11.Connection(h11.CLIENT)
        self.transport.write(self.request)
        self.tally["sent"] += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.http.receive_data(_BUFFER[:nbytes].tobytes())
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                self.tally["answered"] += 1
                self.tally["bad"] += self.status != 200
                return


def _same(service: _Service) -> _Service:
    return service


async def _run(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    hosts = args.hosts.split(",")
    tally = {"sent": 0, "answered": 0, "bad": 0}
    services: list[_Service] = []
    for i in range(args.n):
        host = hosts[i % len(hosts)]
        head = f"GET /svc/{i} HTTP/1.1\r\nHost: {host}:{args.port}\r\nUser-Agent: floor\r\n\r\n"
        service = _Service(head.encode(), tally)
        await loop.create_connection(functools.partial(_same, service), host, args.port)
        services.append(service)
    measured_from = loop.time() + args.warmup
    end = measured_from + args.seconds
    start: dict[str, float] | None = None
    finished: asyncio.Future[None] = loop.create_future()

    def send_batch(index: int, due: float) -> None:
        """Send the next batch; arm the one after (callbacks, no coroutine, as announcer's
        timers and runner start checks)."""
        nonlocal start
        now = loop.time()
        if now >= end:
            finished.set_result(None)
            return
        if start is None and now >= measured_from:
            start = {**tally, "cpu": time.process_time(), "wall": now}
        batch = services[index : index + BATCH]
        for service in batch:
            service.send()
        index = 0 if index + len(batch) >= args.n else index + len(batch)
        due += args.interval * len(batch) / args.n  # each service once per interval
        loop.call_at(due, send_batch, index, due)

    send_batch(0, loop.time())
    await finished
    if start is None:
        start = {**tally, "cpu": time.process_time(), "wall": loop.time()}
    return {
        "n": args.n,
        "cpu_s": time.process_time() - start["cpu"],
        "wall_s": loop.time() - start["wall"],
        **{key: value - start[key] for key, value in tally.items()},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hosts", required=True, help="comma-separated, as P3's endpoints")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
