"""A small client of etcd v3's JSON gateway (``POST /v3/...``), just what the fleet
guard needs: range, put, a transaction, leases, a watch and token authentication.

The gateway's JSON, as measured on etcd 3.4 and 3.5: keys and values are base64;
64-bit numbers (revisions, lease IDs, TTLs) are JSON strings; a field at its zero
value is omitted (a failed transaction has no ``succeeded``, an expired lease's
keepalive no ``TTL``); ``lease/keepalive`` answers inside ``{"result": ...}``.

Reads, puts and lease calls are retried with tenacity, moving to the next endpoint
on a transport failure or an unavailable member. A transaction is sent once: if its
answer is lost, its outcome is unknown (:class:`Uncertain`) and the caller reads
its own key back instead of sending it again.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import tenacity

from announcer.errors import AnnouncerError

_UNAVAILABLE = {4, 14}  # gRPC DeadlineExceeded, Unavailable: no leader, no quorum, timeouts
_UNAUTHENTICATED = 16
TOKEN_RENEW = 60.0
"""Seconds between re-authentications: well inside etcd's default token TTL (300 s)."""


class EtcdError(AnnouncerError):
    """etcd refused a request (a bad request, permission, a failed authentication)."""


class Unreachable(EtcdError):
    """No endpoint answered, or none has a working cluster behind it (no quorum)."""


class Compacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: read everything again."""


class Uncertain(EtcdError):
    """A transaction was sent and its answer lost: it may or may not have applied."""


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix`` (its last byte + 1)."""
    raw = prefix.encode()
    return b64(raw[:-1] + bytes([raw[-1] + 1]))


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int
    create_revision: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


_SSL_REASON = re.compile(r"\[SSL[^\]]*\] ([^('\"]+)")


def _tls_reason(err: Exception) -> str:
    """OpenSSL's reason (``certificate verify failed: self-signed certificate``) out of
    the nest of exceptions requests wraps it in; the class name when there is none."""
    found = _SSL_REASON.search(str(err))
    return found.group(1).strip() if found else type(err).__name__


class _Transient(Exception):
    """One endpoint failed in a way another may not: try the next."""


class EtcdClient:
    """Thread-safe for the calls the fleet makes (one Session per thread is not needed:
    requests' Session is shared with its connection pool; the endpoint index and token
    are guarded by a lock)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        ca_file: Path | None = None,
        user: str | None = None,
        password: str | None = None,
        attempts: int | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._session = requests.Session()
        # Given with each request: requests lets REQUESTS_CA_BUNDLE (and CURL_CA_BUNDLE)
        # override a Session's own ``verify``, which would silently drop ca_file.
        self._verify = str(ca_file) if ca_file is not None else None
        self._user, self._password = user, password
        self._token: str | None = None
        self._token_at = 0.0
        self._current = 0
        self._lock = threading.Lock()
        self.attempts = attempts if attempts is not None else 2 * len(self.endpoints)

    # ------------------------------------------------------------ transport

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def _next_endpoint(self, failed: int) -> None:
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self.endpoints)

    def _headers(self, index: int) -> dict[str, str]:
        if self._user is None:
            return {}
        with self._lock:
            token, age = self._token, time.monotonic() - self._token_at
        if token is None or age > TOKEN_RENEW:
            token = self._authenticate(index)
        return {"Authorization": token}

    def _authenticate(self, index: int) -> str:
        body = {"name": self._user, "password": self._password}
        answer = self._post_once(index, "/v3/auth/authenticate", body, {})
        token = answer.get("token")
        if not isinstance(token, str):
            raise EtcdError("authentication answered without a token")
        with self._lock:
            self._token, self._token_at = token, time.monotonic()
        return token

    def _post_once(
        self, index: int, path: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        url = self.endpoints[index] + path
        try:
            reply = self._session.post(
                url, json=body, headers=headers, timeout=self.timeout, verify=self._verify
            )
        except requests.exceptions.SSLError as err:
            raise _Transient(f"{self.endpoints[index]}: TLS: {_tls_reason(err)}") from err
        except requests.RequestException as err:
            raise _Transient(f"{self.endpoints[index]}: {type(err).__name__}") from err
        except OSError as err:
            # Not the network: ours (an unreadable ca_file). No other endpoint helps.
            raise EtcdError(f"{self.endpoints[index]}: {err}") from err
        try:
            data = reply.json()
        except ValueError as err:
            raise _Transient(f"{url}: HTTP {reply.status_code}, not JSON") from err
        if not isinstance(data, dict):
            raise _Transient(f"{url}: HTTP {reply.status_code}, unexpected answer")
        if reply.status_code == 200:
            return data
        code, why = data.get("code"), str(data.get("message") or data.get("error") or "")
        if code == _UNAUTHENTICATED and headers:
            with self._lock:
                self._token = None  # expired or revoked: the next attempt authenticates
            raise _Transient(f"{url}: {why}")
        if code in _UNAVAILABLE or reply.status_code >= 500:
            raise _Transient(f"{url}: {why or reply.status_code}")
        raise EtcdError(f"{url}: {why or reply.status_code}")

    def _attempt(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        index = self._current
        try:
            return self._post_once(index, path, body, self._headers(index))
        except _Transient:
            self._next_endpoint(index)
            raise

    def call(
        self, path: str, body: Mapping[str, Any], attempts: int | None = None
    ) -> dict[str, Any]:
        """POST with retries and endpoint failover; raises Unreachable or EtcdError."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts or self.attempts),
            wait=tenacity.wait_exponential(multiplier=0.05, max=0.5),
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            return retrying(self._attempt, path, body)
        except _Transient as err:
            raise Unreachable(str(err)) from err

    def close(self) -> None:
        self._session.close()

    def watch(
        self, key: str, start: int, on_change: Callable[[KeyValue, bool], None], idle: float
    ) -> int:
        """Stream the changes of every key under ``key`` from revision ``start``, calling
        ``on_change(kv, deleted)`` for each, until the stream is quiet for ``idle``
        seconds (a read timeout: the caller watches again from the returned revision,
        the last one seen; this bounds how long a silently dead connection goes
        unnoticed). Raises :class:`Compacted`, :class:`Unreachable` or EtcdError."""
        body = {
            "create_request": {
                "key": b64(key),
                "range_end": prefix_end(key),
                "start_revision": str(start),
            }
        }
        index = self._current
        last = start - 1
        try:
            headers = self._headers(index)
            url = self.endpoints[index] + "/v3/watch"
            with self._session.post(
                url,
                json=body,
                headers=headers,
                timeout=(self.timeout, idle),
                verify=self._verify,
                stream=True,
            ) as reply:
                if reply.status_code != 200:
                    raise _Transient(f"{url}: HTTP {reply.status_code}")
                for line in reply.iter_lines():
                    last = max(last, _watched(json.loads(line), on_change))
        except (_Transient, requests.RequestException) as err:
            if isinstance(err, requests.ConnectionError) and "Read timed out" in str(err):
                return last  # quiet for ``idle`` seconds: nothing changed
            self._next_endpoint(index)
            raise Unreachable(f"watch: {err}") from err
        except ValueError as err:
            raise EtcdError(f"malformed watch answer: {err}") from err
        return last

    # ------------------------------------------------------------ KV

    def range(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The keys (and the store's revision): ``key`` alone, or every key under it."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        answer = self.call("/v3/kv/range", body)
        try:
            return [_kv(item) for item in answer.get("kvs", [])], _revision(answer)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise EtcdError(f"malformed range answer: {type(err).__name__}: {err}") from err

    def get(self, key: str) -> KeyValue | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(self.call("/v3/kv/put", body))

    def delete(self, key: str) -> None:
        self.call("/v3/kv/deleterange", {"key": b64(key)})

    def txn(
        self, unchanged: Mapping[str, int], puts: Mapping[str, bytes], lease: int = 0
    ) -> TxnResult:
        """Apply ``puts`` if every key in ``unchanged`` still has that mod_revision (0: the
        key must not exist). See :meth:`txn_ops`."""
        compare = [
            {"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)}
            for k, rev in unchanged.items()
        ]
        return self.txn_ops(compare, [put_op(k, v, lease) for k, v in puts.items()])

    def txn_ops(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> TxnResult:
        """One transaction, sent once on the current endpoint: Uncertain if the answer is
        lost, Unreachable if the request surely did not reach etcd."""
        body = {"compare": compare, "success": success, "failure": []}
        index = self._current
        try:
            headers = self._headers(index)
        except _Transient as err:
            self._next_endpoint(index)
            raise Unreachable(str(err)) from err
        try:
            answer = self._post_once(index, "/v3/kv/txn", body, headers)
        except _Transient as err:
            self._next_endpoint(index)
            if _never_sent(err.__cause__):
                raise Unreachable(str(err)) from err
            raise Uncertain(str(err)) from err
        return TxnResult(bool(answer.get("succeeded", False)), _revision(answer))

    # ------------------------------------------------------------ leases

    def grant(self, ttl: int) -> int:
        answer = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        lease = int(answer.get("ID", 0))
        if not lease:
            raise EtcdError(f"lease grant refused: {answer.get('error', answer)}")
        return lease

    def keepalive(self, lease: int) -> int:
        """Renew a lease; its TTL now, 0 once it has expired (the keys bound to it are gone)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    def time_to_live(self, lease: int, attempts: int | None = None) -> int:
        """Seconds the lease has left (-1: expired or unknown)."""
        answer = self.call("/v3/lease/timetolive", {"ID": str(lease)}, attempts)
        return int(answer.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        # Once: it is a courtesy at exit, and the lease expires by itself anyway.
        self.call("/v3/lease/revoke", {"ID": str(lease)}, attempts=1)


def put_op(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def delete_op(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def nothing_new_under(prefix: str, revision: int) -> dict[str, Any]:
    """A compare: no key under ``prefix`` was created or changed after ``revision``
    (keys deleted since are not seen: for counting slots that only frees one)."""
    return {
        "key": b64(prefix),
        "range_end": prefix_end(prefix),
        "target": "MOD",
        "result": "LESS",
        "mod_revision": str(revision + 1),
    }


def _never_sent(cause: BaseException | None) -> bool:
    """Whether a failed request surely never reached etcd (no connection was made)."""
    if isinstance(cause, requests.ConnectTimeout):
        return True
    return isinstance(cause, requests.ConnectionError) and "NewConnectionError" in repr(cause)


def _revision(answer: Mapping[str, Any]) -> int:
    header = answer.get("header")
    return int(header.get("revision", 0)) if isinstance(header, dict) else 0


def _watched(message: Any, on_change: Callable[[KeyValue, bool], None]) -> int:
    """One line of a watch stream: hand its events over; the last revision in it."""
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        raise EtcdError(f"watch: {message}")
    if int(result.get("compact_revision", 0)):
        raise Compacted(f"watch: compacted to {result['compact_revision']}")
    if result.get("canceled"):
        raise EtcdError(f"watch canceled: {result.get('cancel_reason', '')}")
    last = 0
    for event in result.get("events", []):
        kv = _kv(event["kv"])
        on_change(kv, event.get("type") == "DELETE")
        last = max(last, kv.mod_revision)
    return last


def _kv(item: Mapping[str, Any]) -> KeyValue:
    return KeyValue(
        key=unb64(item["key"]).decode(errors="replace"),
        value=unb64(item.get("value", "")),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
        create_revision=int(item.get("create_revision", 0)),
    )
