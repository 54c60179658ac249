"""Health endpoints for the cost-at-scale benchmark, run as a script inside a lab namespace.

One thread, one ``selectors`` loop, HTTP/1.1 keep-alive: answers every ``GET``
with ``200 ok`` whatever the path (each service checks its own path), closes
when the client asks (``Connection: close``, as curl's one-shot requests end)
or goes away. Counts requests, and per path whether each came on time: within
``--tolerance`` of ``--interval`` after the previous one for that path (a check
that is late, or early after a late one, is not on time). A Unix socket
(``--stats``, reachable from the root namespace, Unix sockets are not per network
namespace) answers each connection with
``{"requests": N, "on_time": K, "connections": M}``. Cheap on purpose: its own
CPU is not what is measured, and it must keep up with 1,000 checks per second.
``--lab`` only marks the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import time
from pathlib import Path

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nServer: bench\r\n\r\nok\n"
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Server:
    def __init__(
        self, binds: list[tuple[str, int]], stats: Path, interval: float, tolerance: float
    ) -> None:
        self.interval = interval
        self.tolerance = tolerance
        self.on_time = 0
        self.last: dict[bytes, float] = {}
        self.sel = selectors.DefaultSelector()
        self.requests = 0
        self.connections = 0
        self.buffers: dict[socket.socket, bytes] = {}
        for host, port in binds:
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host, port))
            lsock.listen(1024)
            lsock.setblocking(False)
            self.sel.register(lsock, selectors.EVENT_READ, "listen")
        stats.unlink(missing_ok=True)
        ssock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ssock.bind(str(stats))
        ssock.listen(16)
        ssock.setblocking(False)
        self.sel.register(ssock, selectors.EVENT_READ, "stats")

    def serve(self) -> None:
        while True:
            for key, _ in self.sel.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "listen":
                    self._accept(sock)
                elif key.data == "stats":
                    self._stats(sock)
                else:
                    self._read(sock)

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                conn, _ = lsock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            self.buffers[conn] = b""
            self.sel.register(conn, selectors.EVENT_READ, "conn")

    def _stats(self, ssock: socket.socket) -> None:
        try:
            conn, _ = ssock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.setblocking(True)
            body = {
                "requests": self.requests,
                "on_time": self.on_time,
                "connections": self.connections,
            }
            conn.sendall(json.dumps(body).encode() + b"\n")

    def _close(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.buffers.pop(conn, None)
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        buffer = self.buffers[conn] + data
        out = b""
        close = False
        while b"\r\n\r\n" in buffer:
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            self.requests += 1
            now = time.monotonic()
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            previous = self.last.get(path)
            if previous is not None and abs(now - previous - self.interval) <= self.tolerance:
                self.on_time += 1
            self.last[path] = now
            lower = head.lower()
            if b"connection: close" in lower or b" http/1.0" in lower.split(b"\r\n", 1)[0]:
                out += CLOSE_RESPONSE
                close = True
                break
            out += RESPONSE
        self.buffers[conn] = buffer
        if out:
            try:
                conn.sendall(out)  # tiny answers: the socket buffer always has room
            except OSError:
                close = True
        if close:
            self._close(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", action="append", required=True, help="ADDRESS:PORT")
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="the checks' interval")
    parser.add_argument("--tolerance", type=float, default=0.1, help="on time within this")
    parser.add_argument("--lab", default="")
    args = parser.parse_args()
    binds = []
    for item in args.bind:
        host, _, port = item.rpartition(":")
        binds.append((host, int(port)))
    server = Server(binds, args.stats, args.interval, args.tolerance)
    tmp = args.ready_file.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.rename(args.ready_file)
    server.serve()


if __name__ == "__main__":
    main()
