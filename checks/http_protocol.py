"""The HTTP check's connection: an :class:`asyncio.Protocol` that feeds h11 as bytes arrive.

At a thousand checks a second the loop thread's cost per check is what limits
the controller (docs/benchmarks.md, P3). A StreamReader costs a Future per read
and a chain of coroutines resumed per read; here each read hands the bytes
straight to the response being read (:class:`ResponseReader`, h11 doing the
parsing), received into a buffer kept per thread rather than a fresh bytes
object per read. The request is answered by one call once the response is whole
or the connection fails, and its time limit is an entry in the loop's
:class:`Deadlines`, not an :func:`asyncio.timeout` or a timer of its own.
:meth:`HttpConnection.begin` needs no coroutine at all: a check's run on a kept
connection is callbacks from start to answer, with no Task
(:meth:`announcer.checks.http.HttpCheck.start`).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import cast

import h11

__all__ = [
    "MAX_BODY",
    "BodyCut",
    "HttpConnection",
    "NoResponse",
    "ResponseReader",
    "ServerClosed",
    "Whole",
    "connect",
]

MAX_BODY = 1 << 20
"""Bytes of body read at most; ``body_regex`` sees no further, and a longer body costs the
kept-alive connection (it is closed rather than drained)."""

Whole = tuple[h11.Response, bytes, bool]
"""A response, up to :data:`MAX_BODY` of its body, and whether the connection may carry the
next request."""


class ServerClosed(ConnectionError):
    """The server closed the connection before any response."""


class NoResponse(Exception):
    """The connection failed before any response: the one failure worth another attempt."""


class BodyCut(Exception):
    """The server closed the connection in the middle of the body."""


class ResponseReader:
    """One response being read: bytes in, h11's events gathered until the response is whole.

    ``http`` has sent the request already, or, with ``sent``, has not (the request's bytes
    were sent as they are): should h11 then refuse what precedes the response (a 1xx, which
    it takes only after a request), the bytes so far are read again by ``sent()``, a
    connection that has sent it. Raises :class:`NoResponse` when the stream ends before
    any response, :class:`BodyCut` when it ends inside the body, h11's RemoteProtocolError
    for anything that is not HTTP.
    """

    __slots__ = ("_body", "_eof", "_head", "_http", "_response", "_sent")

    def __init__(
        self, http: h11.Connection, sent: Callable[[], h11.Connection] | None = None
    ) -> None:
        self._http = http
        self._sent = sent
        self._head = b""  # with ``sent``: what came before the response, to read again
        self._response: h11.Response | None = None
        self._body = bytearray()
        self._eof = False

    @property
    def started(self) -> bool:
        """A response has begun (a failure now is not worth a retry)."""
        return self._response is not None

    def feed(self, data: bytes) -> Whole | None:
        """Take ``data`` (``b""``: the server closed its side); the response once whole."""
        if not data:
            self._eof = True
            if self._response is None:
                raise NoResponse from ServerClosed()
        if self._sent is not None and self._response is None:
            self._head += data
        self._http.receive_data(data)
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                if self._response is None and self._sent is not None:
                    self._read_again(self._sent())
                    continue
                if self._response is not None and self._eof:
                    raise BodyCut from exc
                raise
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                self._response, self._head = event, b""
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) >= MAX_BODY and self._response is not None:
                    return self._response, bytes(self._body[:MAX_BODY]), False
            elif isinstance(event, h11.EndOfMessage) and self._response is not None:
                return self._response, bytes(self._body), self._next_cycle()
            # anything else (a 1xx informational response) is skipped, as http.client does

    def _read_again(self, http: h11.Connection) -> None:
        self._http, self._sent = http, None
        http.receive_data(self._head)  # no end of stream yet: that raises NoResponse first

    def _next_cycle(self) -> bool:
        """Whether the connection may carry the next request (h11 made ready for it)."""
        http = self._http
        if http.their_state is not h11.DONE:
            return False
        if http.our_state is h11.IDLE:  # the request went around h11: a fresh one is next
            return True
        if http.our_state is not h11.DONE:
            return False
        http.start_next_cycle()
        return True


_READ_SIZE = 64 * 1024

_scratch = threading.local()


def _read_buffer() -> memoryview:
    """This thread's buffer to receive into: a plain Protocol has asyncio allocate 256 KiB
    for every read (a page mapping and unmapping per response, measured at about 14 us),
    and a buffer per connection would cost memory per service. One per thread is safe:
    asyncio fills it and hands it over (``buffer_updated``) before anything else runs."""
    buffer: memoryview | None = getattr(_scratch, "buffer", None)
    if buffer is None:
        buffer = _scratch.buffer = memoryview(bytearray(_READ_SIZE))
    return buffer


Pending = tuple[float, "HttpConnection"]
"""A request's deadline (the loop's clock) and its connection, as :class:`Deadlines` keeps it."""


SWEEP_SLACK = 0.01
"""Seconds a request's time limit may be overrun so that one wake-up serves many: the
sweep after one expiry waits at least this long (a limit of 1 s ends by 1.01 s)."""


class Deadlines:
    """The time limits of one loop's requests, served by one loop timer.

    A timer of the loop's own per request (``call_at``, then ``cancel`` when the answer
    comes first, as it nearly always does) cost a handle, a heap push and a cancel for
    every check: at two thousand checks a second, more than the rest of the request's
    bookkeeping. Here a request is a tuple appended to the queue of its limit (requests
    with the same limit expire in the order they began), an answered one is only
    forgotten (:meth:`done`), and the one timer, set for the earliest deadline, drops
    the answered ones from the fronts of the queues as it passes them. Once no request
    is left waiting the timer is cancelled: a lone service's check, answered long before
    its limit, costs no wake-up for it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, deque[Pending]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires
        self.waiting = 0  # requests added and not yet done

    def add(self, connection: HttpConnection, limit: float) -> Pending:
        """A request on ``connection`` that must be answered within ``limit`` seconds; it
        is expired (:meth:`HttpConnection.expire`) unless the connection forgets it first."""
        at = self._loop.time() + limit
        pending = (at, connection)
        queue = self._queues.get(limit)
        if queue is None:
            queue = self._queues[limit] = deque()
        queue.append(pending)
        self.waiting += 1
        if at < self._at:
            self._arm(at)
        return pending

    def done(self) -> None:
        """A request added here is over (answered, failed, expired or dropped)."""
        self.waiting -= 1
        if not self.waiting:  # nothing left to expire: no wake-up for dead entries
            self._queues.clear()
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._at = None, math.inf

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = self._loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        # Due: every deadline up to the one the timer was set for (the loop runs a timer
        # a hair early, within its clock's resolution).
        now = max(self._loop.time(), self._at)
        self._timer, self._at = None, math.inf
        due: list[Pending] = []
        following = math.inf
        for limit, queue in list(self._queues.items()):
            while queue:
                pending = queue[0]
                if pending[1].pending is pending and pending[0] > now:
                    following = min(following, pending[0])
                    break
                queue.popleft()
                if pending[1].pending is pending:
                    due.append(pending)
            if not queue:
                del self._queues[limit]
        if following < math.inf:
            self._arm(max(following, now + SWEEP_SLACK))
        for pending in due:
            if pending[1].pending is pending:  # an earlier expiry may have ended it
                pending[1].expire()


_deadlines = threading.local()


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The :class:`Deadlines` of ``loop`` (kept per thread: a thread runs one loop at a time;
    a connection keeps the one it was given, so a second one for the same loop is harmless)."""
    kept: tuple[asyncio.AbstractEventLoop, Deadlines] | None = getattr(_deadlines, "kept", None)
    if kept is None or kept[0] is not loop:
        kept = _deadlines.kept = (loop, Deadlines(loop))
    return kept[1]


Answer = Callable[[Whole | None, BaseException | None], None]
"""Told once how a request ended: the whole response, or what went wrong."""


class HttpConnection(asyncio.BufferedProtocol):
    """A TCP (or TLS) connection on the loop that opened it, one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._buffer = _read_buffer()  # the loop's thread's, taken once
        self._transport: asyncio.Transport | None = None
        self._reader: ResponseReader | None = None
        self._answer: Answer | None = None  # the request in flight waits for this call
        self._deadlines = _deadlines_of(self._loop)
        self.pending: Pending | None = None  # the request in flight's entry in _deadlines
        self._usable = True  # false once closed, or once the server spoke out of turn

    # ------------------------------------------------ asyncio.Protocol, from the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(self._buffer[:nbytes].tobytes())  # h11 takes bytes

    def eof_received(self) -> None:
        self._feed(b"")  # returning None: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._usable = False
        if exc is None or isinstance(exc, ssl.SSLEOFError):
            # A close without TLS's close_notify is an end of stream, as the blocking ssl
            # module reads it (suppress_ragged_eofs); h11 still notices a body cut short.
            self._feed(b"")
            return
        reader = self._reader
        if reader is None:
            return
        if isinstance(exc, ConnectionError) and not reader.started:
            self._end(None, _no_response(exc))
        else:
            self._end(None, exc)

    def _feed(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if data:
                self._usable = False  # bytes nobody asked for: not the next response's
            return
        try:
            whole = reader.feed(data)
        except Exception as exc:  # noqa: BLE001 - handed to the request waiting for it
            self._end(None, exc)
            return
        if whole is not None:
            self._end(whole, None)

    def expire(self) -> None:
        """The request in flight ran out of time (:class:`Deadlines` calls it)."""
        self._end(None, TimeoutError())

    def _end(self, whole: Whole | None, error: BaseException | None) -> None:
        answer = self._answer
        self._forget()
        if answer is not None:
            answer(whole, error)

    def _forget(self) -> None:
        if self.pending is not None:
            self._deadlines.done()
        self._reader = self._answer = self.pending = None

    # ------------------------------------------------ the check's side

    def begin(self, request: bytes, reader: ResponseReader, limit: float, answer: Answer) -> None:
        """Send ``request``; ``answer`` is called once, from the loop, with the response
        ``reader`` reads from what comes back, or the error (TimeoutError after ``limit``
        seconds) — unless the connection is closed first."""
        transport = self._transport
        if transport is None or transport.is_closing():
            answer(None, _no_response(ServerClosed()))
            return
        self._reader, self._answer = reader, answer
        self.pending = self._deadlines.add(self, limit)
        transport.write(request)

    async def exchange(self, request: bytes, reader: ResponseReader, limit: float) -> Whole:
        """:meth:`begin` for a coroutine: the whole response, or the error raised."""
        waiter: asyncio.Future[Whole] = self._loop.create_future()

        def answer(whole: Whole | None, error: BaseException | None) -> None:
            if waiter.done():
                return
            if whole is not None:
                waiter.set_result(whole)
            else:
                waiter.set_exception(error or _no_response(ServerClosed()))

        self.begin(request, reader, limit, answer)
        try:
            return await waiter
        finally:
            if self._answer is answer:  # cancelled: nobody is waiting for the answer
                self._forget()

    def alive(self) -> bool:
        """Still usable for another request from the running loop."""
        transport = self._transport
        return (
            self._usable
            and transport is not None
            and not transport.is_closing()
            and asyncio._get_running_loop() is self._loop
        )

    def close(self) -> None:
        """Drop the connection, unanswered; callable from any thread, twice too."""
        self._usable = False
        loop = self._loop
        if loop.is_running() and asyncio._get_running_loop() is not loop:
            try:
                # Transports are not thread-safe: the loop's own thread drops it.
                loop.call_soon_threadsafe(self._drop)
                return
            except RuntimeError:
                pass  # that loop closed meanwhile: nothing polls the socket any more
        self._drop()

    def _drop(self) -> None:
        self._forget()
        if self._transport is not None and not self._loop.is_closed():
            self._transport.abort()  # unregisters the socket from the loop at once
        self._sock.close()  # now, not when the loop next runs (a private loop may never)


def _no_response(cause: BaseException) -> NoResponse:
    failure = NoResponse()
    failure.__cause__ = cause
    return failure


async def connect(sock: socket.socket, host: str, context: ssl.SSLContext | None) -> HttpConnection:
    """An :class:`HttpConnection` over the connected ``sock``, with TLS (verification and SNI
    per ``context``) when there is one; ``sock`` is closed if that fails."""
    loop = asyncio.get_running_loop()
    try:
        _, connection = await loop.create_connection(
            lambda: HttpConnection(sock),
            sock=sock,
            ssl=context,
            server_hostname=host if context is not None else None,
        )
    except BaseException:
        sock.close()
        raise
    return connection
