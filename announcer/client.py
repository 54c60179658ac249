"""The operator's side of the control socket: ``announcer status|drain|undrain|reload``.

:class:`ControlClient` speaks the JSON-lines protocol of :mod:`announcer.control`;
:func:`add_commands` adds the subcommands to the CLI's parser and
:func:`run_command` runs one, returning the exit status (0 ok, 1 refused or
failed, 2 usage or configuration error, 3 the daemon not reachable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from announcer.defaults import DEFAULT_CONTROL_SOCKET
from announcer.errors import ConfigError, ControlError
from announcer.protocol import COMMANDS, PROTOCOL_VERSION, ControlRefused

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

CONTROL_COMMANDS = ("status", "drain", "undrain", "reload")
"""The subcommands :func:`add_commands` adds (``args.control_command`` names the one given)."""

DEFAULT_TIMEOUT = 5.0
CONNECT_RETRY = 2.0
"""How long to keep trying while the socket is missing or refuses (the daemon is starting)."""
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.5
"""Pauses between tries while the daemon is overloaded: doubling from the first to the
most, each a random 50-100 % of that (so clients turned away together do not return
together)."""
POLL_INTERVAL = 0.2
MAX_REPLY = 64 * 1024 * 1024

_ABSENT = (FileNotFoundError, ConnectionRefusedError)
"""No daemon at the socket (yet): tried again for ``connect_retry`` seconds."""


class _Dropped(Exception):
    """The daemon closed the connection before answering."""


def _pause(delay: float, left: float) -> float:
    """Sleep a jittered ``delay`` (never past ``left`` seconds); the next, longer delay."""
    import random  # only when the daemon is overloaded: the usual run does without it

    jitter = random.uniform(delay / 2, delay)  # noqa: S311 - spreads retries, not a secret
    time.sleep(max(0.0, min(jitter, left)))
    return min(delay * 2, BACKOFF_MAX)


class ControlClient:
    """One connection to the daemon, opened on the first request and reused after.

    ``request`` returns the reply's ``result``; it raises :class:`ControlError`
    with ``code`` 3 when the daemon cannot be reached or does not answer within
    ``timeout``, :class:`~announcer.protocol.ControlRefused` (code 1, ``kind``
    the protocol's error code) for an error reply, and code 2 for a request
    that cannot be sent at all.

    An overloaded daemon is tried again, with growing pauses, for ``retry_for``
    seconds (default: ``timeout``): a "busy" reply, a connection closed without
    an answer, and a full accept queue (EAGAIN on connect). Every request may be
    sent twice: status and ping change nothing, and drain, undrain and reload
    give the same outcome when repeated.
    """

    def __init__(
        self,
        path: Path | str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        connect_retry: float | None = None,
        retry_for: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.connect_retry = CONNECT_RETRY if connect_retry is None else connect_retry
        self.retry_for = timeout if retry_for is None else retry_for
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        if sock is not None:
            sock.close()

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its result (see the class docstring for errors)."""
        if cmd not in COMMANDS:
            raise ControlError(f"unknown control command {cmd!r}", code=EXIT_USAGE)
        try:
            line = json.dumps({"v": PROTOCOL_VERSION, "cmd": cmd, **fields}).encode() + b"\n"
        except (TypeError, ValueError) as err:
            raise ControlError(f"cannot encode the request: {err}", code=EXIT_USAGE) from err
        deadline = time.monotonic() + self.retry_for
        delay = BACKOFF_FIRST
        while True:
            reused = self._sock is not None
            try:
                reply = self._exchange(line)
            except _Dropped:
                self.close()
                if reused:
                    # The daemon closes idle connections without reading from them; it
                    # never saw this request: send it again at once on a new connection.
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ControlError(
                        "the daemon closed the connection without answering",
                        code=EXIT_UNREACHABLE,
                    ) from None
                delay = _pause(delay, left)  # e.g. dropped by a daemon swamped with connections
                continue
            if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
                raise ControlError(f"unexpected reply from the daemon: {str(reply)[:200]}")
            if reply["ok"]:
                result = reply.get("result")
                return result if isinstance(result, dict) else {}
            kind = str(reply.get("code") or "refused")
            message = str(reply.get("error") or "the daemon refused the request")
            if kind == "busy":
                self.close()  # the daemon closes a connection it turns away
                left = deadline - time.monotonic()
                if left > 0:
                    delay = _pause(delay, left)
                    continue
                message += f" (still busy after trying for {self.retry_for:g}s)"
            raise ControlRefused(message, kind)

    # ------------------------------------------------------------ transport

    def _connect(self) -> socket.socket:
        def with_retries() -> socket.socket:
            began = time.monotonic()
            delay = BACKOFF_FIRST
            while True:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(str(self.path))
                    return sock
                except _ABSENT:
                    sock.close()  # the daemon may be starting
                    left = began + self.connect_retry - time.monotonic()
                    if left <= 0:
                        raise
                    time.sleep(min(0.1, left))
                except BlockingIOError:
                    sock.close()  # its accept queue is full: the daemon is swamped
                    left = began + self.retry_for - time.monotonic()
                    if left <= 0:
                        raise
                    delay = _pause(delay, left)
                except BaseException:
                    sock.close()
                    raise

        where = str(self.path)
        try:
            sock: socket.socket = with_retries()
        except FileNotFoundError:
            raise ControlError(
                f"cannot reach the daemon: {where} does not exist (is announcer running "
                "under ExaBGP? does its control_socket differ? see --socket)",
                code=EXIT_UNREACHABLE,
            ) from None
        except ConnectionRefusedError:
            raise ControlError(
                f"cannot reach the daemon: nothing accepts connections on {where} "
                "(the daemon is not running)",
                code=EXIT_UNREACHABLE,
            ) from None
        except BlockingIOError:
            raise ControlError(
                f"cannot reach the daemon: its queue of connections on {where} stayed "
                f"full for {self.retry_for:g}s (the daemon is overloaded)",
                code=EXIT_UNREACHABLE,
            ) from None
        except PermissionError:
            raise ControlError(
                f"cannot reach the daemon: permission denied on {where} (run as root, or "
                "as a member of the control_group)",
                code=EXIT_UNREACHABLE,
            ) from None
        except TimeoutError:
            raise ControlError(
                f"cannot reach the daemon: {where} did not accept within {self.timeout:g}s",
                code=EXIT_UNREACHABLE,
            ) from None
        except OSError as err:
            raise ControlError(
                f"cannot reach the daemon at {where}: {err.strerror or err}",
                code=EXIT_UNREACHABLE,
            ) from None
        return sock

    def _exchange(self, line: bytes) -> Any:
        if self._sock is None:
            self._sock = self._connect()
        sock = self._sock
        try:
            sock.sendall(line)
        except TimeoutError:
            self.close()
            raise ControlError(
                f"the daemon did not take the request within {self.timeout:g}s",
                code=EXIT_UNREACHABLE,
            ) from None
        except OSError:
            pass  # closed on us: an error reply (e.g. busy) may still be waiting to be read
        raw = self._readline(sock)
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as err:
            self.close()
            raise ControlError(f"garbled reply from the daemon: {err}") from None

    def _readline(self, sock: socket.socket) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > MAX_REPLY:
                self.close()
                raise ControlError("the daemon's reply is too long")
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise ControlError(
                    f"the daemon did not answer within {self.timeout:g}s", code=EXIT_UNREACHABLE
                )
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue  # the deadline check above reports it
            except OSError:
                chunk = b""
            if not chunk:
                raise _Dropped
            self._buf += chunk


# ---------------------------------------------------------------- formatting


def _clean(text: object) -> str:
    """One line of printable text (reasons come from checks and may hold anything)."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def format_duration(seconds: object, *, up: bool = False) -> str:
    """``12s``, ``3m04s``, ``2h05m``, ``3d04h``; ``-`` when unknown.

    ``up`` rounds up (for countdowns: a drain 0.2 s from its end shows 1s).
    """
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = math.ceil(seconds) if up else math.floor(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_attributes(attrs: object) -> str:
    """The attributes on the wire, compact: ``med 1000 comm 65535:0``; ``-`` for none."""
    if not isinstance(attrs, Mapping):
        return "-"
    words: list[str] = []
    if attrs.get("med") is not None:
        words.append(f"med {attrs['med']}")
    if attrs.get("local_preference") is not None:
        words.append(f"lpref {attrs['local_preference']}")
    if attrs.get("as_path_prepend"):
        words.append(f"prepend {attrs['as_path_prepend']}")
    if attrs.get("communities"):
        words.append("comm " + ",".join(str(c) for c in attrs["communities"]))
    if attrs.get("large_communities"):
        words.append("lcomm " + ",".join(str(c) for c in attrs["large_communities"]))
    return " ".join(words) or "-"


def format_last_check(svc: Mapping[str, Any], width: int = 40) -> str:
    ok = svc.get("last_ok")
    if ok is None:
        return "-"
    reason = _clean(svc.get("last_reason") or "")
    text = ("ok" if ok else "fail") + (f": {reason}" if reason else "")
    return truncate(text, width)


def format_drain(svc: Mapping[str, Any]) -> str:
    left = svc.get("drain_left")
    if left is not None:
        return format_duration(left, up=True)
    if svc.get("drained"):
        return "done" if svc.get("route") == "WITHDRAWN" else "yes"
    return "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]


def _services(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    services = result.get("services")
    if not isinstance(services, Mapping):
        return {}
    return {str(k): v for k, v in services.items() if isinstance(v, Mapping)}


def render_status(result: Mapping[str, Any]) -> str:
    """The human ``status`` output: a table of services, then the daemon's own state."""
    services = _services(result)
    lines: list[str] = []
    if services:
        with_conns = any(s.get("connections") is not None for s in services.values())
        headers = [
            "SERVICE",
            "HEALTH",
            "ROUTE",
            "PREFIXES",
            "ATTRIBUTES",
            "LAST CHECK",
            "FOR",
            "DRAIN",
        ]
        if with_conns:
            headers.append("CONNS")
        rows: list[list[str]] = []
        for name, svc in services.items():
            prefixes = svc.get("prefixes") or []
            row = [
                _clean(name),
                _clean(svc.get("health", "?")),
                _clean(svc.get("route", "?")),
                ",".join(_clean(p) for p in prefixes) if prefixes else "-",
                _clean(format_attributes(svc.get("attributes"))),
                format_last_check(svc),
                format_duration(svc.get("route_for")),
                format_drain(svc),
            ]
            if with_conns:
                conns = svc.get("connections")
                row.append("-" if conns is None else _clean(conns))
            rows.append(row)
        lines.extend(_table(headers, rows))
    else:
        lines.append("no services configured")

    notes: list[str] = []
    for name, svc in services.items():
        if svc.get("drained"):
            sources = ", ".join(_clean(s) for s in svc.get("drain_sources") or []) or "?"
            reason = _clean(svc.get("drain_reason") or "")
            notes.append(f"{name}: drained by {sources}" + (f": {reason}" if reason else ""))
        held = svc.get("dampened_for")
        if held is not None:
            notes.append(f"{name}: flapping, held for {format_duration(held, up=True)} (dampened)")
        if svc.get("retiring"):
            notes.append(f"{name}: removed from the config, withdrawing")
    if notes:
        lines.append("")
        lines.extend(notes)

    lines.append("")
    exabgp = result.get("exabgp")
    if isinstance(exabgp, Mapping):
        text = (
            f"exabgp: sent {exabgp.get('sent', '?')}, done {exabgp.get('done', '?')}, "
            f"errors {exabgp.get('error', '?')}, pending {exabgp.get('pending', '?')}"
        )
        if exabgp.get("last_error"):
            text += f"; last error: {_clean(exabgp['last_error'])}"
        lines.append(text)
    neighbors = result.get("neighbors")
    if isinstance(neighbors, Mapping):
        if neighbors:
            lines.append(
                "neighbors: " + ", ".join(f"{_clean(k)} {_clean(v)}" for k, v in neighbors.items())
            )
        else:
            lines.append("neighbors: none reported yet")
    if result.get("uptime") is not None:
        lines.append(f"uptime: {format_duration(result.get('uptime'))}")
    if result.get("config_error"):
        lines.append("config error (last reload failed; running the previous config):")
        lines.extend(f"  {_clean(x)}" for x in str(result["config_error"]).splitlines())
    if result.get("reload_note"):
        lines.append(f"note: {_clean(result['reload_note'])}")
    if result.get("state_error"):
        lines.append(
            f"state file not saved (drains made now would be forgotten by a restart): "
            f"{_clean(result['state_error'])}"
        )
    return "\n".join(lines) + "\n"


def describe_change(cmd: str, name: str, svc: Mapping[str, Any]) -> str:
    """One line saying what a drain or undrain did to a service."""
    route = _clean(svc.get("route", "?"))
    left = svc.get("drain_left")
    sources = [_clean(s) for s in svc.get("drain_sources") or []]
    changed = svc.get("changed", True)
    if cmd == "drain":
        if route == "DRAINING" and left is not None:
            now = f"draining, withdraw in {format_duration(left, up=True)}"
        elif route == "WITHDRAWN":
            now = "drained, withdrawn"
        else:
            now = f"drained, route {route}"
        if not changed:
            return f"{name}: already drained ({', '.join(sources) or '?'}); {now}"
        return f"{name}: {now}"
    if svc.get("drained"):
        hint = " (remove the maintenance file)" if "maintenance" in sources else ""
        lifted = "operator drain lifted, but " if changed else ""
        return f"{name}: {lifted}still drained by {', '.join(sources) or '?'}{hint}"
    health = svc.get("health")
    tail = f"route {route}" + (f" (health {_clean(health)})" if health else "")
    if not changed:
        return f"{name}: was not drained; {tail}"
    return f"{name}: undrained, {tail}"


def describe_reload(result: Mapping[str, Any]) -> list[str]:
    lines = ["config reloaded"]
    changes = result.get("changes")
    if isinstance(changes, Mapping):
        for key in ("added", "changed", "removed"):
            names = changes.get(key) or []
            if names:
                lines.append(f"  {key}: {', '.join(_clean(n) for n in names)}")
        if not any(changes.get(k) for k in ("added", "changed", "removed")):
            lines.append("  no service changed")
    if result.get("note"):
        lines.append(f"note: {_clean(result['note'])}")
    return lines


# ---------------------------------------------------------------- commands

_SOCKET_HELP = (
    "the daemon's control socket (default: $ANNOUNCER_SOCKET, else control_socket "
    "of --config or $ANNOUNCER_CONFIG, else {default})"
)

_EXIT = """
exit status:
  0  success
  1  refused or failed (the message says why)
  2  usage or configuration error
  3  the daemon is not reachable (not running, wrong --socket, or no permission)
"""

STATUS_EPILOG = (
    """\
examples:
  announcer status                       every service, as a table
  announcer status web dns               only these services
  announcer status --json | jq -r '.services.web.route'
  announcer status --socket /run/announcer-b/control.sock

columns:
  HEALTH      what the checks say: INIT, RISING, UP, FALLING, DOWN
  ROUTE       what this node announces: ANNOUNCED, DRAINING (lowered, to be
              withdrawn), LOWERED (service down, on_down = "lower"), WITHDRAWN,
              UNKNOWN (just restarted without a readable state file: ExaBGP may
              still hold the old route; asserted once the first checks decide)
  ATTRIBUTES  what is on the wire: med, lpref (local-preference), prepend,
              comm (communities), lcomm (large communities)
  LAST CHECK  the last check round: ok or fail, and why
  FOR         how long the route has been in its state
  DRAIN       time until a draining route is withdrawn; "done" once withdrawn
"""
    + _EXIT
)

DRAIN_EPILOG = (
    """\
A drain moves traffic away gracefully: the route is re-announced at once with
the service's drain attributes (by default med 1000 and the GRACEFUL_SHUTDOWN
community 65535:0) so routers prefer other nodes, and is withdrawn when the
service's drain_seconds have passed. Checks keep running while drained. The
drain lasts until "announcer undrain" (it survives a daemon restart); a drain
by the maintenance file is separate and lasts while that file exists.

examples:
  announcer drain web --reason "kernel upgrade"
  announcer drain --all --wait                 drain everything, wait for the withdraw
  announcer drain web --wait --timeout 120 && systemctl stop nginx
"""
    + _EXIT
    + "  with --wait: 0 once every named service is WITHDRAWN, 1 if --timeout passes first\n"
)

UNDRAIN_EPILOG = (
    """\
Lifts the drain made with "announcer drain": the route returns to what health
says (announced again if the service is UP). A maintenance-file drain is not
lifted: remove the file.

examples:
  announcer undrain web
  announcer undrain --all
"""
    + _EXIT
    + "  undrain exits 1 when a service stays drained by another source\n"
)

RELOAD_EPILOG = (
    """\
Re-reads the config and conf.d, and applies only the difference: added services
start checking, changed ones are re-announced only if their routes change,
removed ones are drained and then withdrawn. A config with errors is refused
and the daemon keeps running on the previous one (the same as SIGHUP, but you
see the errors here).

examples:
  announcer check-config && announcer reload
"""
    + _EXIT
)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``, ``drain``, ``undrain`` and ``reload`` to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", metavar="PATH", help=_SOCKET_HELP.format(default=DEFAULT_CONTROL_SOCKET)
    )
    common.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help="read control_socket from this config file (default: $ANNOUNCER_CONFIG, if set)",
    )
    common.add_argument(
        "--json", action="store_true", help="print the daemon's answer as JSON, for scripts"
    )

    def parser(name: str, help_: str, description: str, epilog: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(
            name,
            parents=[common],
            help=help_,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(control_command=name, control_parser=p)
        return p

    status = parser(
        "status",
        "show every service's health, route and drain",
        "Show what the running daemon is doing: per service its health, the route "
        "it announces and with which attributes, the last check and any drain.",
        STATUS_EPILOG,
    )
    status.add_argument("services", nargs="*", metavar="SERVICE", help="only these services")

    drain = parser(
        "drain",
        "lower a service's route now and withdraw it after its drain period",
        "Drain services for planned work: lower the route now, withdraw it after drain_seconds.",
        DRAIN_EPILOG,
    )
    drain.add_argument("services", nargs="*", metavar="SERVICE", help="services to drain")
    drain.add_argument("--all", action="store_true", help="drain every service")
    drain.add_argument(
        "--reason", metavar="TEXT", default="", help="why (shown in status and the logs)"
    )
    drain.add_argument(
        "--wait",
        action="store_true",
        help="wait until every named service is withdrawn, showing progress on stderr",
    )
    drain.add_argument(
        "--stop",
        action="store_true",
        help="a drain for stopping the service (systemd ExecStop): not kept across a "
        "restart, so the node announces again once it is started and healthy",
    )
    drain.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive,
        help="with --wait: give up (exit 1) after this long; the drain goes on (default: none)",
    )

    undrain = parser(
        "undrain",
        "lift an operator drain: the route follows health again",
        "Lift the drain made with 'announcer drain'.",
        UNDRAIN_EPILOG,
    )
    undrain.add_argument("services", nargs="*", metavar="SERVICE", help="services to undrain")
    undrain.add_argument("--all", action="store_true", help="undrain every service")

    parser(
        "reload",
        "re-read the config and apply the difference",
        "Ask the running daemon to reload its config.",
        RELOAD_EPILOG,
    )


def socket_path(args: argparse.Namespace) -> Path:
    """--socket, else $ANNOUNCER_SOCKET, else the config's control_socket, else the default."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    env = os.environ.get("ANNOUNCER_SOCKET")
    if env:
        return Path(env)
    config = getattr(args, "config", None) or os.environ.get("ANNOUNCER_CONFIG")
    if config:
        from announcer import config as cfg  # only here: loading pydantic costs ~0.2 s

        return cfg.load(config).settings.control_socket
    return DEFAULT_CONTROL_SOCKET


def run_command(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the control subcommand ``args`` was parsed for; returns the exit status."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    cmd: str = args.control_command
    if cmd in ("drain", "undrain"):
        problem = None
        if args.all and args.services:
            problem = "give service names or --all, not both"
        elif not args.all and not args.services:
            problem = "name at least one service, or give --all"
        if problem:
            parser = getattr(args, "control_parser", None)
            if parser is not None:
                err.write(parser.format_usage())
            err.write(f"announcer {cmd}: {problem}\n")
            return EXIT_USAGE
    try:
        path = socket_path(args)
    except ConfigError as error:
        for line in error.problems:
            err.write(f"announcer: {line}\n")
        return EXIT_USAGE
    try:
        with ControlClient(path) as client:
            if cmd == "status":
                return _status(client, args, out)
            if cmd == "reload":
                result = client.request("reload")
                _emit(out, args, describe_reload(result), result)
                return EXIT_OK
            return _drain_or_undrain(client, cmd, args, out, err)
    except ControlError as error:
        err.write(f"announcer: {error}\n")
        return error.code


def _emit(out: TextIO, args: argparse.Namespace, lines: Iterable[str], result: Any) -> None:
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write("".join(f"{line}\n" for line in lines))
    out.flush()


def _status(client: ControlClient, args: argparse.Namespace, out: TextIO) -> int:
    fields: dict[str, Any] = {"services": list(args.services)} if args.services else {}
    result = client.request("status", **fields)
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write(render_status(result))
    out.flush()
    return EXIT_OK


def _drain_or_undrain(
    client: ControlClient, cmd: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    fields: dict[str, Any] = {"all": True} if args.all else {"services": list(args.services)}
    if cmd == "drain" and args.reason:
        fields["reason"] = args.reason
    if cmd == "drain" and getattr(args, "stop", False):
        fields["stop"] = True
    result = client.request(cmd, **fields)
    services = _services(result)
    _emit(out, args, [describe_change(cmd, n, s) for n, s in services.items()], result)
    unsaved = result.get("state_error")
    if unsaved:
        # Applied on the wire, but a restarted controller would not know: say so and fail.
        err.write(
            f"announcer: {cmd} applied but not saved: {_clean(unsaved)}; a restarted "
            "controller would forget it (fix the state directory, then run it again)\n"
        )
    failed = EXIT_FAILED if unsaved else EXIT_OK
    if cmd == "undrain":
        held = [n for n, s in services.items() if s.get("drained")]
        return EXIT_FAILED if held else failed
    if not args.wait:
        return failed
    return max(failed, wait_withdrawn(client, list(services), timeout=args.timeout, err=err))


def _progress(name: str, svc: Mapping[str, Any] | None) -> str:
    if svc is None:
        return f"{name}: gone from the config"
    route = _clean(svc.get("route", "?"))
    text = f"{name}: {route}"
    if route != "WITHDRAWN" and svc.get("drain_left") is not None:
        text += f", withdraw in {format_duration(svc['drain_left'], up=True)}"
    conns = svc.get("connections")
    if conns is not None:
        text += f", {_clean(conns)} connection{'' if conns == 1 else 's'}"
    return text


def wait_withdrawn(
    client: ControlClient,
    names: Sequence[str],
    *,
    timeout: float | None,
    err: TextIO,
    poll: float | None = None,
) -> int:
    """Poll status until every service in ``names`` is WITHDRAWN: 0, or 1 on timeout.

    Progress goes to ``err``: a refreshing line on a terminal, else one line
    per service whenever its route or connection count changes (and every 5 s
    of countdown).
    """
    interval = POLL_INTERVAL if poll is None else poll
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    tty = err.isatty()
    shown: dict[str, tuple[Any, ...]] = {}
    current: dict[str, Mapping[str, Any] | None] = {}
    pending = list(names)
    try:
        while True:
            try:
                services: dict[str, Mapping[str, Any]] | None = _services(client.request("status"))
            except ControlRefused as error:
                if error.kind != "busy":
                    raise
                services = None  # still swamped after the client's own tries: keep waiting
            if services is not None:
                current = {n: services.get(n) for n in names}
                _show_progress(current, shown, err, tty)
                undrained = [
                    n for n, s in current.items() if s is not None and not s.get("drained")
                ]
                if undrained:
                    _finish(err, tty)
                    err.write(
                        f"announcer: {', '.join(undrained)} no longer drained (undrained "
                        "meanwhile?); stopped waiting\n"
                    )
                    return EXIT_FAILED
                pending = [
                    n for n, s in current.items() if s is not None and s.get("route") != "WITHDRAWN"
                ]
                if not pending:
                    _finish(err, tty)
                    took = format_duration(time.monotonic() - start)
                    err.write(
                        f"withdrawn: {', '.join(names) or 'nothing to drain'} (after {took})\n"
                    )
                    return EXIT_OK
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                _finish(err, tty)
                still = (
                    "; ".join(_progress(n, current[n]) for n in pending)
                    if current
                    else "unknown, the daemon was too busy to answer"
                )
                err.write(
                    f"announcer: timed out after {timeout:g}s; still announced: {still} "
                    "(the drain goes on)\n"
                )
                return EXIT_FAILED
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - now)))
    except KeyboardInterrupt:
        _finish(err, tty)
        err.write("announcer: stopped waiting; the drain goes on (undrain to cancel it)\n")
        return EXIT_FAILED


def _show_progress(
    current: Mapping[str, Mapping[str, Any] | None],
    shown: dict[str, tuple[Any, ...]],
    err: TextIO,
    tty: bool,
) -> None:
    texts = [_progress(n, s) for n, s in current.items()]
    if tty:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        err.write("\r\x1b[K" + truncate(" | ".join(texts), width))
    else:
        for (name, svc), text in zip(current.items(), texts, strict=True):
            left = None if svc is None else svc.get("drain_left")
            key = (
                None if svc is None else svc.get("route"),
                None if svc is None else svc.get("connections"),
                None if not isinstance(left, int | float) else math.ceil(left / 5),
            )
            if shown.get(name) != key:
                shown[name] = key
                err.write(text + "\n")
    err.flush()


def _finish(err: TextIO, tty: bool) -> None:
    if tty:
        err.write("\n")


__all__ = [
    "CONTROL_COMMANDS",
    "ControlClient",
    "add_commands",
    "describe_change",
    "format_attributes",
    "format_duration",
    "render_status",
    "run_command",
    "socket_path",
    "wait_withdrawn",
]
