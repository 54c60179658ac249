"""``announcer import-exabgp-healthcheck`` (announcer/migrate.py): every option of
ExaBGP's own healthcheck parser, 4.2 and 5.0, is mapped or named as not supported;
what the options become; and the output passes ``announcer check-config``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from announcer import migrate
from announcer.migrate import KNOWN_FLAGS, OPTIONS, MigrationError

REPO = Path(__file__).resolve().parents[2]

# Run inside each ExaBGP's venv: its healthcheck builds its parser inside parse() (4.2)
# or setargs() (5.0) and parses at once; stop it there and list the option strings.
PROBE = """
import argparse, json
class Got(Exception):
    pass
def grab(self, *args, **kwargs):
    raise Got(self)
argparse.ArgumentParser.parse_args = grab
from exabgp.application import healthcheck
try:
    healthcheck.parse()
except Got as got:
    parser = got.args[0]
print(json.dumps(sorted(s for a in parser._actions for s in a.option_strings)))
"""

VENVS = {"5.0": REPO / ".venv", "4.2": REPO / ".venv-exabgp42"}


def exabgp_options(version: str) -> list[str]:
    python = VENVS[version] / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {python} (make setup installs ExaBGP {version} there)")
    done = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    options: list[str] = json.loads(done.stdout)
    return options


@pytest.mark.parametrize("version", sorted(VENVS))
def test_every_option_of_exabgp_healthcheck_is_mapped_or_refused(version: str) -> None:
    """Each option string of ExaBGP's own healthcheck parser is in the table, mapped or
    named as not supported with the reason: an option ExaBGP adds fails here."""
    missing = [o for o in exabgp_options(version) if o not in KNOWN_FLAGS]
    assert missing == [], f"ExaBGP {version} options announcer does not place: {missing}"


def test_the_table_invents_no_option_and_says_something_of_each() -> None:
    """Every spelling in the table exists in ExaBGP 4.2 or 5.0, and every option says
    either what it becomes or why it is not supported (not both)."""
    known = {o for version in VENVS for o in exabgp_options(version)}
    assert sorted(KNOWN_FLAGS - known) == []
    for option in OPTIONS:
        assert bool(option.becomes) != bool(option.unsupported), option.flags


def announcer(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "announcer", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def convert(*args: str) -> dict[str, object]:
    options = migrate.parse(list(args), "test")
    text = migrate.to_toml(
        [("test", migrate.translate(options, options.name or "svc", "test"))], "t"
    )
    return tomllib.loads(text)


def test_defaults_become_explicit_values() -> None:
    """exabgp healthcheck's defaults are written out: interval 5, fast 1, timeout 5, rise
    and fall 3, metrics 100/1000/500, a down service lowered (not withdrawn), every
    neighbour, next-hop self, acks on; the command runs through the shell as before."""
    data = convert("--cmd", "curl -sf http://127.0.0.1/", "--ip", "192.0.2.10")
    assert (data["neighbor"], data["next_hop"], data["acks"]) == ("*", "self", True)
    (svc,) = data["service"]  # type: ignore[misc]
    assert svc["prefixes"] == ["192.0.2.10/32"]
    assert (svc["interval"], svc["fast_interval"], svc["timeout"]) == (5.0, 1.0, 5.0)
    assert (svc["rise"], svc["fall"], svc["on_down"]) == (3, 3, "lower")
    assert svc["announce"] == {"med": 100}
    assert svc["down"] == {"med": 1000}
    assert svc["drain"] == {"med": 500, "communities": ["65535:0"]}
    assert svc["checks"] == [
        {"type": "command", "command": "curl -sf http://127.0.0.1/", "shell": True}
    ]


def test_options_map_to_their_announcer_settings() -> None:
    """Withdraw-on-down, metrics, local preference, communities (well-known names as
    numbers), the disable file, neighbours, next-hop, no-ack, a --config file's lines and
    the execute hooks (with STATE set as exabgp healthcheck did) are carried over."""
    data = convert(
        "exabgp", "healthcheck", "-n", "web", "-c", "true", "--ip", "2001:db8::10/128",
        "--withdraw-on-down", "--up-metric", "50", "--local-preference", "200",
        "--community", "65001:1 no-export", "--disabled-community", "65001:9",
        "--large-community", "65001:0:1", "--disable", "/run/web.off",
        "--neighbor", "198.51.100.1", "-N", "192.0.2.1", "-a",
        "--up-execute", "echo $STATE", "--execute", "logger changed",
    )  # fmt: skip
    assert (data["neighbor"], data["next_hop"], data["acks"]) == (
        ["198.51.100.1"],
        "192.0.2.1",
        False,
    )
    (svc,) = data["service"]  # type: ignore[misc]
    assert (svc["name"], svc["on_down"], svc["drain_seconds"]) == ("web", "withdraw", 0.0)
    assert svc["announce"] == {
        "med": 50,
        "local_preference": 200,
        "communities": ["65001:1", "65535:65281"],
        "large_communities": ["65001:0:1"],
    }
    assert svc["drain"]["communities"] == ["65001:9", "65535:0"]
    assert svc["maintenance_file"] == "/run/web.off"
    assert svc["hooks"] == {
        "on_up": "STATE=UP; export STATE; echo $STATE",
        "on_change": "logger changed",
        "shell": True,
    }


def test_several_ips_with_increasing_metrics_become_one_service_each() -> None:
    """With --increase (1 by default), each --ip had its own metric: one service each,
    in --start-ip's order, MEDs apart; with --increase 0 one service holds them all."""
    data = convert("--ip", "192.0.2.1", "--ip", "192.0.2.2", "--start-ip", "1", "-n", "x")
    services = data["service"]
    assert [(s["name"], s["prefixes"], s["announce"]["med"]) for s in services] == [  # type: ignore[attr-defined]
        ("x-1", ["192.0.2.2/32"], 100),
        ("x-2", ["192.0.2.1/32"], 101),
    ]
    (one,) = convert("--ip", "192.0.2.1", "--ip", "192.0.2.2", "--increase", "0")["service"]  # type: ignore[misc]
    assert one["prefixes"] == ["192.0.2.1/32", "192.0.2.2/32"]


def test_problems_name_the_option() -> None:
    """A value that is not a number, an unknown option, a bad --ip or no --ip at all is
    refused with a line naming the option."""
    cases = {
        ("--ip", "192.0.2.1", "--rise", "x"): "test: --rise: 'x' is not a number",
        ("--ip", "192.0.2.1", "--bogus"): "test: not an exabgp healthcheck option: --bogus",
        (
            "--ip",
            "192.0.2.1/24",
        ): "test: --ip 192.0.2.1/24: 192.0.2.1/24 has host bits set",
        ("--cmd", "true"): "test: no --ip: exabgp healthcheck would announce",
        ("--ip", "192.0.2.1", "-i", "0"): "test: --interval 0: announcing once",
    }
    for args, message in cases.items():
        with pytest.raises(MigrationError) as err:
            convert(*args)
        assert err.value.problems[0].startswith(message), err.value.problems


def test_exabgp_conf_process_blocks_become_services(tmp_path: Path) -> None:
    """Each process block of an exabgp.conf that runs exabgp healthcheck becomes a
    service named after the process (a run line quoted whole, or with a ';' inside
    quotes, included; commented-out blocks and other processes left out); the result
    passes ``announcer check-config``."""
    conf = tmp_path / "exabgp.conf"
    conf.write_text(
        "process web {\n  run /usr/bin/exabgp healthcheck --cmd 'curl -sf http://[::1]/; true' "
        "--ip 192.0.2.10 --increase 0;\n  encoder text;\n}\n"
        "# process old { run exabgp healthcheck --ip 10.9.9.9; }\n"
        "process other { run /usr/local/bin/something; }\n"
        'process dns { run python3 -m exabgp healthcheck -c "dig @::1" --ip 2001:db8::53; }\n'
        'process quoted {\n  run "/usr/bin/exabgp healthcheck --ip 192.0.2.20";\n}\n'
    )
    done = announcer("import-exabgp-healthcheck", "--exabgp-conf", str(conf))
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert [s["name"] for s in data["service"]] == ["web", "dns", "quoted"]
    assert data["service"][0]["checks"][0]["command"] == "curl -sf http://[::1]/; true"
    assert "# What differs from exabgp healthcheck:" in done.stdout
    out = tmp_path / "announcer.toml"
    out.write_text(done.stdout)
    checked = announcer("check-config", str(out))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{out}: ok (3 services, 3 prefixes)\n"


def test_unsupported_options_given_are_named_with_their_reason() -> None:
    """An option without an equivalent, when given, is named in the output's comments
    with the reason; so is the address setup exabgp healthcheck does by default."""
    options = migrate.parse(["--ip", "192.0.2.1", "--sudo", "--path-id", "3"], "test")
    text = migrate.to_toml([("test", migrate.translate(options, "svc", "test"))], "t")
    assert "#   svc: --sudo: not supported: announcer does not add or remove addresses" in text
    assert "#   svc: --path-id: not supported: announcer sends no ADD-PATH path id" in text
    assert "#   svc: without --no-ip-setup exabgp healthcheck adds the --ip addresses" in text
