"""Fixtures starting the real servers of check_servers.py, and stopping them after each test."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from check_servers import ConnectionHandler, DnsServer, HttpServer, TcpServer


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A plain-HTTP server; set ``routes`` to say what it answers."""
    server = HttpServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tcp_server() -> Iterator[Callable[[ConnectionHandler], TcpServer]]:
    """Starts TCP listeners that serve each connection with the given handler."""
    servers: list[TcpServer] = []

    def start(handle: ConnectionHandler) -> TcpServer:
        server = TcpServer(handle)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def dns_server() -> Iterator[Callable[..., DnsServer]]:
    """Starts UDP DNS responders; keyword arguments are DnsServer's fields."""
    servers: list[DnsServer] = []

    def start(**fields: Any) -> DnsServer:
        server = DnsServer(**fields)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound and released, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
