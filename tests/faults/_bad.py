"""Servers that misbehave, for the check faults (run in node1's namespace, on loopback).

* ``silent-http``: accepts TCP connections and never answers (each closed 5 s later, so
  the server's own descriptors stay bounded);
* ``trickle-http``: answers ``HTTP/1.1 200 OK`` one byte a second;
* ``silent-dns``: a UDP socket that reads every query and answers none.

``--lab`` only marks the command line.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import deque

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def silent_http(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    held: deque[tuple[float, socket.socket]] = deque()
    listener.settimeout(0.5)
    while True:
        try:
            conn, _ = listener.accept()
            held.append((time.monotonic(), conn))
        except TimeoutError:
            pass
        while held and time.monotonic() - held[0][0] > 5.0:
            held.popleft()[1].close()


def trickle_http(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(256)

    def trickle(conn: socket.socket) -> None:
        with conn:
            try:
                for byte in RESPONSE:
                    conn.sendall(bytes([byte]))
                    time.sleep(1.0)
            except OSError:
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=trickle, args=(conn,), daemon=True).start()


def silent_dns(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        sock.recvfrom(4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["silent-http", "trickle-http", "silent-dns"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lab", default="")
    args = parser.parse_args()
    {"silent-http": silent_http, "trickle-http": trickle_http, "silent-dns": silent_dns}[args.mode](
        args.port
    )


if __name__ == "__main__":
    main()
