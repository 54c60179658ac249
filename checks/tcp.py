"""The TCP check: connect, optionally send a probe, optionally expect a reply prefix.

``send`` and ``expect`` are text, sent and compared as UTF-8; line endings are
the configuration's to write (e.g. ``"PING\\r\\n"``). A fresh connection is made
for every run: keeping one open would only prove that *that* connection lives.
The timeout covers connecting, sending and waiting for the reply, and name
resolution too where the loop can give up waiting for it (use addresses for
local services: the OS resolver's thread cannot be stopped). The check is a
coroutine on the daemon's loop thread (see :mod:`announcer.checks.aio`).
"""

from __future__ import annotations

import asyncio

from announcer.checks._text import one_line, os_error, timeout_reason
from announcer.checks.aio import budget, open_socket, run_blocking, timed_arun
from announcer.checks.base import CheckResult, Clock, monotonic
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

    def run(self, timeout: float) -> CheckResult:
        return run_blocking(lambda: self.arun(timeout))

    async def arun(self, timeout: float) -> CheckResult:
        def translate(exc: Exception) -> str | None:
            if isinstance(exc, TimeoutError):
                return timeout_reason(timeout)
            return os_error(exc) if isinstance(exc, OSError) else None

        async def body(start: float) -> tuple[bool, str]:
            async with budget(self._clock, start, timeout):
                return await self._run()

        return await timed_arun(self._clock, body, translate)

    def close(self) -> None:
        """Nothing is kept between runs."""

    async def _run(self) -> tuple[bool, str]:
        spec = self._spec
        loop = asyncio.get_running_loop()
        with await open_socket(spec.host, spec.port) as sock:
            if spec.send is not None:
                await loop.sock_sendall(sock, spec.send.encode())
            if spec.expect is None:
                return True, "connected"
            want = spec.expect.encode()
            reply = b""
            while len(reply) < len(want) and want.startswith(reply):
                chunk = await loop.sock_recv(sock, len(want) - len(reply))
                if not chunk:
                    break
                reply += chunk
        if reply == want:
            return True, one_line(f"reply starts with {spec.expect!r}")
        if not reply:
            return False, "connection closed without a reply"
        seen = reply.decode(errors="replace")
        return False, one_line(f"reply {seen!r} does not start with {spec.expect!r}")
