"""Spec validation: good configs load with their defaults, bad ones fail naming the field."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from announcer.checks import (
    CheckSpec,
    CommandCheckSpec,
    DnsCheckSpec,
    FileCheckSpec,
    HttpCheckSpec,
    TcpCheckSpec,
)
from announcer.checks.specs import status_ranges

SPEC: TypeAdapter[CheckSpec] = TypeAdapter(CheckSpec)


def load(data: dict[str, Any]) -> CheckSpec:
    return SPEC.validate_python(data)


def test_http_defaults() -> None:
    """An http spec needs only a url; the rest defaults as documented."""
    spec = load({"type": "http", "url": "http://127.0.0.1:8080/health"})
    assert isinstance(spec, HttpCheckSpec)
    assert spec.method == "GET"
    assert spec.expect_status == ("200-399",)
    assert status_ranges(spec.expect_status) == ((200, 399),)
    assert spec.body_regex is None
    assert spec.headers == {}
    assert spec.verify_tls is True
    assert spec.ca_file is None
    assert spec.retries == 1


def test_http_full() -> None:
    """Status lists mix codes and ranges, the regex is compiled, the method is upper-cased."""
    spec = load(
        {
            "type": "http",
            "url": "https://10.0.0.1/ready",
            "method": "head",
            "expect_status": [200, "204", "300-302"],
            "headers": {"Host": "www.example.com"},
            "ca_file": "/etc/ssl/local-ca.pem",
            "retries": 0,
        }
    )
    assert isinstance(spec, HttpCheckSpec)
    assert spec.method == "HEAD"
    assert status_ranges(spec.expect_status) == ((200, 200), (204, 204), (300, 302))
    spec = load({"type": "http", "url": "http://h/", "body_regex": "^ok", "expect_status": 200})
    assert isinstance(spec, HttpCheckSpec)
    assert isinstance(spec.body_regex, re.Pattern)
    assert spec.body_regex.pattern == "^ok"
    assert spec.expect_status == (200,)


def test_specs_are_frozen_and_json_round_trip() -> None:
    """Specs cannot be changed after loading, and dump back to what loads them."""
    spec = load({"type": "http", "url": "http://h/", "body_regex": "ok"})
    assert isinstance(spec, HttpCheckSpec)
    with pytest.raises(ValidationError):
        spec.url = "http://other/"
    assert load(spec.model_dump(mode="json")) == spec


def test_each_type_picks_its_model() -> None:
    """The ``type`` field selects the model."""
    assert isinstance(load({"type": "tcp", "host": "::1", "port": 22}), TcpCheckSpec)
    assert isinstance(load({"type": "dns", "name": "a.", "server": "::1"}), DnsCheckSpec)
    assert isinstance(load({"type": "command", "argv": ["true"]}), CommandCheckSpec)
    assert isinstance(load({"type": "file", "path": "/x"}), FileCheckSpec)


def test_dns_normalises() -> None:
    """rdtype is upper-cased, the server address normalised, the port defaults to 53."""
    spec = load({"type": "dns", "name": "example.com", "rdtype": "aaaa", "server": "::0001"})
    assert isinstance(spec, DnsCheckSpec)
    assert (spec.rdtype, spec.server, spec.port) == ("AAAA", "::1", 53)


def test_command_forms() -> None:
    """argv runs without a shell; a string command needs shell: true."""
    spec = load({"type": "command", "argv": ["check", "--quiet"], "env": {"A": "1"}})
    assert isinstance(spec, CommandCheckSpec)
    assert spec.argv == ("check", "--quiet")
    assert spec.shell is False
    spec = load({"type": "command", "command": "pgrep -x nginx", "shell": True})
    assert isinstance(spec, CommandCheckSpec)
    assert spec.command == "pgrep -x nginx"


BAD: list[tuple[dict[str, Any], str]] = [
    ({"type": "smtp", "host": "h"}, "type"),
    ({"type": "http"}, "url"),
    ({"type": "http", "url": "ftp://h/"}, "url"),
    ({"type": "http", "url": "http:///nohost"}, "url"),
    ({"type": "http", "url": "http://h:99999/"}, "url"),
    ({"type": "http", "url": "http://h/", "timeout": 2}, "timeout"),
    ({"type": "http", "url": "http://h/", "method": "GE T"}, "method"),
    ({"type": "http", "url": "http://h/", "expect_status": []}, "expect_status"),
    ({"type": "http", "url": "http://h/", "expect_status": [700]}, "expect_status"),
    ({"type": "http", "url": "http://h/", "expect_status": ["399-200"]}, "expect_status"),
    ({"type": "http", "url": "http://h/", "expect_status": ["2xx"]}, "expect_status"),
    ({"type": "http", "url": "http://h/", "expect_status": [True]}, "expect_status"),
    ({"type": "http", "url": "http://h/", "body_regex": "(unclosed"}, "body_regex"),
    ({"type": "http", "url": "http://h/", "headers": {"Bad Name": "x"}}, "headers"),
    ({"type": "http", "url": "http://h/", "headers": {"X": "a\r\nB: c"}}, "headers"),
    ({"type": "http", "url": "http://h/", "retries": -1}, "retries"),
    ({"type": "http", "url": "https://h/", "ca_file": "/ca", "verify_tls": False}, "ca_file"),
    ({"type": "http", "url": "http://h/", "ca_file": "/ca"}, "ca_file"),
    ({"type": "http", "url": "http://h/", "method": "HEAD", "body_regex": "x"}, "body_regex"),
    ({"type": "tcp", "host": "h", "port": 0}, "port"),
    ({"type": "tcp", "host": "h", "port": 65536}, "port"),
    ({"type": "tcp", "host": "h", "port": True}, "port"),
    ({"type": "tcp", "host": "", "port": 80}, "host"),
    ({"type": "tcp", "host": "h", "port": 80, "expect": ""}, "expect"),
    ({"type": "dns", "name": "a.", "server": "ns1.example.com"}, "server"),
    ({"type": "dns", "name": "a.", "server": "127.0.0.1", "rdtype": "BOGUS"}, "rdtype"),
    ({"type": "dns", "name": "a.", "server": "127.0.0.1", "rdtype": "ANY"}, "rdtype"),
    ({"type": "dns", "name": "a..b", "server": "127.0.0.1"}, "name"),
    ({"type": "dns", "name": "a.", "server": "127.0.0.1", "port": 70000}, "port"),
    ({"type": "dns", "name": "a.", "server": "127.0.0.1", "expect": "not-an-ip"}, "expect"),
    ({"type": "command", "argv": []}, "argv"),
    ({"type": "command", "argv": [""]}, "argv"),
    ({"type": "command"}, "argv"),
    ({"type": "command", "command": "echo hi"}, "shell"),
    ({"type": "command", "argv": ["true"], "shell": True}, "command"),
    ({"type": "command", "command": "true", "argv": ["true"], "shell": True}, "argv"),
    ({"type": "command", "argv": ["true"], "env": {"A=B": "x"}}, "env"),
    ({"type": "file", "path": ""}, "path"),
    ({"type": "file", "path": "/x", "exists": "maybe"}, "exists"),
]


@pytest.mark.parametrize(("data", "field"), BAD, ids=[f"{d['type']}-{f}" for d, f in BAD])
def test_bad_specs_are_rejected_naming_the_field(data: dict[str, Any], field: str) -> None:
    """Each bad value is refused, and the message says which field is wrong."""
    with pytest.raises(ValidationError) as info:
        load(data)
    # Only the location and the message count: str(error) also echoes the input.
    said = [(tuple(map(str, error["loc"])), error["msg"]) for error in info.value.errors()]
    assert any(field in loc or field in msg for loc, msg in said), said
