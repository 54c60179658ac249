"""The operator side's transport to the control socket: one connection, its retries,
and request and reply lines (:mod:`announcer.control` has the protocol).

:class:`Transport` knows nothing of the commands; :class:`announcer.client.ControlClient`
is the one the CLI uses, refusing commands it does not know before sending them.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, Self

from announcer.errors import ControlError
from announcer.protocol import (
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PROTOCOL_VERSION,
    ControlRefused,
    LineReader,
    LineTooLong,
    encode,
)

DEFAULT_TIMEOUT = 5.0
CONNECT_RETRY = 2.0
"""How long to keep trying while the socket is missing or refuses (the daemon is starting)."""
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.5
"""Pauses between tries while the daemon is overloaded: doubling from the first to the
most, each a random 50-100 % of that (so clients turned away together do not return
together)."""
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


class Transport:
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
        self._lines = LineReader(MAX_REPLY)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._lines.clear()
        if sock is not None:
            sock.close()

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return its result (see the class docstring for errors)."""
        try:
            line = encode({"v": PROTOCOL_VERSION, "cmd": cmd, **fields}, default=None)
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

    def _connect(self) -> socket.socket:
        where = str(self.path)
        try:
            return self._connect_with_retries()
        except FileNotFoundError:
            why = (
                f"{where} does not exist (is announcer running under ExaBGP? does its "
                "control_socket differ? see --socket)"
            )
        except ConnectionRefusedError:
            why = f"nothing accepts connections on {where} (the daemon is not running)"
        except BlockingIOError:
            why = (
                f"its queue of connections on {where} stayed full for {self.retry_for:g}s "
                "(the daemon is overloaded)"
            )
        except PermissionError:
            why = f"permission denied on {where} (run as root, or as a member of the control_group)"
        except TimeoutError:
            why = f"{where} did not accept within {self.timeout:g}s"
        except OSError as err:
            why = f"{err.strerror or err}"
            raise ControlError(
                f"cannot reach the daemon at {where}: {why}", code=EXIT_UNREACHABLE
            ) from None
        raise ControlError(f"cannot reach the daemon: {why}", code=EXIT_UNREACHABLE)

    def _connect_with_retries(self) -> socket.socket:
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
            try:
                line = self._lines.line()
            except LineTooLong:
                self.close()
                raise ControlError("the daemon's reply is too long") from None
            if line is not None:
                return line
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
                raise _Dropped  # what came of a reply, if anything, is no reply
            self._lines.feed(chunk)


__all__ = ["CONNECT_RETRY", "DEFAULT_TIMEOUT", "Transport"]
