"""The ``announcer`` command line: ``main(argv) -> int``.

Exit statuses: :data:`announcer.protocol.EXIT_STATUS_HELP` (0 ok, 1 refused or
failed, 2 usage or configuration error, 3 daemon not reachable).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from announcer import __version__, client, migrate
from announcer.defaults import DEFAULT_CONFIG
from announcer.errors import ConfigError
from announcer.log import Level, Logger
from announcer.protocol import EXIT_OK, EXIT_STATUS_HELP, EXIT_USAGE

if TYPE_CHECKING:
    from announcer.config import Config

DESCRIPTION = """\
Keeps this node's anycast prefixes announced through ExaBGP while the local
services pass their health checks, withdraws them when they fail, and drains
them gracefully (lower preference first, withdraw after a drain period) for
planned work.

ExaBGP starts the daemon as its API process:

  process announcer { run /usr/bin/announcer run --config /etc/announcer/announcer.toml;
                      encoder text; }

Try:
  announcer check-config /etc/announcer/announcer.toml   validate before a reload
  announcer print-config /etc/announcer/announcer.toml   see every default filled in
"""

EPILOG = (
    EXIT_STATUS_HELP
    + """
Logs go to stderr, one event per line; stdout is reserved for ExaBGP commands.
"""
)


def _config_path(value: str | None) -> Path:
    if value:
        return Path(value)
    return Path(os.environ.get("ANNOUNCER_CONFIG", str(DEFAULT_CONFIG)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="announcer",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"announcer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="the daemon ExaBGP runs as its process (reads acks on stdin, writes commands)",
        description="Run the health-check daemon. Meant to be started by ExaBGP; stdout "
        "carries ExaBGP commands only. SIGTERM withdraws every announced prefix and exits 0.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    run.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help=f"main config file (default: $ANNOUNCER_CONFIG or {DEFAULT_CONFIG})",
    )
    run.add_argument("--log-file", metavar="PATH", help="append logs here instead of stderr")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    def on_a_file(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_, description=description)
        command.add_argument("path", nargs="?", metavar="PATH", help="main config file")
        return command

    on_a_file(
        "check-config",
        "validate a config (and its conf.d) without running anything",
        "Validate the main file and every included file. Exit 0 when valid, "
        "2 with one line per problem otherwise.",
    )
    show = on_a_file(
        "print-config",
        "print the effective config with every default filled in",
        "Print the configuration as the daemon would use it: defaults applied, "
        "conf.d merged, prefixes normalised.",
    )
    show.add_argument("--format", choices=["toml", "json"], default="toml")
    client.add_commands(sub)
    migrate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "check-config":
        return _check_config(_config_path(args.path))
    if args.command == "print-config":
        return _print_config(_config_path(args.path), args.format)
    if args.command == "run":
        return _run(args)
    if args.command in client.CONTROL_COMMANDS:
        return client.run_command(args)
    if args.command == migrate.COMMAND:
        return migrate.main(args)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # not reached: parser.error exits


def _load_or_report(path: Path, stream: TextIO) -> Config | None:
    from announcer import config as cfg  # late: the control commands never need pydantic

    try:
        return cfg.load(path)
    except ConfigError as err:
        for line in err.problems:
            stream.write(f"announcer: {line}\n")
        stream.flush()
        return None


def _check_config(path: Path) -> int:
    config = _load_or_report(path, sys.stderr)
    if config is None:
        return EXIT_USAGE
    prefixes = sum(len(e.service.prefixes) for e in config.services)
    n = len(config.services)
    print(
        f"{path}: ok ({n} service{'' if n == 1 else 's'}, "
        f"{prefixes} prefix{'' if prefixes == 1 else 'es'})"
    )
    forwarding = config.settings.forwarding
    if forwarding is not None and any(e.service.forward_connections for e in config.services):
        from announcer.forwarding.kernel import NetKernel

        for what in NetKernel(forwarding).missing():
            print(f"{path}: forwarding: missing here: {what}", file=sys.stderr)
    return EXIT_OK


def _print_config(path: Path, fmt: str) -> int:
    config = _load_or_report(path, sys.stderr)
    if config is None:
        return EXIT_USAGE
    data = config.effective()
    # Every included service is written out below: the output stands alone.
    data["include"] = ""
    if fmt == "json":
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(to_toml(data))
    return EXIT_OK


def _load_for_run(
    path: Path, stream: TextIO, level: Level
) -> tuple[Config, Logger, str | None] | None:
    """The config to run, its logger, and why the file did not load (None if it did).

    A file that does not load falls back to the last good config kept in state_dir:
    ExaBGP respawns a controller that exits, and after five deaths in 64 s it exits
    itself, dropping every route, while nobody checks the services any more. With
    no usable last good config there is nothing known to check: report, None (exit 2).
    """
    from announcer import config as cfg

    try:
        config = cfg.load(path)
        return config, Logger(stream, fmt=config.settings.log_format, level=level), None
    except ConfigError as err:
        error = err
    try:
        last = cfg.load_last_good(path)
    except ConfigError as unusable:
        last = None
        error = ConfigError([*error.problems, *unusable.problems])
    if last is None:
        for line in error.problems:
            stream.write(f"announcer: {line}\n")
        stream.flush()
        return None
    log = Logger(stream, fmt=last.config.settings.log_format, level=level)
    for problem in error.problems:
        log.error("config_invalid", config=str(path), problem=problem)
    log.error(
        "config_invalid",
        config=str(path),
        action="running on the last good config until a reload of the file succeeds",
        last_good=str(last.file),
        saved=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last.saved)),
    )
    return last.config, log, str(error)


def _warn_unverified_tls(config: Config, log: Logger) -> None:
    """verify_tls = false is an operator's explicit choice: say so once at start, not per check."""
    for entry in config.services:
        for spec in entry.service.checks:
            url = getattr(spec, "url", "")
            if url.lower().startswith("https:") and getattr(spec, "verify_tls", True) is False:
                log.warning("tls_unverified", service=entry.service.name, url=url)


GC_THRESHOLD = (10_000, 10, 10)
"""The collector's thresholds: generation 0 at 10,000 new objects, not 700. Every check
makes short-lived containers, and collecting after every 700 of them cost more than the
cycles it found (P3: 0.3 s of collections in 30 s at 1,000 services, 0.04 s after)."""


def settle_memory() -> None:
    """Take what start-up built (imports, config, services: it lives as long as the
    process) out of the collector's way, so that a full collection no longer walks it: at
    1,000 services one took 64-90 ms, every check waiting meanwhile (38-62 ms after)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _run(args: argparse.Namespace) -> int:
    from announcer.addresses import Watcher
    from announcer.daemon import Daemon  # imported late: keeps the other commands quick
    from announcer.notify import Notifier

    stream: TextIO = sys.stderr
    if args.log_file:
        try:
            stream = open(args.log_file, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as err:
            sys.stderr.write(f"announcer: --log-file {args.log_file}: {err.strerror}\n")
            return EXIT_USAGE
    path = _config_path(args.config)
    loaded = _load_for_run(path, stream, args.log_level)
    if loaded is None:
        return EXIT_USAGE
    config, log, config_error = loaded
    _warn_unverified_tls(config, log)
    notifier = Notifier.from_env(log=log, stall_limit=config.settings.stall_limit)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(key, None)  # command checks' children must not talk to systemd
    metrics = None
    server = None
    address = config.settings.metrics_address
    if address is not None:
        from announcer.metrics import Metrics

        metrics = Metrics()
        metrics.config_ok(config_error is None)  # right from the first scrape
        try:
            server = metrics.serve(*address)
        except OSError as err:
            log.error("metrics_listen_failed", address=config.settings.metrics_listen, why=str(err))
    daemon = Daemon(
        config,
        out=sys.stdout.buffer,
        inp=sys.stdin.buffer,
        log=log,
        notifier=notifier,
        metrics=metrics,
        stall_limit=config.settings.stall_limit,
        config_error=config_error,
        kernel=lambda post: Watcher(post, log),
    )
    daemon.inbox.catch_signals()
    from announcer.control import daemon_handler
    from announcer.control_server import ControlServer
    from announcer.errors import ControlError

    control: ControlServer | None = None
    try:
        control = ControlServer(
            config.settings.control_socket,
            daemon_handler(daemon),
            group=config.settings.control_group,
            log=log,
        )
        control.start()
    except ControlError as err:
        # Exiting would make ExaBGP respawn us in a loop and then give up, dropping every
        # session: keep announcing and say loudly that the operator interface is missing.
        log.error("control_socket_failed", path=str(config.settings.control_socket), why=str(err))
        control = None
    settle_memory()
    try:
        status = daemon.run()
    finally:
        if control is not None:
            control.close()
        if server is not None:
            server.close()
    # The stdin reader thread may still be blocked in a read: a normal interpreter
    # shutdown would wait on (or abort over) its buffer lock. Everything is saved and
    # sent by now, so flush what is ours and leave at once.
    for out in (sys.stdout, sys.stderr, stream):
        with contextlib.suppress(OSError, ValueError):
            out.flush()
    os._exit(status)


# ---------------------------------------------------------------- TOML output


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_string(text: str) -> str:
    # Not json.dumps alone: it escapes characters outside the BMP as surrogate pairs
    # ("\ud83d\ude00"), which TOML rejects. Write them as they are; TOML files are
    # UTF-8. DEL is the one control character JSON leaves unescaped and TOML forbids.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    # Bare keys are ASCII letters, digits, _ and - only (str.isalnum takes "é" too).
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return _toml_string(key)


def to_toml(data: dict[str, Any]) -> str:
    """Write the effective config as TOML (top-level keys, then [[service]] tables)."""
    lines: list[str] = []
    services = data.get("service", [])
    for key, value in data.items():
        if key != "service" and value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for svc in services:
        lines.append("")
        source = svc.pop("_source", None)
        if source:
            lines.append(f"# from {source}")
        lines.append("[[service]]")
        tables = {k: v for k, v in svc.items() if isinstance(v, dict)}
        checks = svc.get("checks", [])
        for key, value in svc.items():
            if key in tables or key == "checks" or value is None:
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            lines.append(f"[service.{_toml_key(key)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        for check in checks:
            lines.append("[[service.checks]]")
            lines.extend(
                f"{_toml_key(k)} = {_toml_value(v)}" for k, v in check.items() if v is not None
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
