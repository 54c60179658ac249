"""The DNS check: one UDP query to one server, which must answer with the wanted records.

Healthy when the server answers NOERROR with at least one record of ``rdtype``
in the answer section (following a CNAME chain the server put there), and, if
``expect`` is set, that record among them (compared as DNS data, so ``2001:db8::1``
matches ``2001:DB8:0::1`` and names match without regard to case).
NXDOMAIN, SERVFAIL and the other error codes fail with the code as the reason.

The query is built and the reply parsed with dnspython's message API; the UDP
exchange itself is a coroutine on the daemon's loop thread (see
:mod:`announcer.checks.aio`). The socket is connected to the server, so the
kernel drops datagrams from anyone else, and a server port that answers with
ICMP port unreachable fails at once as "connection refused".
"""

from __future__ import annotations

import asyncio
import socket

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from announcer.checks._text import one_line, os_error, timeout_reason
from announcer.checks.aio import addresses, budget, run_blocking, timed_arun
from announcer.checks.base import CheckResult, Clock, monotonic
from announcer.checks.specs import DnsCheckSpec, parse_expected_rdata

__all__ = ["DnsCheck"]


class DnsCheck:
    """Runs a :class:`DnsCheckSpec`."""

    def __init__(self, spec: DnsCheckSpec, *, clock: Clock = monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._qname = dns.name.from_text(spec.name)
        self._rdtype = dns.rdatatype.from_text(spec.rdtype)
        self._expected = (
            None if spec.expect is None else parse_expected_rdata(spec.rdtype, spec.expect)
        )

    @property
    def name(self) -> str:
        spec = self._spec
        server = f"[{spec.server}]" if ":" in spec.server else spec.server
        return f"dns {spec.rdtype} {spec.name} @{server}:{spec.port}"

    def run(self, timeout: float) -> CheckResult:
        return run_blocking(lambda: self.arun(timeout))

    async def arun(self, timeout: float) -> CheckResult:
        def translate(exc: Exception) -> str | None:
            if isinstance(exc, dns.exception.Timeout | TimeoutError):
                return timeout_reason(timeout)
            if isinstance(exc, dns.exception.DNSException):
                return one_line(f"bad DNS response: {type(exc).__name__}: {exc}")
            if isinstance(exc, OSError):
                return os_error(exc)
            return None

        async def body(start: float) -> tuple[bool, str]:
            async with budget(self._clock, start, timeout):
                return self._judge(await self._exchange())

        return await timed_arun(self._clock, body, translate)

    def close(self) -> None:
        """Nothing is kept between runs."""

    async def _exchange(self) -> dns.message.Message:
        """One query, and the server's reply to it."""
        spec = self._spec
        query = dns.message.make_query(self._qname, self._rdtype)
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await addresses(spec.server, spec.port, socket.SOCK_DGRAM)
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setblocking(False)
            sock.connect(address)  # UDP: no packet, nothing to wait for
            await loop.sock_sendall(sock, query.to_wire())
            response = dns.message.from_wire(await loop.sock_recv(sock, 65535))
        if not query.is_response(response):
            raise dns.query.BadResponse  # as dns.query.udp does for a reply to another query
        return response

    def _judge(self, response: dns.message.Message) -> tuple[bool, str]:
        spec = self._spec
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            return False, dns.rcode.to_text(rcode)
        records: list[dns.rdata.Rdata] = [
            record
            for rrset in response.answer
            if rrset.rdtype == self._rdtype and rrset.rdclass == dns.rdataclass.IN
            for record in rrset
        ]
        if not records:
            truncated = " (truncated reply)" if response.flags & dns.flags.TC else ""
            return False, f"no {spec.rdtype} records in the answer{truncated}"
        seen = ", ".join(sorted(record.to_text() for record in records))
        if self._expected is not None and self._expected not in records:
            return False, one_line(f"{spec.expect} not among the answers: {seen}")
        return True, one_line(f"{spec.rdtype} {seen}")
