"""Long-lived TCP streams for the drain-forwarding lab, run as a script in a namespace.

``server``: on each connection, say the node's name on a line, then echo every byte.
``client``: open ``--count`` connections, then on each one, until ``--stop-file``
exists, send ``CHUNK`` bytes (several full-size segments) and read them back; at the
end close each connection and write one JSON result per connection to ``--result``:
the node that answered, the bytes echoed, and the error that broke it (None: intact)
with its wall-clock time (``at``), or the time it ended cleanly (``ended``).
``--end-file``, once it holds ``NODE START SPREAD``, gives the streams NODE served a
finite life: each ends cleanly (as at the stop) at START plus a share of SPREAD seconds
(wall clock), one after the other, as a server's clients would go away on their own.
``--lab`` only marks the command line, so the lab can find its leftovers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from pathlib import Path

CHUNK = 16384
"""Bytes per round trip: a dozen full-size segments each way."""
PAUSE = 0.05
ENDS = 8
"""With ``--end-file``: the streams end in this many waves over SPREAD seconds."""


def serve(bind: str, port: int, name: str, ready: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind, port))
    listener.listen(256)
    ready.write_text("ready\n")

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(f"{name}\n".encode())
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def end_time(end: Path | None, node: object, index: int) -> float | None:
    """When the stream ``index`` served by ``node`` is to end (None: not asked)."""
    if end is None:
        return None
    try:
        name, start, spread = end.read_text().split()
        if name != node:
            return None
        return float(start) + float(spread) * (index % ENDS) / ENDS
    except (OSError, ValueError):
        return None  # not written yet


def stream(
    address: str, port: int, stop: Path, end: Path | None, index: int, out: dict[str, object]
) -> None:
    payload = os.urandom(CHUNK)
    try:
        conn = socket.create_connection((address, port), timeout=5)
    except OSError as err:
        out["error"] = f"connect: {err}"
        return
    with conn:
        try:
            reader = conn.makefile("rb")
            out["node"] = reader.readline().decode().strip()
            while not stop.exists():
                ends = end_time(end, out["node"], index)
                if ends is not None and time.time() >= ends:
                    break
                conn.sendall(payload)
                got = reader.read(CHUNK)
                if got != payload:
                    raise OSError(f"echo mismatch ({len(got)} bytes)")
                out["echoed"] = int(str(out.get("echoed", 0))) + len(got)
                time.sleep(PAUSE)
            conn.shutdown(socket.SHUT_WR)
            reader.read()  # until the server's FIN: the connection ends cleanly
            out["ended"] = time.time()
        except OSError as err:
            out["error"] = f"{type(err).__name__}: {err}"
            out["at"] = time.time()


def client(
    address: str, port: int, count: int, files: tuple[Path, Path, Path | None, Path]
) -> None:
    ready, stop, end, result = files
    outs: list[dict[str, object]] = [
        {"node": None, "echoed": 0, "error": None} for _ in range(count)
    ]
    threads = [
        threading.Thread(target=stream, args=(address, port, stop, end, i, o), daemon=True)
        for i, o in enumerate(outs)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(o["node"] is None and not o["error"] for o in outs):
        time.sleep(0.05)
    publish(ready, json.dumps([o["node"] for o in outs]))
    for t in threads:
        t.join()
    publish(result, json.dumps(outs))


def publish(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all: the lab polls for the file and reads it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["server", "client"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--name", default="")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--end-file", type=Path)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--lab", default="")
    args = parser.parse_args()
    if args.mode == "server":
        serve(args.address, args.port, args.name, args.ready_file)
    else:
        files = (args.ready_file, args.stop_file, args.end_file, args.result)
        client(args.address, args.port, args.count, files)


if __name__ == "__main__":
    main()
