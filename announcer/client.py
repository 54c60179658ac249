"""The operator's side of the control socket: ``announcer status|drain|undrain|reload``.

Three layers: :mod:`announcer.transport` carries requests (one connection, its
retries), :mod:`announcer.render` has the pieces answers are rendered with, and
this module wires the commands into the CLI: one :class:`ClientCommand` per
command (its arguments and help, the request it sends, how its answer reads,
its exit status), registered with :func:`command`. :func:`add_commands` adds
them to the CLI's parser and :func:`run_command` runs one, returning the exit
status (:data:`announcer.protocol.EXIT_STATUS_HELP`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, NamedTuple, TextIO, TypeVar, cast

from announcer.attributes import legend
from announcer.defaults import DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET
from announcer.errors import ConfigError, ControlError
from announcer.protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    ChangedService,
    ControlRefused,
    DaemonStatus,
    ServiceStatus,
)
from announcer.render import (
    clean,
    format_attributes,
    format_drain,
    format_duration,
    format_last_check,
    services_of,
    table,
    truncate,
)
from announcer.transport import Transport

POLL_INTERVAL = 0.2


class ControlClient(Transport):
    """The transport (:class:`~announcer.transport.Transport`) for the commands this
    client knows (those of :data:`COMMANDS`, and ``ping``): any other is refused with
    exit status 2 before anything is sent."""

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        if cmd not in COMMANDS and cmd != "ping":
            raise ControlError(f"unknown control command {cmd!r}", code=EXIT_USAGE)
        return super().request(cmd, **fields)


class Session(NamedTuple):
    """One run of a command: its connection, its arguments, and where its output goes."""

    client: Transport
    args: argparse.Namespace
    out: TextIO
    err: TextIO

    def emit(self, text: str, result: Mapping[str, Any]) -> None:
        """The answer: as JSON with ``--json``, else ``text``."""
        self.out.write(json.dumps(result, indent=2) + "\n" if self.args.json else text)
        self.out.flush()


class ClientCommand:
    """One command on the operator's side: its CLI arguments and help, the request
    fields it sends, how its answer reads, and its exit status.

    A subclass sets the class attributes and overrides what differs; :func:`command`
    registers it. ``--socket``, ``--config`` and ``--json`` every command has; the
    exit statuses are added to its ``--help`` after ``epilog`` (then ``exit_notes``).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    """Its line in ``announcer --help``."""
    description: ClassVar[str]
    epilog: ClassVar[str]
    exit_notes: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The command's own arguments."""

    def usage_problem(self, args: argparse.Namespace) -> str | None:
        """Why the arguments do not go together (exit status 2, nothing sent), or None."""
        return None

    def local(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> int | None:
        """Run without the daemon when the arguments ask for it: the exit status; None
        (the default) sends the request."""
        return None

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        """The request's fields besides ``v`` and ``cmd``."""
        return {}

    def render(self, result: Mapping[str, Any]) -> str:
        """The answer as text (without ``--json``)."""
        raise NotImplementedError

    def run(self, session: Session) -> int:
        """Send the request, show the answer; the exit status."""
        result = session.client.request(self.name, **self.fields(session.args))
        session.emit(self.render(result), result)
        return EXIT_OK


COMMANDS: Final[dict[str, ClientCommand]] = {}
"""The control commands of the CLI, by name, in the order ``--help`` lists them."""

C = TypeVar("C", bound=type[ClientCommand])


def command(cls: C) -> C:
    """Register a :class:`ClientCommand`."""
    COMMANDS[cls.name] = cls()
    return cls


# ---------------------------------------------------------------- status


@command
class StatusCommand(ClientCommand):
    name = "status"
    summary = "show every service's health, route and drain"
    description = (
        "Show what the running daemon is doing: per service its health, the route "
        "it announces and with which attributes, the last check and any drain."
    )
    epilog = (
        """\
examples:
  announcer status                       every service, as a table
  announcer status web dns               only these services
  announcer status --json | jq -r '.services.web.route'
  announcer status --socket /run/announcer-b/control.sock
  announcer status --watch               redraw every second until Ctrl-C
  announcer status --watch --interval 5 web >> status.log   appends when not a terminal

columns:
  HEALTH      what the checks say: INIT, RISING, UP, FALLING, DOWN
  ROUTE       what this node announces: ANNOUNCED, DRAINING (lowered, to be
              withdrawn), LOWERED (service down, on_down = "lower"), WITHDRAWN,
              UNKNOWN (just restarted without a readable state file: ExaBGP may
              still hold the old route; asserted once the first checks decide)
"""
        + textwrap.fill(
            f"what is on the wire: {legend()}",
            width=76,
            initial_indent="  ATTRIBUTES  ",
            subsequent_indent=" " * 14,
            break_on_hyphens=False,
        )
        + """
  LAST CHECK  the last check round: ok or fail, and why
  FOR         how long the route has been in its state
  DRAIN       time until a draining route is withdrawn; "done" once withdrawn
"""
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("services", nargs="*", metavar="SERVICE", help="only these services")
        parser.add_argument(
            "--watch",
            action="store_true",
            help="redraw the table until Ctrl-C (drains count down); appends when stdout "
            "is not a terminal",
        )
        parser.add_argument(
            "--interval",
            metavar="SECONDS",
            type=_positive,
            help="with --watch: seconds between refreshes (default: 1)",
        )

    def usage_problem(self, args: argparse.Namespace) -> str | None:
        if args.interval is not None and not args.watch:
            return "--interval goes with --watch"
        return None

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"services": list(args.services)} if args.services else {}

    def render(self, result: Mapping[str, Any]) -> str:
        return render_status(cast(DaemonStatus, result))

    def run(self, session: Session) -> int:
        if not session.args.watch:
            return super().run(session)
        from announcer.watch import watch

        interval = session.args.interval or 1.0
        fields = self.fields(session.args)
        return watch(
            session.client,
            fields,
            self.render,
            interval=interval,
            as_json=session.args.json,
            out=session.out,
        )


_STATUS_HEADERS: Final = (
    "SERVICE",
    "HEALTH",
    "ROUTE",
    "PREFIXES",
    "ATTRIBUTES",
    "LAST CHECK",
    "FOR",
    "DRAIN",
)


def _status_row(name: str, svc: ServiceStatus, with_conns: bool) -> list[str]:
    prefixes = svc.get("prefixes") or []
    row = [
        clean(name),
        clean(svc.get("health", "?")),
        clean(svc.get("route", "?")),
        ",".join(clean(p) for p in prefixes) if prefixes else "-",
        clean(format_attributes(svc.get("attributes"))),
        format_last_check(svc),
        format_duration(svc.get("route_for")),
        format_drain(svc),
    ]
    if with_conns:
        conns = svc.get("connections")
        row.append("-" if conns is None else clean(conns))
    return row


def _status_notes(services: Mapping[str, ServiceStatus]) -> list[str]:
    notes: list[str] = []
    for name, svc in services.items():
        if svc.get("drained"):
            sources = ", ".join(clean(s) for s in svc.get("drain_sources") or []) or "?"
            reason = clean(svc.get("drain_reason") or "")
            notes.append(f"{name}: drained by {sources}" + (f": {reason}" if reason else ""))
        held = svc.get("dampened_for")
        if held is not None:
            notes.append(f"{name}: flapping, held for {format_duration(held, up=True)} (dampened)")
        if svc.get("retiring"):
            notes.append(f"{name}: removed from the config, withdrawing")
        guarded = svc.get("held")
        if isinstance(guarded, Mapping):
            notes.extend(f"{name}: {clean(p)} held back: {clean(w)}" for p, w in guarded.items())
        for key in ("fleet_guard", "fleet_slot", "forwarding"):
            if svc.get(key):
                notes.append(f"{name}: {clean(str(svc.get(key)))}")
        event = svc.get("last_event")
        if isinstance(event, Mapping) and event.get("down") and svc.get("health") != "UP":
            notes.append(f"{name}: {event_text(event)}")
    return ["", *notes] if notes else []


def event_text(event: Mapping[str, Any]) -> str:
    """The last event that took a service down: what, when, and how soon it was on the wire."""
    text = (
        f"down by an event {format_duration(event.get('ago'))} ago:"
        f" {clean(str(event.get('check', '?')))}: {clean(str(event.get('reason', '')))}"
    )
    route, written = event.get("route"), event.get("written")
    if route:
        text += f"; {clean(str(route))}"
        if isinstance(written, int | float):
            text += f", written {written * 1000:.1f} ms after it"
    return text


def _daemon_lines(result: DaemonStatus) -> list[str]:
    lines: list[str] = []
    exabgp = result.get("exabgp")
    if isinstance(exabgp, Mapping):
        text = (
            f"exabgp: sent {exabgp.get('sent', '?')}, done {exabgp.get('done', '?')}, "
            f"errors {exabgp.get('error', '?')}, pending {exabgp.get('pending', '?')}"
        )
        if exabgp.get("last_error"):
            text += f"; last error: {clean(exabgp['last_error'])}"
        lines.append(text)
    neighbors = result.get("neighbors")
    if isinstance(neighbors, Mapping):
        if neighbors:
            lines.append(
                "neighbors: " + ", ".join(f"{clean(k)} {clean(v)}" for k, v in neighbors.items())
            )
        else:
            lines.append("neighbors: none reported yet")
    if result.get("uptime") is not None:
        lines.append(f"uptime: {format_duration(result.get('uptime'))}")
    if result.get("config_error"):
        lines.append("config error (last reload failed; running the previous config):")
        lines.extend(f"  {clean(x)}" for x in str(result["config_error"]).splitlines())
    if result.get("reload_note"):
        lines.append(f"note: {clean(result['reload_note'])}")
    if result.get("state_error"):
        lines.append(
            f"state file not saved (drains made now would be forgotten by a restart): "
            f"{clean(result['state_error'])}"
        )
    return lines


def render_status(result: DaemonStatus) -> str:
    """The human ``status`` output: a table of services, then the daemon's own state."""
    services = services_of(result)
    lines: list[str] = []
    if services:
        with_conns = any(s.get("connections") is not None for s in services.values())
        headers = [*_STATUS_HEADERS, "CONNS"] if with_conns else list(_STATUS_HEADERS)
        rows = [_status_row(name, svc, with_conns) for name, svc in services.items()]
        lines.extend(table(headers, rows))
    else:
        lines.append("no services configured")
    lines.extend(_status_notes(services))
    lines.append("")
    lines.extend(_daemon_lines(result))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- drain and undrain


class _ChangeCommand(ClientCommand):
    """``drain`` and ``undrain``: named services or ``--all``; one line per service, and
    exit status 1 when the daemon could not save the change."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "services", nargs="*", metavar="SERVICE", help=f"services to {self.name}"
        )
        parser.add_argument("--all", action="store_true", help=f"{self.name} every service")

    def usage_problem(self, args: argparse.Namespace) -> str | None:
        if args.all and args.services:
            return "give service names or --all, not both"
        if not args.all and not args.services:
            return "name at least one service, or give --all"
        return None

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"all": True} if args.all else {"services": list(args.services)}

    def render(self, result: Mapping[str, Any]) -> str:
        services = cast(dict[str, ChangedService], services_of(result))
        return "".join(f"{describe_change(self.name, n, s)}\n" for n, s in services.items())

    def run(self, session: Session) -> int:
        result = session.client.request(self.name, **self.fields(session.args))
        session.emit(self.render(result), result)
        unsaved = result.get("state_error")  # missing from older daemons: saved, or unknown
        if unsaved:
            # Applied on the wire, but a restarted controller would not know: say so and fail.
            session.err.write(
                f"announcer: {self.name} applied but not saved: {clean(unsaved)}; a restarted "
                "controller would forget it (fix the state directory, then run it again)\n"
            )
        failed = EXIT_FAILED if unsaved else EXIT_OK
        return max(failed, self.then(session, services_of(result)))

    def then(self, session: Session, services: Mapping[str, ServiceStatus]) -> int:
        """What the change's outcome says (after its lines are shown): an exit status."""
        raise NotImplementedError


def describe_change(cmd: str, name: str, svc: ChangedService) -> str:
    """One line saying what a drain or undrain did to a service."""
    route = clean(svc.get("route", "?"))
    left = svc.get("drain_left")
    sources = [clean(s) for s in svc.get("drain_sources") or []]
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
    tail = f"route {route}" + (f" (health {clean(health)})" if health else "")
    if not changed:
        return f"{name}: was not drained; {tail}"
    return f"{name}: undrained, {tail}"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


@command
class DrainCommand(_ChangeCommand):
    name = "drain"
    summary = "lower a service's route now and withdraw it after its drain period"
    description = (
        "Drain services for planned work: lower the route now, withdraw it after drain_seconds."
    )
    epilog = """\
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
    exit_notes = (
        "  with --wait: 0 once every named service is WITHDRAWN (with forward_connections:\n"
        "  and has no connection left), 1 if --timeout passes first\n"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--reason", metavar="TEXT", default="", help="why (shown in status and the logs)"
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="wait until every named service is withdrawn (with forward_connections: and "
            "its connections have ended), showing progress on stderr",
        )
        parser.add_argument(
            "--stop",
            action="store_true",
            help="a drain for stopping the service (systemd ExecStop): not kept across a "
            "restart, so the node announces again once it is started and healthy",
        )
        parser.add_argument(
            "--timeout",
            metavar="SECONDS",
            type=_positive,
            help="with --wait: give up (exit 1) after this long; the drain goes on (default: none)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="with a fleet: drain even when max_drained nodes are drained already, and "
            "withdraw at the end without asking the fleet guard (logged)",
        )
        parser.add_argument(
            "--no-queue",
            action="store_true",
            help="with a fleet: refuse the drain when no drain slot is free, instead of "
            "waiting in line for one",
        )

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        out = super().fields(args)
        if args.reason:
            out["reason"] = args.reason
        for flag in ("stop", "force", "no_queue"):
            if getattr(args, flag, False):
                out[flag] = True
        if out.get("stop") and getattr(args, "timeout", None):
            out["timeout"] = args.timeout  # how long a fleet's drain slot may be waited for
        return out

    def then(self, session: Session, services: Mapping[str, ServiceStatus]) -> int:
        if not session.args.wait:
            return EXIT_OK
        return wait_withdrawn(
            session.client, list(services), timeout=session.args.timeout, err=session.err
        )


@command
class UndrainCommand(_ChangeCommand):
    name = "undrain"
    summary = "lift an operator drain: the route follows health again"
    description = "Lift the drain made with 'announcer drain'."
    epilog = """\
Lifts the drain made with "announcer drain": the route returns to what health
says (announced again if the service is UP). A maintenance-file drain is not
lifted: remove the file.

examples:
  announcer undrain web
  announcer undrain --all
"""
    exit_notes = "  undrain exits 1 when a service stays drained by another source\n"

    def then(self, session: Session, services: Mapping[str, ServiceStatus]) -> int:
        held = [n for n, s in services.items() if s.get("drained")]
        return EXIT_FAILED if held else EXIT_OK


# ---------------------------------------------------------------- drain --wait


def _progress(name: str, svc: ServiceStatus | None) -> str:
    if svc is None:
        return f"{name}: gone from the config"
    route = clean(svc.get("route", "?"))
    text = f"{name}: {route}"
    left = svc.get("drain_left")
    if route != "WITHDRAWN" and left is not None:
        text += f", withdraw in {format_duration(left, up=True)}"
    conns = svc.get("connections")
    if conns is not None:
        text += f", {clean(conns)} connection{'' if conns == 1 else 's'}"
    # With a fleet: why it does not move yet.
    for key in ("fleet_slot", "fleet_guard", "forwarding"):
        if svc.get(key):
            text += f", {clean(str(svc.get(key)))}"
    return text


def _done(svc: ServiceStatus) -> bool:
    """Withdrawn, and with forward_connections no connection left: peers pass the
    packets of its connections to it until then, so its server must stay up."""
    if svc.get("route") != "WITHDRAWN":
        return False
    return not svc.get("forward_connections") or svc.get("connections") == 0


def wait_withdrawn(
    client: Transport,
    names: Sequence[str],
    *,
    timeout: float | None,
    err: TextIO,
    poll: float | None = None,
) -> int:
    """Poll status until every service in ``names`` is WITHDRAWN (with
    ``forward_connections``: and has no connection left): 0, or 1 on timeout.

    Progress goes to ``err``: a refreshing line on a terminal, else one line
    per service whenever its route or connection count changes (and every 5 s
    of countdown).
    """
    interval = POLL_INTERVAL if poll is None else poll
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    tty = err.isatty()
    shown: dict[str, tuple[Any, ...]] = {}
    current: dict[str, ServiceStatus | None] = {}
    pending = list(names)
    try:
        while True:
            try:
                services: dict[str, ServiceStatus] | None = services_of(client.request("status"))
            except ControlRefused as error:
                if error.kind != "busy":
                    raise
                services = None  # still swamped after the client's own tries: keep waiting
            if services is not None:
                current = {n: services.get(n) for n in names}
                _show_progress(current, shown, err, tty)
                # A drain waiting for a slot or for the peers is not drained yet, and
                # not undrained either.
                undrained = [
                    n
                    for n, s in current.items()
                    if s is not None and not s.get("drained") and not s.get("drain_waiting")
                ]
                if undrained:
                    _finish(err, tty)
                    err.write(
                        f"announcer: {', '.join(undrained)} no longer drained (undrained "
                        "meanwhile?); stopped waiting\n"
                    )
                    return EXIT_FAILED
                pending = [n for n, s in current.items() if s is not None and not _done(s)]
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
    current: Mapping[str, ServiceStatus | None],
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


# ---------------------------------------------------------------- reload


@command
class ReloadCommand(ClientCommand):
    name = "reload"
    summary = "re-read the config and apply the difference"
    description = "Ask the running daemon to reload its config."
    epilog = """\
Re-reads the config and conf.d, and applies only the difference: added services
start checking, changed ones are re-announced only if their routes change,
removed ones are drained and then withdrawn. A config with errors is refused
and the daemon keeps running on the previous one (the same as SIGHUP, but you
see the errors here).

examples:
  announcer check-config && announcer reload
"""

    def run(self, session: Session) -> int:
        result = session.client.request(self.name)
        if result.get("ok") is False:
            # A daemon that answered a refused reload inside a successful reply.
            raise ControlRefused(
                f"reload failed; still running on the previous config:\n{result.get('error')}",
                "refused",
            )
        session.emit(self.render(result), result)
        return EXIT_OK

    def render(self, result: Mapping[str, Any]) -> str:
        return "".join(f"{line}\n" for line in describe_reload(result))


def describe_reload(result: Mapping[str, Any]) -> list[str]:
    lines = ["config reloaded"]
    changes = result.get("changes")
    if isinstance(changes, Mapping):
        for key in ("added", "changed", "removed"):
            names = changes.get(key) or []
            if names:
                lines.append(f"  {key}: {', '.join(clean(n) for n in names)}")
        if not any(changes.get(k) for k in ("added", "changed", "removed")):
            lines.append("  no service changed")
    if result.get("note"):
        lines.append(f"note: {clean(result['note'])}")
    return lines


# ---------------------------------------------------------------- fleet


@command
class FleetCommand(ClientCommand):
    name = "fleet"
    summary = "show the group's nodes in etcd and what the fleet guard does"
    description = (
        "Show the fleet as this node's daemon last read it from etcd: per service, "
        "each node of the group with its route, health and drain, how many announce, "
        "and whether the fleet guard holds this node's route."
    )
    epilog = """\
examples:
  announcer fleet              every service of the group
  announcer fleet web          one service
  announcer fleet --json | jq '.services.web.announcing'
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("service", nargs="?", metavar="SERVICE", help="only this service")

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"services": [args.service]} if args.service else {}

    def render(self, result: Mapping[str, Any]) -> str:
        return render_fleet(result)


def render_fleet(result: Mapping[str, Any]) -> str:
    etcd = result.get("etcd") or {}
    reach = "reachable" if etcd.get("reachable") else f"UNREACHABLE ({etcd.get('error') or '?'})"
    lines = [
        f"group {clean(str(result.get('group')))}, this node {clean(str(result.get('node')))}; "
        f"etcd {clean(reach)}; on_unknown = {clean(str(result.get('on_unknown')))}"
    ]
    rows: list[list[str]] = []
    for name, svc in (result.get("services") or {}).items():
        head = f"{name}: {svc.get('announcing')} announcing, min {svc.get('min_announcing')}"
        if svc.get("max_drained"):
            head += f", max drained {svc.get('max_drained')}"
        if svc.get("free_slots") is not None:
            head += f", {svc['free_slots']} free"
        if svc.get("drained_by"):
            head += f"; drain slots held by {', '.join(map(str, svc['drained_by']))}"
        if svc.get("guard"):
            head += f"; {svc.get('guard')}"
        lines.append(clean(head))
        for node, n in (svc.get("nodes") or {}).items():
            drain = (n.get("reason") or "yes") if n.get("drained") else "-"
            counts = "yes" if n.get("announcing") else "no"
            left = n.get("lease_left")
            lease = f"{left}s" if isinstance(left, int) and left >= 0 else "-"
            cells = [name, node, n.get("route"), n.get("health"), counts, drain, lease]
            rows.append([clean(str(c)) for c in cells])
    headers = ("SERVICE", "NODE", "ROUTE", "HEALTH", "ANNOUNCING", "DRAIN", "LEASE")
    return "\n".join([*lines, "", *table(headers, rows)]) + "\n"


# ---------------------------------------------------------------- check


CHECK_REPLY_WAIT = 3700.0
"""Seconds ``check`` waits for its answer: the daemon answers once the rounds close, at
the latest at their deadline (a check's timeout, at most 3600 s, plus a grace period)."""


@command
class CheckCommand(ClientCommand):
    name = "check"
    summary = "run services' checks now and show each result (--once: without a daemon)"
    description = (
        "Ask the running daemon to run a round of the services' checks now and show "
        "each check's result; with --once, run the configured checks once here, "
        "without a daemon (for deploy pipelines)."
    )
    epilog = """Without --once, the daemon starts a round at once (it counts like any other
round: rise and fall see it, and the next round comes an interval after it) and
answers when it is over; a round already running answers instead. Only root and
the control group may ask: it makes the daemon act.

With --once, nothing talks to the daemon: the checks of --config (default
$ANNOUNCER_CONFIG or /etc/announcer/announcer.toml) run once, each service's in
parallel with its own timeout, and its "require" rule decides. No route changes.

examples:
  announcer check web                 run web's checks now, in the daemon
  announcer check                     every service's
  announcer check --once --config new.toml web && systemctl reload nginx
  announcer check --once --json | jq '.services.web.ok'
"""
    exit_notes = (
        "  check exits 0 when every named service passed (--once: would be healthy), 1 otherwise\n"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "services", nargs="*", metavar="SERVICE", help="only these services (default: all)"
        )
        once = "run the checks of --config here, once, without a daemon"
        parser.add_argument("--once", action="store_true", help=once)

    def fields(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"services": list(args.services)} if args.services else {}

    def local(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> int | None:
        if not args.once:
            return None
        from announcer.checkonce import run_once  # loads the config: pydantic, the checks

        path = Path(args.config or os.environ.get("ANNOUNCER_CONFIG") or DEFAULT_CONFIG)
        return run_once(path, list(args.services), args.json, out, err)

    def render(self, result: Mapping[str, Any]) -> str:
        return render_checked(services_of(result))

    def run(self, session: Session) -> int:
        session.client.timeout = max(session.client.timeout, CHECK_REPLY_WAIT)
        try:
            result = session.client.request(self.name, **self.fields(session.args))
        except KeyboardInterrupt:
            session.err.write("announcer: stopped waiting; the round goes on in the daemon\n")
            return EXIT_FAILED
        session.emit(self.render(result), result)
        return checked_status(services_of(result))


def render_checked(services: Mapping[str, Any], *, once: bool = False) -> str:
    """Each service's round: its verdict, then one line per check."""
    lines: list[str] = []
    for name, svc in services.items():
        if not isinstance(svc, Mapping):
            lines.append(f"{clean(name)}: gone from the config")
            continue
        verdict = (
            ("would be healthy" if once else "passed")
            if svc.get("ok")
            else ("would be unhealthy" if once else "failed")
        )
        where = [] if once else [f"round {svc.get('round', '?')}"]
        where += [f"{k} {clean(svc[k])}" for k in ("health", "route") if svc.get(k)]
        tail = f" ({', '.join(where)})" if where else ""
        lines.append(f"{clean(name)}: {verdict}: {clean(svc.get('reason') or '-')}{tail}")
        for check in svc.get("checks") or []:
            mark = "ok  " if check.get("ok") else "FAIL"
            took = f"{float(check.get('duration') or 0):.3f}s"
            lines.append(
                f"  {mark} {took:>8}  {clean(check.get('check', '?'))}: "
                f"{clean(check.get('reason') or '-')}"
            )
    return "\n".join(lines) + "\n"


def checked_status(services: Mapping[str, Any]) -> int:
    """0 when every service's round passed, else 1."""
    passed = all(isinstance(s, Mapping) and s.get("ok") for s in services.values())
    return EXIT_OK if passed else EXIT_FAILED


# ---------------------------------------------------------------- CLI wiring

CONTROL_COMMANDS: Final = tuple(COMMANDS)
"""The subcommands :func:`add_commands` adds (``args.control_command`` names the one given)."""

_SOCKET_HELP = (
    "the daemon's control socket (default: $ANNOUNCER_SOCKET, else control_socket "
    "of --config or $ANNOUNCER_CONFIG, else {default})"
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every :data:`COMMANDS` entry to the CLI's subparsers."""
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
    for entry in COMMANDS.values():
        parser = subparsers.add_parser(
            entry.name,
            parents=[common],
            help=entry.summary,
            description=entry.description,
            epilog=f"{entry.epilog}\n{EXIT_STATUS_HELP}{entry.exit_notes}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(control_command=entry.name, control_parser=parser)
        entry.add_arguments(parser)


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
    entry = COMMANDS[args.control_command]
    problem = entry.usage_problem(args)
    if problem:
        parser = getattr(args, "control_parser", None)
        if parser is not None:
            err.write(parser.format_usage())
        err.write(f"announcer {entry.name}: {problem}\n")
        return EXIT_USAGE
    status = entry.local(args, out, err)
    if status is not None:
        return status
    try:
        path = socket_path(args)
    except ConfigError as error:
        for line in error.problems:
            err.write(f"announcer: {line}\n")
        return EXIT_USAGE
    try:
        with ControlClient(path) as client:
            return entry.run(Session(client, args, out, err))
    except ControlError as error:
        err.write(f"announcer: {error}\n")
        return error.code


__all__ = [
    "COMMANDS",
    "CONTROL_COMMANDS",
    "CheckCommand",
    "ClientCommand",
    "ControlClient",
    "Session",
    "add_commands",
    "checked_status",
    "command",
    "describe_change",
    "describe_reload",
    "render_checked",
    "render_status",
    "run_command",
    "socket_path",
    "wait_withdrawn",
]
