"""build_check: each spec type becomes its check, from configuration data as the loader has it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from announcer import checks
from announcer.checks import CheckSpec, build_check

SPEC: TypeAdapter[CheckSpec] = TypeAdapter(CheckSpec)

CASES: list[tuple[dict[str, Any], type[Any], str]] = [
    (
        {"type": "http", "url": "http://127.0.0.1:9/h"},
        checks.HttpCheck,
        "http GET http://127.0.0.1:9/h",
    ),
    ({"type": "tcp", "host": "::1", "port": 22}, checks.TcpCheck, "tcp [::1]:22"),
    (
        {"type": "dns", "name": "a.test", "rdtype": "txt", "server": "127.0.0.1"},
        checks.DnsCheck,
        "dns TXT a.test @127.0.0.1:53",
    ),
    ({"type": "command", "argv": ["true"]}, checks.CommandCheck, "command true"),
    (
        {"type": "file", "path": "/run/drain", "exists": False},
        checks.FileCheck,
        "file absent /run/drain",
    ),
]


@pytest.mark.parametrize(("data", "kind", "name"), CASES, ids=[c[0]["type"] for c in CASES])
def test_build_dispatches_on_type(data: dict[str, Any], kind: type[Any], name: str) -> None:
    """Each spec type builds the matching check, whose name describes it."""
    check = build_check(SPEC.validate_python(data))
    assert isinstance(check, kind)
    assert check.name == name
    check.close()


def test_connection_factory_is_used_for_http() -> None:
    """The connection factory given to build_check makes the HTTP check's connection."""
    made: list[tuple[str, str, int]] = []

    async def factory(scheme: str, host: str, port: int, context: Any) -> Any:
        made.append((scheme, host, port))
        raise RuntimeError("no network in this test")

    check = build_check(SPEC.validate_python(CASES[0][0]), connection_factory=factory)
    result = check.run(1.0)
    check.close()
    assert made == [("http", "127.0.0.1", 9)]
    assert not result.ok
    assert result.reason == "unexpected RuntimeError: no network in this test"


def test_public_names() -> None:
    """The package exports what the daemon and the loader import."""
    for name in (
        "CheckResult",
        "Check",
        "CheckSpec",
        "HttpCheckSpec",
        "TcpCheckSpec",
        "DnsCheckSpec",
        "CommandCheckSpec",
        "FileCheckSpec",
        "build_check",
    ):
        assert name in checks.__all__
        assert hasattr(checks, name)


def test_unknown_spec_is_refused() -> None:
    """Something that is not a spec is a programming error, reported as TypeError."""
    with pytest.raises(TypeError):
        build_check(object())  # type: ignore[arg-type]


DNSPYTHON_LOADED = """
import sys
from announcer.config import load
config = load(sys.argv[1])
print(sorted({m.split(".")[0] for m in sys.modules if m == "dns" or m.startswith("dns.")}))
"""


@pytest.mark.parametrize(
    ("check", "loaded"),
    [
        ('{ type = "http", url = "http://127.0.0.1:9/" }', "[]"),
        ('{ type = "dns", name = "a.test", rdtype = "A", server = "127.0.0.1" }', "['dns']"),
    ],
    ids=["without a dns check", "with one"],
)
def test_dnspython_is_loaded_only_with_a_dns_check(tmp_path: Path, check: str, loaded: str) -> None:
    """dnspython (about 2 MB of the daemon's memory) is imported only when the config has a
    DNS check: loading a config without one leaves it out."""
    path = tmp_path / "announcer.toml"
    path.write_text(
        f'neighbor = "*"\nstate_dir = "{tmp_path}"\n'
        f'[[service]]\nname = "web"\nprefixes = ["192.0.2.1/32"]\nchecks = [{check}]\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", DNSPYTHON_LOADED, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == f"{loaded}\n", done.stderr
