"""Configuration loading: every mistake is refused with exit 2 and a message naming
file, service and field; good configs load with defaults merged as documented."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from announcer import cli
from announcer import config as cfg
from announcer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
VENV_ANNOUNCER = REPO / ".venv" / "bin" / "announcer"

TCP_CHECK = """
[[service.checks]]
type = "tcp"
host = "127.0.0.1"
port = 80
"""


def service(name: str = "web", prefixes: str = '["192.0.2.10/32"]', body: str = "") -> str:
    """One [[service]] table with a tcp check; ``body`` goes before the check."""
    return f'\n[[service]]\nname = "{name}"\nprefixes = {prefixes}\n{body}\n{TCP_CHECK}'


def write(tmp_path: Path, main: str, confd: dict[str, str] | None = None) -> Path:
    path = tmp_path / "announcer.toml"
    path.write_text(main, encoding="utf-8")
    if confd:
        (tmp_path / "conf.d").mkdir()
        for name, text in confd.items():
            (tmp_path / "conf.d" / name).write_text(text, encoding="utf-8")
    return path


def check_config(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, list[str]]:
    """Run ``announcer check-config PATH`` in-process: (status, stdout, stderr lines)."""
    code = cli.main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


# ---------------------------------------------------------------- bad configs

FLEET_MIN = ('group = "g"', 'endpoints = ["http://127.0.0.1:2379"]')

HTTP_FTP = """
[[service]]
name = "web"
prefixes = ["192.0.2.10/32"]
[[service.checks]]
type = "http"
url = "ftp://x/"
"""


@dataclass(frozen=True)
class Bad:
    """A config with one mistake and the one problem line it must produce.

    ``where`` is how the line starts after ``announcer: `` (``{main}`` is the main
    file's path) and ``why`` a fragment of the reason.
    """

    main: str
    where: str
    why: str
    confd: dict[str, str] = field(default_factory=dict)


BAD: dict[str, Bad] = {
    "duplicate service name across main and conf.d": Bad(
        main=service("web"),
        confd={"web.toml": service("web", '["192.0.2.11/32"]')},
        where="conf.d/web.toml: service 'web': name: ",
        why="duplicate service name (first defined in {main})",
    ),
    "prefix owned by two services": Bad(
        main=service("web"),
        confd={"api.toml": service("api")},
        where="conf.d/api.toml: service 'api': prefixes[0]: ",
        why="192.0.2.10/32 already belongs to service 'web' ({main})",
    ),
    "host bits set": Bad(
        main=service(prefixes='["192.0.2.10/24"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="192.0.2.10/24 has host bits set",
    ),
    "prefix outside allowed_prefixes": Bad(
        main='allowed_prefixes = ["198.51.100.0/24", "2001:db8::/32"]\n' + service(),
        where="{main}: service 'web': prefixes[0]: ",
        why="192.0.2.10/32 is outside allowed_prefixes (198.51.100.0/24, 2001:db8::/32)",
    ),
    "v4 default route": Bad(
        main=service(prefixes='["0.0.0.0/0"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="0.0.0.0/0 is a default route",
    ),
    "v6 default route": Bad(
        main=service(prefixes='["::/0"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="::/0 is a default route",
    ),
    "timeout longer than interval": Bad(
        main=service(body="interval = 1\ntimeout = 2"),
        where="{main}: service 'web': timeout: ",
        why="must not exceed interval (1.0s)",
    ),
    "fast_interval longer than interval": Bad(
        main=service(body="interval = 1\nfast_interval = 1.5"),
        where="{main}: service 'web': fast_interval: ",
        why="must not exceed interval (1.0s)",
    ),
    "unknown top-level key": Bad(
        main="neighbour = '*'\n" + service(),
        where="{main}: neighbour: ",
        why="unknown key",
    ),
    "unknown key in a service": Bad(
        main=service(body="intervall = 2"),
        where="{main}: service 'web': intervall: ",
        why="unknown key",
    ),
    "unknown key in a check": Bad(
        main=service() + "timeout = 1\n",
        where="{main}: service 'web': checks[0].timeout: ",
        why="unknown key",
    ),
    "unknown key in an attribute table": Bad(
        main=service() + "\n[service.drain]\nlocal_pref = 50\n",
        where="{main}: service 'web': drain.local_pref: ",
        why="unknown key",
    ),
    "unknown top-level key in a conf.d file": Bad(
        main="",
        confd={"web.toml": "neighbor = '192.0.2.1'\n" + service()},
        where="conf.d/web.toml: neighbor: ",
        why="unknown key (files in conf.d hold only [[service]] tables)",
    ),
    "unknown check type": Bad(
        main=service().replace('type = "tcp"', 'type = "smtp"'),
        where="{main}: service 'web': checks[0]: ",
        why="unknown check type 'smtp' (known: command, dns, file, http, process, tcp)",
    ),
    "missing check type": Bad(
        main=service().replace('type = "tcp"\n', ""),
        where="{main}: service 'web': checks[0]: ",
        why="missing 'type'",
    ),
    "community half out of range": Bad(
        main=service() + '\n[service.announce]\ncommunities = ["65536:1"]\n',
        where="{main}: service 'web': announce.communities: ",
        why="community '65536:1': each half must be 0-65535",
    ),
    "large community with two parts": Bad(
        main=service() + '\n[service.down]\nlarge_communities = ["65001:1"]\n',
        where="{main}: service 'web': down.large_communities: ",
        why="large community '65001:1' must be GLOBAL:LOCAL1:LOCAL2",
    ),
    "require quorum larger than the number of checks": Bad(
        main=service(body="require = 2"),
        where="{main}: service 'web': require: ",
        why="2 is more than the 1 check this service has",
    ),
    "as_path_prepend without local_as": Bad(
        main=service() + "\n[service.drain]\nas_path_prepend = 2\n",
        where="{main}: service 'web': drain.as_path_prepend: ",
        why="needs local_as",
    ),
    "invalid TOML in the main file": Bad(
        main='next_hop = "self"\nlocal_as = \n',
        where="{main}: invalid TOML: ",
        why="line 2",
    ),
    "invalid TOML in a conf.d file": Bad(
        main="",
        confd={"web.toml": '[[service]]\nname = "web\n'},
        where="conf.d/web.toml: invalid TOML: ",
        why="line 2",
    ),
    "neighbor that is a name, not an address": Bad(
        main='neighbor = "router1"\n' + service(),
        where="{main}: neighbor: ",
        why="'router1' is not an IP address",
    ),
    "neighbor '*' mixed with addresses": Bad(
        main='neighbor = ["*", "192.0.2.1"]\n' + service(),
        where="{main}: neighbor: ",
        why="'*' is not an IP address (use '*' alone for every neighbour)",
    ),
    "next_hop neither self nor an address": Bad(
        main='next_hop = "me"\n' + service(),
        where="{main}: next_hop: ",
        why="'me' must be 'self' or an IP address",
    ),
    "defaults: interval out of range": Bad(
        main="[defaults]\ninterval = 0\n" + service(),
        where="{main}: defaults.interval: ",
        why="greater than 0",
    ),
    "defaults: unknown key": Bad(
        main="[defaults]\nintervall = 2\n" + service(),
        where="{main}: defaults.intervall: ",
        why="unknown key",
    ),
    "defaults: bad value in an attribute table": Bad(
        main="[defaults.announce]\nmed = -5\n" + service(),
        where="{main}: defaults.announce.med: ",
        why="greater than or equal to 0",
    ),
    "defaults: not a table": Bad(
        main="defaults = 1\n" + service(),
        where="{main}: defaults: ",
        why="must be a table",
    ),
    "bad check field in a conf.d service": Bad(
        main="",
        confd={"web.toml": HTTP_FTP},
        where="conf.d/web.toml: service 'web': checks[0].url: ",
        why="url must be http:// or https://",
    ),
    "control_group that does not exist": Bad(
        main='control_group = "no-such-group-xyz"\n' + service(),
        where="{main}: control_group: ",
        why="no such group 'no-such-group-xyz'",
    ),
    "array nested deeper than the parser goes, in a conf.d file": Bad(
        main="",
        confd={"deep.toml": "a = " + "[" * 5000 + "]" * 5000 + "\n"},
        where="conf.d/deep.toml: ",
        why="",
    ),
    **{
        f"{kind} prefix {prefix}": Bad(
            main=service(prefixes=f'["{prefix}"]'),
            where="{main}: service 'web': prefixes[0]: ",
            why=f"{prefix} is a {kind} prefix; refusing to announce it",
        )
        for prefix, kind in [
            ("127.0.0.1/32", "loopback"),
            ("127.0.0.0/8", "loopback"),
            ("::1/128", "loopback"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.2.3/32", "multicast"),
            ("ff02::1/128", "multicast"),
            ("169.254.10.0/24", "link-local"),
            ("fe80::/64", "link-local"),
        ]
    },
    "unspecified address 0.0.0.0/32": Bad(
        main=service(prefixes='["0.0.0.0/32"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="0.0.0.0/32 is an unspecified prefix; refusing to announce it",
    ),
    "unspecified address ::/128": Bad(
        main=service(prefixes='["::/128"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="::/128 is an unspecified prefix; refusing to announce it",
    ),
    "prefix containing the unspecified address and loopback": Bad(
        main=service(prefixes='["0.0.0.0/1"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="0.0.0.0/1 contains 0.0.0.0 (unspecified); refusing to announce it",
    ),
    "prefix containing link-local and multicast": Bad(
        main=service(prefixes='["128.0.0.0/1"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="128.0.0.0/1 contains 169.254.0.0/16 (link-local); refusing to announce it",
    ),
    "v6 prefix containing link-local and multicast": Bad(
        main=service(prefixes='["8000::/1"]'),
        where="{main}: service 'web': prefixes[0]: ",
        why="8000::/1 contains fe80::/10 (link-local); refusing to announce it",
    ),
    "special prefix second in a conf.d service": Bad(
        main="",
        confd={"web.toml": service(prefixes='["192.0.2.10/32", "::1/128"]')},
        where="conf.d/web.toml: service 'web': prefixes[1]: ",
        why="::1/128 is a loopback prefix",
    ),
    "fleet without endpoints": Bad(
        main='[fleet]\ngroup = "g"\n', where="{main}: fleet.endpoints: ", why="Field required"
    ),
    **{
        f"fleet: {what}": Bad(
            main=f"[fleet]\n{body}\n"
            + "".join(line + "\n" for line in FLEET_MIN if line.split()[0] not in body),
            where=f"{{main}}: fleet{field}: ",
            why=why,
        )
        for what, body, field, why in (
            ("a port missing", 'endpoints = ["http://etcd1"]', ".endpoints", "'http://etcd1' must"),
            ("user without password", 'user = "u"', "", "user and password go together"),
            ("a group with a slash", 'group = "a/b"', ".group", "should match pattern"),
            ("on_unknown misspelt", 'on_unknown = "wait"', ".on_unknown", "'local' or 'hold'"),
            ("an unknown key", "ttl = 3", ".ttl", "unknown key"),
        )
    },
    **{
        name: Bad(main=main, where=f"{{main}}: {where}: ", why=why)
        for name, main, where, why in (
            (
                "min_announcing without a fleet",
                service(body="min_announcing = 1"),
                "service 'web': min_announcing",
                "needs a [fleet] table",
            ),
            ("max_drained 0", "[defaults]\nmax_drained = 0\n", "defaults.max_drained", "equal to"),
        )
    },
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_config_is_refused_naming_file_service_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Bad
) -> None:
    """Each mistake makes check-config exit 2 with exactly one problem line, which
    starts with the file (and service and field where they apply) and says why."""
    path = write(tmp_path, case.main, case.confd)
    code, out, err = check_config(capsys, path)
    assert code == 2
    assert out == ""
    assert len(err) == 1, err
    line = err[0]
    where = "announcer: " + case.where.format(main=path)
    assert line.startswith(where), line
    assert case.why.format(main=path) in line[len("announcer: ") :], line


def test_missing_main_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A main file that does not exist is refused with exit 2, naming the file."""
    path = tmp_path / "nope.toml"
    code, out, err = check_config(capsys, path)
    assert (code, out) == (2, "")
    assert err == [f"announcer: {path}: no such file"]


def test_every_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Problems in several files and services are all reported in one run, one per line."""
    path = write(
        tmp_path,
        'next_hop = "me"\n' + service("web", '["192.0.2.10/24"]'),
        {"a.toml": service("a", body="rise = 0"), "b.toml": "x = 1\n"},
    )
    code, _, err = check_config(capsys, path)
    assert code == 2
    assert len(err) == 4, err
    assert any(line.startswith(f"announcer: {path}: next_hop: ") for line in err)
    assert any(line.startswith(f"announcer: {path}: service 'web': prefixes[0]: ") for line in err)
    assert any(line.startswith("announcer: conf.d/a.toml: service 'a': rise: ") for line in err)
    assert "announcer: conf.d/b.toml: x: unknown key" in " ".join(err)


def test_load_raises_config_error_with_one_problem_per_line(tmp_path: Path) -> None:
    """cfg.load raises ConfigError whose text is its problems joined one per line."""
    path = write(tmp_path, "a = 1\nb = 2\n")
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    assert info.value.problems == [f"{path}: a: unknown key", f"{path}: b: unknown key"]
    assert str(info.value) == "\n".join(info.value.problems)


def test_bad_config_through_the_installed_command(tmp_path: Path) -> None:
    """The real `announcer check-config` process exits 2, prints the problem on stderr
    and nothing on stdout."""
    path = write(tmp_path, "", {"web.toml": HTTP_FTP})
    command = (
        [str(VENV_ANNOUNCER)] if VENV_ANNOUNCER.exists() else [sys.executable, "-m", "announcer"]
    )
    proc = subprocess.run(
        [*command, "check-config", str(path)],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr.decode().startswith(
        "announcer: conf.d/web.toml: service 'web': checks[0].url: "
    )


# ---------------------------------------------------------------- good configs


def test_empty_file_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty main file is a valid config with no services and built-in settings."""
    path = write(tmp_path, "")
    code, out, err = check_config(capsys, path)
    assert (code, err) == (0, [])
    assert out == f"{path}: ok (0 services, 0 prefixes)\n"
    config = cfg.load(path)
    assert config.services == ()
    assert config.settings.neighbors == ()
    assert config.settings.next_hop == "self"


def test_defaults_merge_service_over_defaults_over_builtins(tmp_path: Path) -> None:
    """A service setting beats [defaults], which beats the built-in default; the
    attribute tables merge key by key at every level."""
    path = write(
        tmp_path,
        """
[defaults]
interval = 5
rise = 2
[defaults.announce]
med = 50
communities = ["65001:100"]
[defaults.drain]
med = 500
"""
        + service("web", body="rise = 4")
        + "\n[service.announce]\nlocal_preference = 300\n"
        + service("api", '["192.0.2.20/32"]'),
    )
    config = cfg.load(path)
    web, api = config.service("web"), config.service("api")
    assert (web.interval, web.rise, web.fall) == (5, 4, 3)  # defaults, service, built-in
    assert (api.interval, api.rise, api.fall) == (5, 2, 3)
    assert web.announce == cfg.Attributes(med=50, local_preference=300, communities=("65001:100",))
    assert api.announce == cfg.Attributes(med=50, communities=("65001:100",))
    # drain: med from [defaults], the communities still from the built-in drain table
    assert web.drain == cfg.Attributes(med=500, communities=("65535:0",))
    assert web.down == cfg.Attributes(med=1000)


def test_builtin_defaults(tmp_path: Path) -> None:
    """With nothing set, a service gets the documented built-in timing and attributes."""
    config = cfg.load(write(tmp_path, service()))
    web = config.service("web")
    assert (web.interval, web.fast_interval, web.rise, web.fall) == (1.0, 0.25, 3, 3)
    assert (web.require, web.on_down, web.drain_seconds) == ("all", "withdraw", 30.0)
    assert web.announce == cfg.Attributes(med=100)
    assert web.drain == cfg.Attributes(med=1000, communities=("65535:0",))


def test_timeout_defaults_to_interval(tmp_path: Path) -> None:
    """Without a timeout the effective timeout is the interval (also in print-config data);
    a timeout set in [defaults] applies to every service."""
    config = cfg.load(write(tmp_path, service(body="interval = 3")))
    web = config.service("web")
    assert web.timeout is None
    assert web.effective_timeout == 3
    assert config.effective()["service"][0]["timeout"] == 3

    other = tmp_path / "other"
    other.mkdir()
    config = cfg.load(write(other, "[defaults]\ninterval = 4\ntimeout = 2\n" + service()))
    assert config.service("web").effective_timeout == 2


def test_v6_prefixes_are_normalised(tmp_path: Path) -> None:
    """IPv6 prefixes are stored in canonical form: lower case, zeros compressed."""
    path = write(
        tmp_path,
        'allowed_prefixes = ["2001:DB8::/32", "192.0.2.0/24"]\n'
        + service(prefixes='["2001:DB8:0::10/128", "192.0.2.10/32"]'),
    )
    web = cfg.load(path).service("web")
    assert web.prefix_strings == ("2001:db8::10/128", "192.0.2.10/32")
    assert web.policy().prefixes == ("2001:db8::10/128", "192.0.2.10/32")


def test_confd_services_load_in_sorted_file_order(tmp_path: Path) -> None:
    """Services of the main file come first, then conf.d files in sorted name order,
    each remembering the file it came from; non-.toml files are ignored."""
    confd = {
        "20-c.toml": service("c", '["192.0.2.3/32"]'),
        "00-a.toml": service("a", '["192.0.2.1/32"]'),
        "10-b.toml": service("b", '["192.0.2.2/32"]') + service("b2", '["192.0.2.22/32"]'),
        "README": "not toml at all [[[",
    }
    path = write(tmp_path, service("main", '["192.0.2.100/32"]'), confd)
    config = cfg.load(path)
    assert [e.service.name for e in config.services] == ["main", "a", "b", "b2", "c"]
    assert [e.source.name for e in config.services] == [
        "announcer.toml",
        "00-a.toml",
        "10-b.toml",
        "10-b.toml",
        "20-c.toml",
    ]


def test_include_can_be_switched_off(tmp_path: Path) -> None:
    """include = "" loads no conf.d files, even broken ones."""
    path = write(tmp_path, 'include = ""\n', {"web.toml": "this is not toml"})
    assert cfg.load(path).services == ()


RICH_MAIN = """
local_as = 65001
neighbor = ["192.0.2.1", "2001:db8::1"]
allowed_prefixes = ["192.0.2.0/24", "2001:db8::/32"]

[defaults]
interval = 2
rise = 2
[defaults.announce]
med = 50
local_preference = 200

[[service]]
name = "web"
prefixes = ["192.0.2.10/32", "2001:DB8:0::10/128"]
require = 1
[service.drain]
as_path_prepend = 2
large_communities = ["65001:0:1"]
[[service.checks]]
type = "http"
url = "http://127.0.0.1/health"
expect_status = [200, "300-302"]
body_regex = '^ok\\s'
headers = { Host = "café.example", "X-Note" = "a \\"quoted\\" 😀" }
[[service.checks]]
type = "command"
argv = ["/bin/true", "tab\\there", "del\\u007f"]
env = { "CAFÉ" = "1" }
"""

RICH_CONFD = {
    "dns.toml": """
[[service]]
name = "dns"
prefixes = ["192.0.2.53/32"]
timeout = 0.5
on_down = "lower"
[[service.checks]]
type = "dns"
name = "example.com"
server = "127.0.0.1"
[[service.checks]]
type = "file"
path = "/run/dns.ok"
"""
}


def _without_sources(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "include"}  # printed as "": stands alone
    out["service"] = [{k: v for k, v in s.items() if k != "_source"} for s in data["service"]]
    return out


def test_print_config_toml_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """print-config's TOML is itself a valid config that loads to the same effective
    config (conf.d merged in, non-ASCII and escapes intact)."""
    original = cfg.load(write(tmp_path, RICH_MAIN, RICH_CONFD))
    assert cli.main(["print-config", str(original.path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    tomllib.loads(out)  # raises if print-config wrote invalid TOML

    # A folder without conf.d: the printed file holds every service already.
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    again = cfg.load(write(again_dir, out))
    assert [e.service.name for e in again.services] == ["web", "dns"]
    assert _without_sources(again.effective()) == _without_sources(original.effective())
    checks = again.service("web").checks
    assert checks[0].headers == {"Host": "café.example", "X-Note": 'a "quoted" 😀'}  # type: ignore[union-attr]
    assert checks[1].argv == ("/bin/true", "tab\there", "del\x7f")  # type: ignore[union-attr]


def test_print_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """print-config --format json prints valid JSON equal to the effective config,
    with every default filled in and each service's source file."""
    path = write(tmp_path, RICH_MAIN, RICH_CONFD)
    assert cli.main(["print-config", "--format", "json", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    data = json.loads(out)
    assert data["include"] == ""  # every included service is in the output already
    data["include"] = "conf.d/*.toml"
    assert data == json.loads(json.dumps(cfg.load(path).effective()))
    web, dns = data["service"]
    assert web["prefixes"] == ["192.0.2.10/32", "2001:db8::10/128"]
    assert web["timeout"] == 2.0
    assert web["announce"]["med"] == 50
    assert dns["timeout"] == 0.5
    assert dns["_source"] == os.path.join(str(tmp_path), "conf.d", "dns.toml")


def test_print_config_of_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """print-config refuses an invalid config like check-config does, printing nothing
    on stdout."""
    path = write(tmp_path, "bogus = 1\n")
    assert cli.main(["print-config", "--format", "json", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"announcer: {path}: bogus: unknown key\n"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("require = true", "require"),
        ("rise = true", "rise"),
        ("interval = true", "interval"),
        ('require = "most"', "require"),
    ],
)
def test_booleans_and_words_are_not_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, field: str
) -> None:
    """A boolean is never read as 1, and a wrong word for require says what is allowed."""
    path = write(tmp_path, service(body=body))
    assert cli.main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"service 'web': {field}: " in lines[0]


def test_checks_written_as_a_single_table_explains_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[service.checks] (one table) instead of [[service.checks]] gets a message saying so."""
    main = (
        '[[service]]\nname = "web"\nprefixes = ["192.0.2.10/32"]\n'
        '[service.checks]\ntype = "file"\npath = "/x"\n'
    )
    path = write(tmp_path, main)
    assert cli.main(["check-config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert "checks: must be a list of tables: write [[service.checks]]" in err


# ---------------------------------------------------------------- bytes, groups, prefixes


@pytest.mark.parametrize(
    ("main", "confd", "where", "why"),
    [
        (b'next_hop = "self"\n# caf\xff\n', {}, "{main}", "invalid byte 0xff at line 2"),
        (b'[[service]]\nname = "w\xffb"\n', {}, "{main}", "invalid byte 0xff at line 2"),
        (b"", {"web.toml": b"\n\n# \xfe\n"}, "conf.d/web.toml", "invalid byte 0xfe at line 3"),
    ],
    ids=["comment in the main file", "string in the main file", "conf.d file"],
)
def test_a_file_that_is_not_utf8_is_refused_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    main: bytes,
    confd: dict[str, bytes],
    where: str,
    why: str,
) -> None:
    """A byte that is not UTF-8 (tomllib raises UnicodeDecodeError, not TOMLDecodeError)
    makes check-config and print-config exit 2 with one line naming the file, the byte and
    its line, and cfg.load raise ConfigError: no traceback."""
    path = tmp_path / "announcer.toml"
    path.write_bytes(main)
    for name, data in confd.items():
        (tmp_path / "conf.d").mkdir(exist_ok=True)
        (tmp_path / "conf.d" / name).write_bytes(data)
    expected = f"announcer: {where.format(main=path)}: not UTF-8 text: {why}"
    code, out, err = check_config(capsys, path)
    assert (code, out, err) == (2, "", [expected])
    assert cli.main(["print-config", str(path)]) == 2
    assert capsys.readouterr() == ("", expected + "\n")
    with pytest.raises(ConfigError):
        cfg.load(path)


def test_load_raises_only_config_error_whatever_goes_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception nobody foresaw while loading becomes a ConfigError naming the main file
    (the daemon reloads on SIGHUP, where anything else would end the process)."""
    path = write(tmp_path, service())

    def broken(*args: object) -> None:
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(cfg, "_cross_checks", broken)
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    assert info.value.problems == [f"{path}: cannot load: RuntimeError: something unforeseen"]


def test_an_existing_control_group_is_accepted(tmp_path: Path) -> None:
    """control_group may name a group of this system, or give a gid as a number."""
    try:
        group = grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        pytest.skip(f"gid {os.getgid()} has no name on this system")
    assert cfg.load(write(tmp_path, f'control_group = "{group}"\n')).settings.control_group == group
    other = tmp_path / "gid"
    other.mkdir()
    assert cfg.load(write(other, 'control_group = "4242"\n')).settings.control_group == "4242"


def test_prefixes_next_to_the_special_ranges_are_accepted(tmp_path: Path) -> None:
    """Only prefixes overlapping the unspecified, loopback, link-local or multicast ranges
    are refused; their neighbours are ordinary prefixes."""
    prefixes = [
        "1.0.0.0/8",
        "126.255.255.0/24",
        "128.0.0.0/24",
        "169.253.0.0/16",
        "223.255.255.0/24",
        "240.0.0.0/4",
        "::2/128",
        "fe00::/9",
        "fec0::/10",
        "2001:db8::/32",
    ]
    config = cfg.load(write(tmp_path, service(prefixes=json.dumps(prefixes))))
    assert config.service("web").prefix_strings == tuple(prefixes)


# ---------------------------------------------------------------- the last good config


def _state_main(tmp_path: Path) -> Path:
    """The rich config (conf.d included) with its state_dir in tmp_path."""
    return write(tmp_path, f'state_dir = "{tmp_path / "state"}"\n' + RICH_MAIN, RICH_CONFD)


def test_last_good_config_comes_back_equal_to_the_loaded_one(tmp_path: Path) -> None:
    """The kept config is mode 0600 and, once the main file is broken (bad byte, then bad
    TOML), validates back to the same settings, defaults and services (conf.d sources
    included), with the operator's path, not the copy's, as the path to reload from."""
    path = _state_main(tmp_path)
    original = cfg.load(path)
    kept = cfg.save_last_good(original)
    assert kept == tmp_path / "state" / cfg.LAST_GOOD_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    good = path.read_bytes()
    for broken in (good + b"# \xff\n", good + b"x = = 1\n"):
        path.write_bytes(broken)
        with pytest.raises(ConfigError):
            cfg.load(path)
        last = cfg.load_last_good(path)
        assert last is not None
        assert last.file == kept
        assert last.config.path == path
        assert last.config.settings == original.settings
        assert last.config.defaults == original.defaults
        assert last.config.services == original.services


def test_no_last_good_config_for_another_file_or_none_kept(tmp_path: Path) -> None:
    """A copy kept for another main file is not used, and without any copy there is none."""
    path = write(tmp_path, f'state_dir = "{tmp_path / "state"}"\n' + service())
    assert cfg.load_last_good(path) is None
    cfg.save_last_good(cfg.load(path))
    other = tmp_path / "other.toml"
    other.write_bytes(path.read_bytes() + b"# \xff\n")
    assert cfg.load_last_good(other) is None
    assert cfg.load_last_good(path) is not None


def test_a_last_good_config_that_no_longer_validates_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    """A kept config that fails today's validation raises ConfigError naming the copy."""
    path = write(tmp_path, f'state_dir = "{tmp_path / "state"}"\n' + service())
    kept = cfg.save_last_good(cfg.load(path))
    body = json.loads(kept.read_text())
    body["services"][0]["service"]["prefixes"] = ["127.0.0.1/32"]
    kept.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as info:
        cfg.load_last_good(path)
    assert info.value.problems[0].startswith(f"{kept}: the last good config no longer validates")
    assert "127.0.0.1/32 is a loopback prefix" in info.value.problems[0]


def test_saving_the_last_good_config_where_it_cannot_be_written_raises_oserror(
    tmp_path: Path,
) -> None:
    """A state_dir that cannot be made raises OSError (the daemon logs it and goes on)."""
    (tmp_path / "file").write_text("")
    path = write(tmp_path, f'state_dir = "{tmp_path / "file" / "state"}"\n')
    with pytest.raises(OSError):
        cfg.save_last_good(cfg.load(path))


FLEET = """
[fleet]
endpoints = ["http://127.0.0.1:2379", "http://127.0.0.1:2479/"]
group = "edge-1"
user = "announcer"
password = "s3cret"

[defaults]
max_drained = 1
"""


def test_fleet_fills_its_defaults_and_guards_every_service(tmp_path: Path) -> None:
    """With [fleet], node defaults to the host name, lease to 10 s, on_unknown to
    local; every service is guarded (min_announcing 1) unless it says otherwise."""
    main = FLEET + service() + service("dns", '["192.0.2.53/32"]', "min_announcing = 0")
    config = cfg.load(write(tmp_path, main))
    fleet = config.settings.fleet
    assert fleet is not None
    assert fleet.node and "." not in fleet.node
    assert (fleet.lease_seconds, fleet.on_unknown, fleet.key_prefix) == (10, "local", "/announcer/")
    assert fleet.endpoints == ("http://127.0.0.1:2379", "http://127.0.0.1:2479")
    web, dns = config.service("web"), config.service("dns")
    assert (web.min_announcing, web.max_drained, web.on_unknown) == (1, 1, "local")
    assert web.policy().min_announcing == 1
    assert dns.policy().min_announcing is None  # 0: this service is not guarded


def test_without_fleet_nothing_changes(tmp_path: Path) -> None:
    """No [fleet]: the policy has no guard and print-config shows no fleet key."""
    config = cfg.load(write(tmp_path, service()))
    assert config.settings.fleet is None
    assert config.service("web").policy().min_announcing is None
    effective = config.effective()
    assert "fleet" not in effective
    assert not {"min_announcing", "max_drained", "on_unknown"} & set(effective["service"][0])


def test_print_config_masks_the_fleet_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The etcd password is never printed."""
    path = write(tmp_path, FLEET + service())
    assert cli.main(["print-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert 'password = "********"' in out


def test_fleet_config_survives_as_last_good(tmp_path: Path) -> None:
    """The kept copy of a fleet config loads back equal (password included)."""
    path = write(tmp_path, f'state_dir = "{tmp_path / "state"}"\n' + FLEET + service())
    config = cfg.load(path)
    cfg.save_last_good(config)
    kept = cfg.load_last_good(path)
    assert kept is not None
    assert kept.config.settings == config.settings
    assert kept.config.services == config.services
