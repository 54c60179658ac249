"""The TCP check: connect, optionally send a probe, optionally expect a reply prefix.

``send`` and ``expect`` are text, sent and compared as UTF-8; line endings are
the configuration's to write (e.g. ``"PING\\r\\n"``). A fresh connection is made
for every run: keeping one open would only prove that *that* connection lives.
The timeout covers connecting, sending and waiting for the reply, but not name
resolution, which the OS does without one (use addresses for local services).
"""

from __future__ import annotations

import socket

from announcer.checks._text import one_line, os_error, timeout_reason
from announcer.checks.base import CheckResult, Clock, monotonic, timed_run
from announcer.checks.specs import TcpCheckSpec

__all__ = ["TcpCheck"]


class TcpCheck:
    """Runs a :class:`TcpCheckSpec`."""

    def __init__(self, spec: TcpCheckSpec, *, clock: Clock = monotonic) -> None:
        self._spec = spec
        self._clock = clock

    @property
    def name(self) -> str:
        host = f"[{self._spec.host}]" if ":" in self._spec.host else self._spec.host
        return f"tcp {host}:{self._spec.port}"

    @property
    def spec(self) -> TcpCheckSpec:
        return self._spec

    def run(self, timeout: float) -> CheckResult:
        def translate(exc: Exception) -> str | None:
            if isinstance(exc, TimeoutError):
                return timeout_reason(timeout)
            return os_error(exc) if isinstance(exc, OSError) else None

        return timed_run(self._clock, lambda start: self._run(start + timeout), translate)

    def close(self) -> None:
        """Nothing is kept between runs."""

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def _run(self, deadline: float) -> tuple[bool, str]:
        spec = self._spec
        address = (spec.host, spec.port)
        with socket.create_connection(address, timeout=self._remaining(deadline)) as sock:
            if spec.send is not None:
                sock.settimeout(self._remaining(deadline))
                sock.sendall(spec.send.encode())
            if spec.expect is None:
                return True, "connected"
            want = spec.expect.encode()
            reply = b""
            while len(reply) < len(want) and want.startswith(reply):
                sock.settimeout(self._remaining(deadline))
                chunk = sock.recv(len(want) - len(reply))
                if not chunk:
                    break
                reply += chunk
        if reply == want:
            return True, one_line(f"reply starts with {spec.expect!r}")
        if not reply:
            return False, "connection closed without a reply"
        seen = reply.decode(errors="replace")
        return False, one_line(f"reply {seen!r} does not start with {spec.expect!r}")
