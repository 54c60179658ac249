"""Prometheus metrics: samples, bounded reason labels, and the HTTP endpoint."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from announcer import __version__
from announcer.metrics import REASONS, Metrics, classify_reason

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: bytes | str) -> Samples:
    """Every sample of an exposition, keyed by name and label set."""
    if isinstance(text, bytes):
        text = text.decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m.render()).get((name, frozenset(labels.items())))


def test_uses_its_own_registry_not_the_global_one() -> None:
    """Two instances coexist and nothing lands in prometheus_client's global REGISTRY."""
    a, b = Metrics(), Metrics()
    a.set_state("web", "UP", "ANNOUNCED")
    assert a.registry is not b.registry
    assert a.registry is not REGISTRY
    assert REGISTRY.get_sample_value("announcer_service_health", {"service": "web"}) is None
    given = CollectorRegistry()
    assert Metrics(given).registry is given


def test_info_carries_the_version() -> None:
    """announcer_info{version} is 1 for this build's version."""
    assert value(Metrics(), "announcer_info", version=__version__) == 1
    assert value(Metrics(version="9.9"), "announcer_info", version="9.9") == 1


def test_states_are_one_hot() -> None:
    """Exactly the current health and route state are 1; every other state is 0."""
    m = Metrics()
    m.set_state("web", "RISING", "WITHDRAWN")
    m.set_state("web", "UP", "DRAINING")
    s = samples(m.render())
    health = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "announcer_service_health"}
    route = {dict(k[1])["state"]: v for k, v in s.items() if k[0] == "announcer_service_route"}
    assert health == {"INIT": 0, "RISING": 0, "UP": 1, "FALLING": 0, "DOWN": 0}
    assert route == {"WITHDRAWN": 0, "ANNOUNCED": 0, "DRAINING": 1, "LOWERED": 0, "UNKNOWN": 0}


def test_check_observations_fill_histogram_and_bucketed_failures() -> None:
    """Durations go to the histogram; failures count under their classified reason."""
    m = Metrics()
    m.observe_check("web", True, "HTTP 200", 0.004)
    m.observe_check("web", False, "HTTP 503", 0.02)
    m.observe_check("web", False, "timeout after 2.0s", 2.0)
    m.observe_check("web", False, "timeout after 2.0s", 2.0)
    m.observe_check("db", False, "replica lag 40s", 0.1, kind="command")
    assert value(m, "announcer_check_duration_seconds_count", service="web") == 4
    assert value(m, "announcer_check_duration_seconds_sum", service="web") == pytest.approx(4.024)
    assert value(m, "announcer_check_duration_seconds_bucket", service="web", le="0.005") == 1
    assert value(m, "announcer_check_duration_seconds_bucket", service="web", le="0.025") == 2
    assert value(m, "announcer_check_duration_seconds_bucket", service="web", le="10.0") == 4
    assert value(m, "announcer_check_failures_total", service="web", reason="http_status") == 1
    assert value(m, "announcer_check_failures_total", service="web", reason="timeout") == 2
    assert value(m, "announcer_check_failures_total", service="db", reason="command_exit") == 1


def test_buckets_span_a_millisecond_to_ten_seconds() -> None:
    """The histogram resolves 1 ms local checks and 10 s timeouts."""
    m = Metrics()
    m.observe_check("web", True, "", 0.0005)
    les = {
        dict(k[1])["le"]
        for k in samples(m.render())
        if k[0] == "announcer_check_duration_seconds_bucket"
    }
    assert {"0.001", "10.0", "+Inf"} <= les
    assert len(les) <= 16


def test_failure_series_start_at_zero_for_every_reason() -> None:
    """A service's failure counters exist at 0 for each bounded reason from its first sample."""
    m = Metrics()
    m.set_state("web", "INIT", "WITHDRAWN")
    for reason in REASONS:
        assert value(m, "announcer_check_failures_total", service="web", reason=reason) == 0
    assert value(m, "announcer_dampened", service="web") == 0


def test_transitions_drains_dampening_and_connections() -> None:
    """Each method sets or increments its own series with the given labels."""
    m = Metrics()
    m.transition("web", "WITHDRAWN", "ANNOUNCED")
    m.transition("web", "ANNOUNCED", "DRAINING")
    m.transition("web", "WITHDRAWN", "ANNOUNCED")
    m.drain("web", "maintenance")
    m.drain("web", "cli")
    m.drain("web", "cli")
    m.dampened("web", True)
    m.connections("web", 17)
    key = {"service": "web", "from": "WITHDRAWN", "to": "ANNOUNCED"}
    assert value(m, "announcer_route_transitions_total", **key) == 2
    assert value(m, "announcer_drains_total", service="web", source="cli") == 2
    assert value(m, "announcer_drains_total", service="web", source="maintenance") == 1
    assert value(m, "announcer_dampened", service="web") == 1
    assert value(m, "announcer_drain_connections", service="web") == 17
    m.dampened("web", False)
    m.connections("web", 0)
    assert value(m, "announcer_dampened", service="web") == 0
    assert value(m, "announcer_drain_connections", service="web") == 0


def test_unknown_connection_count_removes_the_series() -> None:
    """connections(service, None) means unknown: the series disappears instead of lying."""
    m = Metrics()
    m.connections("web", 3)
    m.connections("web", None)
    m.connections("never-seen", None)
    assert value(m, "announcer_drain_connections", service="web") is None


def test_acks_and_commands_take_running_totals() -> None:
    """acks()/commands() get the writer's absolute counts and add only the growth."""
    m = Metrics()
    assert value(m, "announcer_exabgp_acks_total", result="done") == 0
    assert value(m, "announcer_exabgp_acks_total", result="error") == 0
    m.acks(5, 0)
    m.acks(5, 0)
    m.acks(8, 1)
    m.commands(4)
    m.commands(10)
    assert value(m, "announcer_exabgp_acks_total", result="done") == 8
    assert value(m, "announcer_exabgp_acks_total", result="error") == 1
    assert value(m, "announcer_exabgp_commands_total") == 10
    # A new writer starts again from 0: its counts are added, never subtracted.
    m.acks(2, 0)
    m.commands(3)
    assert value(m, "announcer_exabgp_acks_total", result="done") == 10
    assert value(m, "announcer_exabgp_commands_total") == 13


def test_remove_service_drops_all_its_series_and_keeps_others() -> None:
    """After a reload removes a service, none of its labelled series remain."""
    m = Metrics()
    for name in ("web", "dns"):
        m.set_state(name, "UP", "ANNOUNCED")
        m.observe_check(name, False, "connection refused", 0.01)
        m.transition(name, "WITHDRAWN", "ANNOUNCED")
        m.drain(name, "cli")
        m.connections(name, 2)
        m.dampened(name, True)
    m.remove_service("web")
    m.remove_service("not-there")
    s = samples(m.render())
    assert not [k for k in s if ("service", "web") in k[1]]
    dns = [k for k in s if ("service", "dns") in k[1]]
    assert {k[0] for k in dns} >= {
        "announcer_service_health",
        "announcer_service_route",
        "announcer_check_duration_seconds_count",
        "announcer_check_failures_total",
        "announcer_route_transitions_total",
        "announcer_drains_total",
        "announcer_drain_connections",
        "announcer_dampened",
    }
    # A service that comes back starts afresh.
    m.observe_check("web", False, "connection refused", 0.01)
    assert value(m, "announcer_check_failures_total", service="web", reason="connection_refused")


def test_long_drain_sources_are_cut() -> None:
    """A drain source is cut to a bounded length so it cannot grow label values."""
    m = Metrics()
    m.drain("web", "x" * 500)
    sources = [
        dict(k[1])["source"] for k in samples(m.render()) if k[0] == "announcer_drains_total"
    ]
    assert sources == ["x" * 32]


@pytest.mark.parametrize(
    ("reason", "kind", "bucket"),
    [
        ("timeout after 2.0s", None, "timeout"),
        ("timeout after 0.25s; HTTP 503", None, "timeout"),
        ("connection timed out", None, "timeout"),
        ("timeout after 1s", "command", "timeout"),
        ("no result within 2s (check hung)", None, "hung"),
        ("previous run still running (check hung)", "http", "hung"),
        ("connection refused", None, "connection_refused"),
        ("connection failed: Connection refused by peer", None, "connection_refused"),
        ("connection reset", None, "connection_reset"),
        ("server closed the connection without a response", None, "connection_reset"),
        ("connection closed without a reply", None, "connection_reset"),
        ("connection broken while reading the body", None, "connection_reset"),
        ("HTTP 503", None, "http_status"),
        ("http 404; connection refused", None, "http_status"),
        ("body did not match /ok/", None, "body_mismatch"),
        ("reply 'ERR' does not start with '+PONG'", None, "body_mismatch"),
        ("192.0.2.1 not among the answers: 192.0.2.2", "dns", "body_mismatch"),
        ("cannot resolve host", None, "dns"),
        ("cannot resolve host: Name or service not known", None, "dns"),
        ("NXDOMAIN", "dns", "dns"),
        ("SERVFAIL", None, "dns"),
        ("REFUSED", None, "dns"),
        ("no AAAA records in the answer (truncated reply)", None, "dns"),
        ("bad DNS response: FormError: bad label", None, "dns"),
        ("exit 1", None, "command_exit"),
        ("killed by SIGKILL", None, "command_exit"),
        ("cannot run: /usr/bin/nope: no such file or directory", None, "command_exit"),
        ("replica lag 40s", "command", "command_exit"),
        ("connection refused", "command", "command_exit"),
        ("missing: /run/web/ready", None, "file"),
        ("dangling symlink: /run/web/ready", None, "file"),
        ("present: /etc/announcer/maintenance", None, "file"),
        ("cannot check /run/x: permission denied", "file", "file"),
        ("TLS certificate not trusted: self-signed certificate", None, "other"),
        ("network is unreachable", None, "other"),
        ("unexpected ValueError: boom", None, "other"),
        ("check raised RuntimeError: boom", None, "other"),
        ("no check passed", None, "other"),
        ("", None, "other"),
        ("replica lag 40s", None, "other"),
    ],
)
def test_classify_reason(reason: str, kind: str | None, bucket: str) -> None:
    """Every reason wording of the checks lands in one of the bounded buckets."""
    assert classify_reason(reason, kind) == bucket
    assert bucket in REASONS


def test_http_scrape_returns_the_samples() -> None:
    """A server on 127.0.0.1 (free port) answers a scrape with the same samples as render()."""
    m = Metrics()
    m.set_state("web", "UP", "ANNOUNCED")
    m.observe_check("web", False, "HTTP 500", 0.05)
    server = m.serve("127.0.0.1", 0)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read()
    finally:
        server.close()
    got = samples(body)
    assert got[("announcer_service_health", frozenset({("service", "web"), ("state", "UP")}))] == 1
    key = (
        "announcer_check_failures_total",
        frozenset({("service", "web"), ("reason", "http_status")}),
    )
    assert got[key] == 1
    assert ("announcer_info", frozenset({("version", __version__)})) in got


def test_server_close_releases_the_port() -> None:
    """After close() (called twice is fine) the port refuses connections."""
    m = Metrics()
    server = m.serve("127.0.0.1", 0)
    port = server.port
    server.close()
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_ipv6_loopback_listener() -> None:
    """serve("::1") binds an IPv6 socket (skipped without IPv6 loopback)."""
    m = Metrics()
    try:
        server = m.serve("::1", 0)
    except OSError as err:
        pytest.skip(f"no ::1 here: {err}")
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/metrics", timeout=5) as r:
            assert b"announcer_info" in r.read()
    finally:
        server.close()


def test_a_taken_port_raises_oserror() -> None:
    """Binding an address already in use raises OSError for the caller to log."""
    m = Metrics()
    first = m.serve("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            Metrics().serve("127.0.0.1", first.port)
    finally:
        first.close()


def test_events_and_their_write_delay() -> None:
    """An immediate check's events are counted by what they did, and the delay from an
    event to its command written is observed; a process check's failure has its bucket."""
    m = Metrics()
    m.check_event("web", "down")
    m.check_event("web", "none")
    m.event_written("web", 0.0004)
    assert value(m, "announcer_check_events_total", service="web", action="down") == 1
    assert value(m, "announcer_check_events_total", service="web", action="none") == 1
    assert value(m, "announcer_event_to_write_seconds_count", service="web") == 1
    assert value(m, "announcer_event_to_write_seconds_bucket", service="web", le="0.0005") == 1
    assert value(m, "announcer_event_to_write_seconds_bucket", service="web", le="0.00025") == 0
    assert classify_reason("pid 42 exited", kind="process") == "process"
