"""Long-lived TCP streams through the lab: a server on each node, many clients in one process.

Server (in a node's namespace): every connection gets the node's name on a line, then a
line every ``--every`` seconds for as long as it lasts.

Client (in the client namespace): opens ``--count`` connections to ``--host:--port`` (each
from its own source port, so the router's L4 hash spreads them over the nodes), reads the
name of the node that answered, then keeps reading every stream. Each connection's end is
written as one JSON line on stdout (``{"conn", "node", "ended", "how"}``, ``how`` being
``reset``, ``eof`` or an error name); ``{"ready": N, "nodes": {...}}`` once all are open,
and ``{"done": true}`` when stdin closes (the end of the test), after which it exits.
``--lab`` only marks the command line.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import threading
import time


def serve(host: str, port: int, name: str, every: float) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(256)

    def stream(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(f"{name}\n".encode())
                n = 0
                while True:
                    time.sleep(every)
                    n += 1
                    conn.sendall(f"tick {n}\n".encode())
            except OSError:
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=stream, args=(conn,), daemon=True).start()


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def client(host: str, port: int, count: int) -> None:
    selector = selectors.DefaultSelector()
    nodes: dict[int, str] = {}
    buffers: dict[int, bytes] = {}
    socks: dict[int, socket.socket] = {}
    for i in range(count):
        sock = socket.create_connection((host, port), timeout=5.0)
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            line += chunk
        name, _, rest = line.partition(b"\n")
        nodes[i] = name.decode(errors="replace")
        buffers[i] = rest
        sock.setblocking(False)
        socks[i] = sock
        selector.register(sock, selectors.EVENT_READ, i)
    summary: dict[str, int] = {}
    for node in nodes.values():
        summary[node] = summary.get(node, 0) + 1
    emit({"ready": count, "nodes": summary, "at": time.time()})
    selector.register(sys.stdin, selectors.EVENT_READ, -1)
    while True:
        for key, _ in selector.select(1.0):
            i = int(key.data)
            if i == -1:
                if not sys.stdin.readline():
                    emit({"done": True, "open": len(socks), "at": time.time()})
                    return
                continue
            sock = socks[i]
            how = ""
            try:
                if not sock.recv(4096):
                    how = "eof"
            except ConnectionResetError:
                how = "reset"
            except BlockingIOError:
                continue
            except OSError as exc:
                how = type(exc).__name__
            if how:
                emit({"conn": i, "node": nodes[i], "ended": time.time(), "how": how})
                selector.unregister(sock)
                sock.close()
                del socks[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--name", default="")
    parser.add_argument("--every", type=float, default=0.05)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--lab", default="")
    args = parser.parse_args()
    if args.mode == "server":
        serve(args.host, args.port, args.name, args.every)
    else:
        client(args.host, args.port, args.count)


if __name__ == "__main__":
    main()
