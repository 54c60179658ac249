"""The DNS check against a tiny UDP responder on 127.0.0.1 built with dnspython."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dns.rcode
from check_servers import DnsServer

from announcer.checks import DnsCheckSpec, build_check

StartDns = Callable[..., DnsServer]

ZONE = {
    ("www.example.test.", "A"): ["192.0.2.10", "192.0.2.11"],
    ("www.example.test.", "AAAA"): ["2001:db8::10"],
    ("alias.example.test.", "CNAME"): ["www.example.test."],
    ("mail.example.test.", "MX"): ["10 mx.example.test."],
}


def dns_check(server: DnsServer, name: str, **fields: Any) -> Any:
    spec = DnsCheckSpec(type="dns", name=name, server="127.0.0.1", port=server.port, **fields)
    return build_check(spec)


def test_answer_with_records_passes(dns_server: StartDns) -> None:
    """NOERROR with A records is healthy; the reason lists them."""
    server = dns_server(records=ZONE)
    check = dns_check(server, "www.example.test")
    result = check.run(2.0)
    assert result.ok, result
    assert result.reason == "A 192.0.2.10, 192.0.2.11"
    assert check.name == f"dns A www.example.test @127.0.0.1:{server.port}"
    assert server.queries == 1


def test_expected_value_among_answers(dns_server: StartDns) -> None:
    """``expect`` passes when among the answers (compared as addresses, not text)."""
    server = dns_server(records=ZONE)
    assert dns_check(server, "www.example.test", expect="192.0.2.11").run(2.0).ok
    aaaa = dns_check(server, "www.example.test", rdtype="AAAA", expect="2001:DB8:0::10")
    assert aaaa.run(2.0).ok


def test_expected_value_missing_fails(dns_server: StartDns) -> None:
    """``expect`` not among the answers fails, showing what was seen."""
    server = dns_server(records=ZONE)
    result = dns_check(server, "www.example.test", expect="192.0.2.99").run(2.0)
    assert not result.ok
    assert result.reason == "192.0.2.99 not among the answers: 192.0.2.10, 192.0.2.11"


def test_cname_chain_is_followed_in_the_answer(dns_server: StartDns) -> None:
    """Records of the wanted type behind a CNAME in the same answer count."""
    server = dns_server(records=ZONE)
    assert dns_check(server, "alias.example.test", expect="192.0.2.10").run(2.0).ok


def test_names_compare_without_case(dns_server: StartDns) -> None:
    """An expected MX compares as DNS data: case and the final dot do not matter."""
    server = dns_server(records=ZONE)
    check = dns_check(server, "mail.example.test", rdtype="MX", expect="10 MX.Example.Test")
    assert check.run(2.0).ok


def test_nxdomain_fails(dns_server: StartDns) -> None:
    """A name the server does not know: NXDOMAIN."""
    server = dns_server(records=ZONE)
    result = dns_check(server, "nope.example.test").run(2.0)
    assert not result.ok
    assert result.reason == "NXDOMAIN"


def test_servfail_fails(dns_server: StartDns) -> None:
    """SERVFAIL is reported as such."""
    server = dns_server(records=ZONE, rcode=dns.rcode.SERVFAIL)
    result = dns_check(server, "www.example.test").run(2.0)
    assert not result.ok
    assert result.reason == "SERVFAIL"


def test_no_records_of_the_type_fails(dns_server: StartDns) -> None:
    """NOERROR without records of the wanted type (NODATA) fails."""
    server = dns_server(records=ZONE)
    result = dns_check(server, "mail.example.test", rdtype="AAAA").run(2.0)
    assert not result.ok
    assert result.reason == "no AAAA records in the answer"


def test_silent_server_times_out(dns_server: StartDns) -> None:
    """A server that never answers: timeout, within generous bounds."""
    server = dns_server(records=ZONE, silent=True)
    check = dns_check(server, "www.example.test")
    started = time.monotonic()
    result = check.run(0.5)
    assert time.monotonic() - started < 3.0
    assert not result.ok
    assert result.reason == "timeout after 0.5s"
    assert server.queries >= 1
