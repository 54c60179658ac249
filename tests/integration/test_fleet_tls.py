"""``[fleet]`` over TLS against a real etcd (Debian's) serving its clients on https with a
certificate made by these tests (a throwaway CA from the ``openssl`` CLI; no key is
committed): the client trusts ``ca_file``, token authentication works over it, and a
wrong CA is a clear error, never a crash."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_harness import Cluster, Tls, enable_auth, etcd_binary, make_tls
from test_fleet_daemons import ANN, fleet_sees, node, spin

from announcer.fleet.etcd import EtcdClient, EtcdError, Unreachable
from tests.unit.loop import Loop, ScriptedCheck

pytestmark = [
    pytest.mark.skipif(etcd_binary() is None, reason="needs etcd (apt-get install etcd-server)"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

PW = "pw"  # a throwaway etcd's


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tls, Tls]:
    """The CA etcd's certificate is signed by, and another one that did not sign it."""
    directory = tmp_path_factory.mktemp("tls")
    return make_tls(directory, "ca"), make_tls(directory, "other")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, certs: tuple[Tls, Tls]) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("etcd"), tls=certs[0]).start()
    yield cluster
    cluster.stop()


def test_ca_file_trusts_etcd_over_https(
    etcd: Cluster, certs: tuple[Tls, Tls], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``ca_file`` the client verifies etcd's certificate and works as over http:
    a put read back, a lease granted; REQUESTS_CA_BUNDLE in the environment (here naming
    a CA that did not sign etcd's certificate) does not override ``ca_file``."""
    assert etcd.urls[0].startswith("https://")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs[1].ca))
    client = EtcdClient(etcd.urls, timeout=2.0, ca_file=certs[0].ca)
    client.put("/t/tls", b"over tls")
    found = client.get("/t/tls")
    assert found is not None and found.value == b"over tls"
    assert client.grant(5) > 0


def test_a_wrong_ca_is_a_clear_error(etcd: Cluster, certs: tuple[Tls, Tls], tmp_path: Path) -> None:
    """A CA that did not sign etcd's certificate: Unreachable naming the endpoint and
    OpenSSL's reason; a ca_file that does not exist: an EtcdError naming the path."""
    wrong = EtcdClient(etcd.urls, timeout=2.0, ca_file=certs[1].ca)
    with pytest.raises(Unreachable, match=r"https://127\.0\.0\.1:\d+: TLS: certificate verify"):
        wrong.get("/t/tls")
    missing = EtcdClient(etcd.urls, timeout=2.0, ca_file=tmp_path / "no-such-ca.pem")
    with pytest.raises(EtcdError, match=r"no-such-ca\.pem"):
        missing.get("/t/tls")


def test_token_authentication_over_tls(tmp_path: Path, certs: tuple[Tls, Tls]) -> None:
    """etcd with auth on behind TLS: user and password get a token over https and the
    requests carry it; a wrong password is refused with an EtcdError."""
    cluster = Cluster(tmp_path, tls=certs[0]).start()
    try:
        enable_auth(cluster.urls[0], "announcer", PW, ca=certs[0].ca)
        ok = EtcdClient(cluster.urls, ca_file=certs[0].ca, user="announcer", password=PW)
        ok.put("/t/auth-tls", b"v")
        assert ok.get("/t/auth-tls") is not None
        bad = EtcdClient(cluster.urls, ca_file=certs[0].ca, user="announcer", password=PW + "x")
        with pytest.raises(EtcdError):
            bad.get("/t/auth-tls")
    finally:
        cluster.stop()


def test_the_daemon_with_the_right_ca_counts_and_with_a_wrong_one_says_why(
    etcd: Cluster, certs: tuple[Tls, Tls], tmp_path: Path
) -> None:
    """Two whole daemons with ``ca_file``: the right CA reads the group over https (both
    nodes seen once the other can write); the wrong CA's daemon does not crash, announces
    as without a fleet (on_unknown local) and its fleet view says etcd is unreachable,
    with OpenSSL's reason."""
    right = node(
        tmp_path, etcd.urls, "tls", "right", ScriptedCheck(), f'ca_file = "{certs[0].ca}"\n'
    )
    wrong = node(
        tmp_path, etcd.urls, "tls", "wrong", ScriptedCheck(), f'ca_file = "{certs[1].ca}"\n'
    )
    loops: list[Loop] = [right, wrong]
    try:
        spin([right], fleet_sees(right, 1), "the right CA's daemon counting itself")

        def says_why() -> bool:
            guard = wrong.daemon.fleet
            if guard is None:
                return False
            etcd_view = guard.snapshot()["etcd"]
            return etcd_view["reachable"] is False and "certificate verify failed" in str(
                etcd_view["error"]
            )

        spin(loops, says_why, "the wrong CA's daemon saying why")
        assert wrong.sent == [ANN] and right.sent == [ANN]
        assert fleet_sees(right, 1)()  # the wrong one never wrote its record
    finally:
        for loop in loops:
            loop.daemon.close()
