"""A lab node's web service, run as a script inside the node's namespace.

Answers ``GET /`` with the node's name and ``GET /health`` with 200 ``ok`` (or 503
while the ``--unhealthy-flag`` file exists). Binds every ``--bind`` address (IPv4 or
IPv6) on ``--port``; writes ``--pid-file`` (as a proxy such as nginx does: the ``process``
check and the benchmark's floor follow it), then ``--ready-file``, once all sockets listen.
No reverse DNS (``http.server``'s own ``server_bind`` calls ``getfqdn``), no request logging.
``--lab`` only marks the command line, so the lab can find its leftovers.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer without the reverse-DNS lookup at bind time."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256
    node_name = ""
    unhealthy_flag: Path | None = None

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.node_name
        self.server_port = int(self.server_address[1])


class Server6(Server):
    """The IPv6 flavour (IPv6 only, so it does not clash with the IPv4 socket)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class Handler(BaseHTTPRequestHandler):
    """``/`` names the node, ``/health`` reports the flag file."""

    protocol_version = "HTTP/1.0"
    server_version = "lab-node"
    sys_version = ""

    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, Server)
        if self.path.split("?", 1)[0] == "/health":
            flag = server.unhealthy_flag
            healthy = flag is None or not flag.exists()
            code, body = (200, "ok\n") if healthy else (503, "unhealthy\n")
        else:
            code, body = 200, f"{server.node_name}\n"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--unhealthy-flag", type=Path)
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument("--lab", default="")
    args = parser.parse_args()

    servers: list[Server] = []
    for address in args.bind:
        cls = Server6 if ipaddress.ip_address(address).version == 6 else Server
        cls.node_name = args.name
        cls.unhealthy_flag = args.unhealthy_flag
        servers.append(cls((address, args.port), Handler))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    for path in filter(None, (args.pid_file, args.ready_file)):
        # written whole, then renamed: a reader never sees a half-written PID
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.rename(path)
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    main()
