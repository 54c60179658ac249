"""``announcer import-exabgp-healthcheck``: an ``exabgp healthcheck`` command line, or
the ``process`` blocks of an exabgp.conf that run it, as announcer TOML.

Every option of ``exabgp healthcheck`` (ExaBGP 4.2 and 5.0) is in :data:`OPTIONS`:
either what it becomes, or why announcer has no equivalent. The options are parsed
here by a parser built from that table (ExaBGP's own opens files and checks
addresses as it parses); tests/unit/test_migrate.py reads the option strings of
ExaBGP's own parser in both versions, so an option added there fails the test
until it is placed here. The result is loaded with :func:`announcer.config.load`
before it is printed: what comes out passes ``announcer check-config``.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from announcer.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One option of ``exabgp healthcheck``: its spellings, how it parses, and what it
    becomes in announcer (``becomes``) or why it has no equivalent (``unsupported``)."""

    flags: tuple[str, ...]
    dest: str
    takes: str  # "flag", "value", "append" or "optional" (a value that may be left out)
    becomes: str = ""
    unsupported: str = ""
    off: bool = False
    """A "flag" that switches something off (``--no-ip-setup``): true by default."""


_ADDRESSES = (
    "announcer does not add or remove addresses; configure them on the node "
    "(e.g. on lo in ifupdown or systemd-networkd)"
)
_LOGS = "announcer logs to stderr, one event per line (journald under the shipped unit)"
_AS_PATH = "announcer sends no AS_PATH of its own; it only prepends local_as (as_path_prepend)"

# One option a line: its spellings, its name, how it parses ("flag", "flag-off" for one
# that switches something off, "value", "append", "optional": a value that may be left
# out), then "= what it becomes" or "! why it is not supported" (ADDRESSES, LOGS and
# ASPATH stand for the reasons above).
_TABLE = """
-h,--help               help               flag     ! prints ExaBGP's help; nothing to map
--silent,-s             silent             flag     ! LOGS
--syslog-facility,-sF   syslog_facility    optional ! LOGS
--no-syslog             no_syslog          flag     ! LOGS
--debug,-d              debug              flag     ! use `announcer run --log-level debug`
--no-ack,-a             no_ack             flag     = acks = false
--sudo                  sudo               flag     ! ADDRESSES
--name,-n               name               value    = the service's name
--config,-F             config             value    = its lines are read as options
--pid,-p                pid                value    ! systemd (or ExaBGP) tracks the process
--user                  user               value    ! the unit runs as user announcer
--group                 group              value    ! the unit runs as user announcer
--interval,-i           interval           value    = interval
--fast-interval,-f      fast               value    = fast_interval
--timeout,-t            timeout            value    = timeout (at most interval)
--rise                  rise               value    = rise
--fall                  fall               value    = fall
--disable               disable            value    = maintenance_file (a drain)
--command,--cmd,-c      command            value    = a command check
--next-hop,-N           next_hop           value    = next_hop
--ip                    ips                append   = prefixes
--ip-ifname             ip_ifnames         append   ! ADDRESSES
--local-preference      local_preference   value    = local_preference
--deaggregate-networks  deaggregate        flag     = one prefix per address
--no-ip-setup           ip_setup           flag-off = nothing (the default)
--dynamic-ip-setup      ip_dynamic         flag     ! ADDRESSES
--label                 label              value    ! ADDRESSES
--label-exact-match     label_exact        flag     ! ADDRESSES
--start-ip              start_ip           value    = the order of the services
--up-metric             up_metric          value    = announce.med
--down-metric           down_metric        value    = down.med (on_down = "lower")
--disabled-metric       disabled_metric    value    = drain.med
--increase              increase           value    = one service per --ip, MEDs apart
--community             community          value    = communities
--extended-community    extended_community value    ! announcer sends no extended communities
--large-community       large_community    value    = large_communities
--disabled-community    disabled_community value    = drain, down
--as-path               as_path            value    ! ASPATH
--up-as-path            up_as_path         value    ! ASPATH
--down-as-path          down_as_path       value    ! ASPATH
--disabled-as-path      disabled_as_path   value    ! ASPATH
--withdraw-on-down      withdraw_on_down   flag     = on_down = "withdraw"
--path-id               path_id            value    ! announcer sends no ADD-PATH path id
--neighbor              neighbors          append   = neighbor
--debounce              debounce           flag     = nothing: announcer sends only changes
--execute               execute            append   = hooks.on_change
--up-execute            up_execute         append   = hooks.on_up
--down-execute          down_execute       append   = hooks.on_down
--disabled-execute      disabled_execute   append   = hooks.on_drain
"""


def _option(line: str) -> Option:
    flags, dest, kind, what = line.split(maxsplit=3)
    reason = {"ADDRESSES": _ADDRESSES, "LOGS": _LOGS, "ASPATH": _AS_PATH}.get(what[2:], what[2:])
    return Option(
        tuple(flags.split(",")),
        dest,
        kind.removesuffix("-off"),
        becomes=what[2:] if what.startswith("=") else "",
        unsupported=reason if what.startswith("!") else "",
        off=kind.endswith("-off"),
    )


OPTIONS: tuple[Option, ...] = tuple(_option(line) for line in _TABLE.strip().splitlines())
"""Every option of ``exabgp healthcheck``, 4.2 and 5.0 (see the module docstring)."""

KNOWN_FLAGS = frozenset(flag for option in OPTIONS for flag in option.flags)
"""Every spelling of every option :data:`OPTIONS` places."""

_WELL_KNOWN = {
    "no-export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
    "nopeer": "65535:65284",
}


class MigrationError(ConfigError):
    """What cannot be translated: one line per problem, naming where it came from."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exabgp healthcheck", add_help=False)
    for option in OPTIONS:
        if option.takes == "flag":
            parser.add_argument(
                *option.flags,
                dest=option.dest,
                action="store_false" if option.off else "store_true",
            )
        elif option.takes == "optional":
            parser.add_argument(*option.flags, dest=option.dest, nargs="?", const="daemon")
        else:
            action = "append" if option.takes == "append" else "store"
            parser.add_argument(*option.flags, dest=option.dest, action=action)
    return parser


def without_program(args: list[str]) -> list[str]:
    """The arguments without ``exabgp healthcheck`` (or ``python -m exabgp healthcheck``)
    in front, as pasted from a shell or an exabgp.conf."""
    if args and Path(args[0]).name.startswith(("exabgp", "python")):
        args = args[1:]
    while args and args[0] in ("-m", "exabgp", "healthcheck", "exabgp.application.healthcheck"):
        args = args[1:]
    return args


def parse(args: list[str], where: str) -> argparse.Namespace:
    """The options of one command line (``where`` names it in errors)."""
    args = without_program(args)
    parser = _parser()
    problems: list[str] = []

    def refuse(message: str) -> None:  # argparse's own errors would exit
        problems.append(f"{where}: {message}")
        raise MigrationError(problems)

    parser.error = refuse  # type: ignore[method-assign,assignment]
    options, extra = parser.parse_known_args(args)
    if extra:
        refuse(f"not an exabgp healthcheck option: {' '.join(extra)}")
    if options.config is not None:
        options, _ = _with_config_file(parser, args, options.config, where)
    return options


def given(options: argparse.Namespace) -> list[Option]:
    """The options set (on the command line or in its --config file)."""
    return [
        o
        for o in OPTIONS
        if getattr(options, o.dest) not in (None, False)
        and not (o.off and getattr(options, o.dest))
    ]


def _with_config_file(
    parser: argparse.ArgumentParser, args: list[str], path: str, where: str
) -> tuple[argparse.Namespace, list[str]]:
    # As exabgp healthcheck reads it: "name = value" or "name" lines, then the command line.
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MigrationError([f"{where}: --config {path}: cannot read: {err}"]) from None
    extra: list[str] = []
    for line in (x.strip() for x in lines):
        if line and not line.startswith("#"):
            extra.extend(part.strip() for part in f"--{line}".split("=", 1))
    return parser.parse_known_args([*extra, *args])


def _run_line(text: str, start: int) -> list[str]:
    """The words of a ``run`` line from ``start`` to its ``;`` (one inside quotes, as in
    ``--cmd "a; b"``, does not end it)."""
    words = shlex.shlex(text[start:], posix=True, punctuation_chars=";")
    words.whitespace_split = True
    words.commenters = ""
    out: list[str] = []
    for word in words:
        if word == ";":
            return out
        if word in ("{", "}"):
            break
        out.append(word)
    raise ValueError("no ';' ends it")


def from_exabgp_conf(path: Path) -> list[tuple[str, list[str]]]:
    """(process name, healthcheck arguments) of each ``process`` block that runs it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MigrationError([f"{path}: cannot read: {err}"]) from None
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    found = []
    for match in re.finditer(r"\bprocess\s+([\w.-]+)\s*\{", text):
        close = text.find("}", match.end())
        run = re.compile(r"\brun\s+").search(text, match.end(), close if close >= 0 else len(text))
        if run is None:
            continue
        try:
            argv = _run_line(text, run.end())
        except ValueError as err:
            raise MigrationError([f"{path}: process {match.group(1)}: run: {err}"]) from None
        if len(argv) == 1:  # run "exabgp healthcheck ...": the whole line quoted
            argv = shlex.split(argv[0])
        at = [i for i, a in enumerate(argv) if a.endswith("healthcheck")]
        if at:
            found.append((match.group(1), argv[at[0] + 1 :]))
    if not found:
        raise MigrationError([f"{path}: no process block runs exabgp healthcheck"])
    return found


# ---------------------------------------------------------------- translation


@dataclass
class Translated:
    """One command line as announcer config: its services, the global settings it
    needs, and what an operator must know about the differences."""

    services: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str]


def _number(options: argparse.Namespace, dest: str, default: float, where: str) -> float:
    value = getattr(options, dest)
    if value is None:
        return float(default)
    try:
        return float(value)
    except ValueError:
        flag = next(o.flags[0] for o in OPTIONS if o.dest == dest)
        raise MigrationError([f"{where}: {flag}: {value!r} is not a number"]) from None


def _communities(text: str | None) -> list[str]:
    words = (text or "").replace("[", " ").replace("]", " ").replace(",", " ").split()
    return [_WELL_KNOWN.get(w.lower(), w) for w in words]


def _prefixes(options: argparse.Namespace, where: str) -> list[str]:
    if not options.ips:
        raise MigrationError(
            [
                f"{where}: no --ip: exabgp healthcheck would announce the addresses it finds "
                "on lo; announcer needs them listed (give --ip for each)"
            ]
        )
    out: list[str] = []
    for text in options.ips:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            raise MigrationError([f"{where}: --ip {text}: {err}"]) from None
        if options.deaggregate and net.num_addresses > 1:
            if net.num_addresses > 4096:
                raise MigrationError([f"{where}: --ip {text}: too many addresses to deaggregate"])
            out.extend(f"{a}/{net.max_prefixlen}" for a in net)
        else:
            out.append(str(net))
    start = int(_number(options, "start_ip", 0, where)) % len(out)
    return out[start:] + out[:start]


def _hooks(options: argparse.Namespace) -> dict[str, Any]:
    hooks: dict[str, Any] = {}
    # exabgp healthcheck sets STATE for its commands: give them an equivalent.
    for dest, key, state in (
        ("up_execute", "on_up", "UP"),
        ("down_execute", "on_down", "DOWN"),
        ("disabled_execute", "on_drain", "DISABLED"),
        ("execute", "on_change", '"$ANNOUNCER_HEALTH"'),
    ):
        commands = getattr(options, dest)
        if commands:
            line = "; ".join(commands)
            hooks[key] = f"STATE={state}; export STATE; {line}" if "STATE" in line else line
    if hooks:
        hooks["shell"] = True
    return hooks


def translate(options: argparse.Namespace, name: str, where: str) -> Translated:
    """One ``exabgp healthcheck`` command line's options as announcer config."""
    interval = _number(options, "interval", 5, where)
    if interval <= 0:
        raise MigrationError(
            [
                f"{where}: --interval {options.interval}: announcing once and exiting is not "
                "supported: announcer keeps checking"
            ]
        )
    notes: list[str] = []
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-._")[:60] or "service"
    fast = _number(options, "fast", 1, where)
    timeout = _number(options, "timeout", 5, where)
    if timeout > interval or fast > interval:
        notes.append(f"{base}: timeout and fast_interval are cut to interval ({interval:g}s)")
    prefixes = _prefixes(options, where)
    lpref = int(_number(options, "local_preference", -1, where))
    communities = _communities(options.community)
    other = _communities(options.disabled_community) or communities
    large = _communities(options.large_community)
    increase = int(_number(options, "increase", 1, where))
    # Each --ip gets its metric plus --increase per place: a service of its own each.
    groups = [[p] for p in prefixes] if increase and len(prefixes) > 1 else [prefixes]
    check: dict[str, Any] = (
        {"type": "command", "command": options.command, "shell": True}
        if options.command
        else {"type": "command", "argv": ["/bin/true"]}
    )
    services: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        metric = _Metric(options, where, lpref, large, i * increase)
        service: dict[str, Any] = {
            "name": base if len(groups) == 1 else f"{base}-{i + 1}",
            "prefixes": group,
            "interval": interval,
            "fast_interval": min(fast, interval),
            "timeout": min(timeout, interval),
            "rise": max(1, int(_number(options, "rise", 3, where))),
            "fall": max(1, int(_number(options, "fall", 3, where))),
            "on_down": "withdraw" if options.withdraw_on_down else "lower",
            "announce": metric("up_metric", 100, communities),
            "down": metric("down_metric", 1000, other),
            # announcer's drain also says GRACEFUL_SHUTDOWN (RFC 8326) to the routers.
            "drain": metric("disabled_metric", 500, [*other, "65535:0"]),
            "checks": [check],
        }
        if options.withdraw_on_down:
            service["drain_seconds"] = 0.0
        if options.disable:
            service["maintenance_file"] = options.disable
        hooks = _hooks(options)
        if hooks:
            service["hooks"] = hooks
        services.append(service)
    return Translated(services, _settings(options), notes + _notes(options, base))


@dataclass(frozen=True)
class _Metric:
    """A state's attribute table: its metric (plus this service's share of --increase),
    local preference and communities."""

    options: argparse.Namespace
    where: str
    lpref: int
    large: list[str]
    step: int

    def __call__(self, dest: str, default: int, communities: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"med": int(_number(self.options, dest, default, self.where))}
        out["med"] += self.step
        if self.lpref >= 0:
            out["local_preference"] = self.lpref
        if communities:
            out["communities"] = communities
        if self.large:
            out["large_communities"] = self.large
        return out


def _settings(options: argparse.Namespace) -> dict[str, Any]:
    # Always all three: exabgp healthcheck processes that differ in them cannot be merged.
    neighbors = [n.strip() for n in options.neighbors or []]
    return {
        "neighbor": "*" if not neighbors or "*" in neighbors else neighbors,
        "next_hop": options.next_hop or "self",
        "acks": not options.no_ack,
    }


def _notes(options: argparse.Namespace, name: str) -> list[str]:
    notes = [
        f"{name}: {o.flags[0]}: not supported: {o.unsupported}"
        for o in given(options)
        if o.unsupported
    ]
    if options.ip_setup and not options.ip_dynamic:
        notes.append(
            f"{name}: without --no-ip-setup exabgp healthcheck adds the --ip addresses to lo: "
            + _ADDRESSES
        )
    if options.disable and not options.withdraw_on_down:
        notes.append(
            f"{name}: --disable: exabgp healthcheck keeps a disabled service announced "
            "(disabled metric); announcer drains it: lowered, then withdrawn after drain_seconds"
        )
    if any(getattr(options, o.dest) for o in OPTIONS if o.dest.endswith("execute")):
        notes.append(
            f"{name}: hooks are killed after hooks.timeout (10 s; exabgp healthcheck waited "
            "for its commands): raise it for slow ones"
        )
    if options.execute:
        notes.append(
            f"{name}: --execute ran on every state change (RISING, FALLING too); "
            "on_change runs on route changes"
        )
    if not options.command:
        notes.append(
            f"{name}: no --command: exabgp healthcheck counted it healthy; so does /bin/true"
        )
    return notes


# ---------------------------------------------------------------- the TOML


def to_toml(parts: list[tuple[str, Translated]], source: str) -> str:
    """The announcer config of every translated command line, checked by loading it."""
    import tomli_w

    settings: dict[str, Any] = {}
    services: list[dict[str, Any]] = []
    notes: list[str] = []
    problems: list[str] = []
    for where, part in parts:
        for key, value in part.settings.items():
            if settings.setdefault(key, value) != value:
                problems.append(
                    f"{where}: {key} = {value!r} differs from {settings[key]!r} of an earlier "
                    "process: announcer has one per node"
                )
        services.extend(part.services)
        notes.extend(part.notes)
    if problems:
        raise MigrationError(problems)
    body = tomli_w.dumps({**settings, "service": services})
    _check(body)
    header = [
        f"# announcer configuration translated from {source}",
        "# by announcer import-exabgp-healthcheck. Check the paths and commands, then",
        "#   announcer check-config FILE && announcer check --once --config FILE",
    ]
    if notes:
        header.append("# What differs from exabgp healthcheck:")
        header.extend(f"#   {note}" for note in notes)
    return "\n".join(header) + "\n\n" + body


def _check(body: str) -> None:
    from announcer import config as cfg

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "announcer.toml"
        path.write_text(body, encoding="utf-8")
        try:
            cfg.load(path)
        except ConfigError as err:
            raise MigrationError(
                [
                    f"the translation does not load: {p.removeprefix(str(path) + ': ')}"
                    for p in err.problems
                ]
            ) from None


# ---------------------------------------------------------------- the command

COMMAND = "import-exabgp-healthcheck"

EPILOG = """\
examples:
  announcer import-exabgp-healthcheck -- --cmd "curl -sf http://127.0.0.1/" \\
      --ip 192.0.2.10/32 --rise 2 --fall 2 --withdraw-on-down > announcer.toml
  announcer import-exabgp-healthcheck --exabgp-conf /etc/exabgp/exabgp.conf

Every option of exabgp healthcheck (ExaBGP 4.2 and 5.0) becomes announcer config
or is named, in the output's comments, as not supported with the reason. The
output is loaded before it is printed: it passes announcer check-config.

exit status:
  0  the TOML is on stdout (read its comments: what differs)
  2  a problem, one line each on stderr, naming the option or the file
"""


def _option_help() -> str:
    lines = ["", "what each exabgp healthcheck option becomes:"]
    for option in OPTIONS:
        what = option.becomes or f"not supported: {option.unsupported}"
        lines.append(f"  {', '.join(option.flags):<24}{what}")
    return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The command in the CLI (``announcer --help`` lists it)."""
    parser = sub.add_parser(
        COMMAND,
        help="translate an exabgp healthcheck command line (or exabgp.conf) into announcer TOML",
        description="Print the announcer configuration equivalent to an exabgp healthcheck "
        "command line: its arguments (after --, with or without 'exabgp healthcheck' in "
        "front), or the process blocks of an exabgp.conf that run it (one service each).",
        epilog=EPILOG + _option_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--exabgp-conf", metavar="FILE", help="read the command lines from this exabgp.conf"
    )
    parser.add_argument(
        "--name",
        default="service",
        help="the service's name when --name is not given "
        "(default: service; from exabgp.conf: the process's name)",
    )
    parser.add_argument("args", nargs="*", metavar="ARG", help="exabgp healthcheck's arguments")


def main(args: argparse.Namespace) -> int:
    try:
        if args.exabgp_conf:
            if args.args:
                raise MigrationError(["give an exabgp.conf or arguments, not both"])
            lines = from_exabgp_conf(Path(args.exabgp_conf))
            source = args.exabgp_conf
            named = [(f"{args.exabgp_conf}: process {p}", p, argv) for p, argv in lines]
        else:
            if not args.args:
                raise MigrationError(
                    ["give exabgp healthcheck's arguments (after --) or --exabgp-conf"]
                )
            source = "exabgp healthcheck " + shlex.join(without_program(list(args.args)))
            named = [("the command line", args.name, list(args.args))]
        parts = []
        for where, default, argv in named:
            options = parse(argv, where)
            parts.append((where, translate(options, options.name or default, where)))
        text = to_toml(parts, source)
    except MigrationError as err:
        sys.stderr.writelines(f"announcer: {line}\n" for line in err.problems)
        return 2
    sys.stdout.write(text)
    return 0
