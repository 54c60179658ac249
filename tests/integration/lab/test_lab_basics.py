"""The namespace lab itself, proven with a stand-in API process instead of the controller.

The stand-in announces 192.0.2.10/32 and 2001:db8::10/128 with ``next-hop self med
100`` and then only reads stdin. Every test runs against ExaBGP 5.0 and 4.2.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab import (
    ANYCAST_V6,
    NODES,
    PREFIX_V4,
    PREFIX_V6,
    REPO_ROOT,
    BirdPath,
    Lab,
    cleanup_stale,
    default_config,
    leftovers_of,
    to_toml,
)
from tests.lab.lab import REGISTRY
from tests.lab.procs import is_alive

pytestmark = pytest.mark.lab

URL_V4 = "http://192.0.2.10/"
URL_V6 = f"http://[{ANYCAST_V6}]/"
BOTH_PREFIXES = (PREFIX_V4, PREFIX_V6)


def test_both_nodes_announce_with_med_100(lab: Lab) -> None:
    """BIRD holds one path per node for each prefix, learnt over that family's own session.

    Each path has MED 100, the default eBGP local-pref 100, AS path [65001], no
    community, and the node's link address as next hop (for IPv6 the global
    fd00:N::2 address, not a link-local one); BIRD's timestamp is recent.
    """
    for prefix, suffix in ((PREFIX_V4, ""), (PREFIX_V6, "_v6")):
        paths = lab.bird_paths_by_node(prefix)
        assert sorted(paths) == list(NODES)
        for node, path in paths.items():
            link = lab.links[node]
            assert path.protocol == f"{node}{suffix}"
            assert path.prefix == prefix
            assert path.med == 100
            assert path.local_pref == 100
            assert path.as_path == (65001,)
            assert path.communities == ()
            expected_hop = link.peer_v6 if suffix else link.peer_v4
            assert path.gateway == expected_hop
            assert path.next_hop == (expected_hop,)
            assert path.interface == link.router_dev
            assert path.age is not None and -5 < path.age < 600
        assert sum(p.primary for p in paths.values()) == 1


def test_router_fib_has_ecmp_over_both_nodes(lab: Lab) -> None:
    """With equal paths, the router's kernel route is one ECMP route via both nodes."""
    for prefix in BOTH_PREFIXES:
        hops = lab.fib_nexthops(prefix)
        assert [lab.node_of_gateway(h.gateway) for h in hops] == list(NODES)
        assert {h.dev for h in hops} == {lab.links[n].router_dev for n in NODES}


@pytest.mark.parametrize("url", [URL_V4, URL_V6], ids=["ipv4", "ipv6"])
def test_client_requests_reach_both_nodes(lab: Lab, url: str) -> None:
    """Requests from the client, each on a new connection, are spread over both nodes (L4 hash)."""
    results = [lab.client_get(url, timeout=2.0) for _ in range(100)]
    assert [r.error for r in results if not r.ok] == []
    assert {r.node for r in results} == set(NODES)


def test_client_loop_counts_answers_per_node(lab: Lab) -> None:
    """A background ClientLoop counts answers per node and failures, and stops at its bounds."""
    with lab.client_loop(URL_V4, max_requests=300, max_seconds=20.0) as loop:
        stats = loop.wait_for_requests(300, timeout=20.0)
        assert lab.client_get(URL_V6).ok  # the one-off client is independent of the loop
    assert stats.total == 300
    assert stats.failures == 0
    assert set(stats.per_node) == set(NODES)
    assert sum(stats.per_node.values()) == 300
    assert not loop.running


def node1_tagged(paths: dict[str, BirdPath]) -> bool:
    return "node1" in paths and paths["node1"].graceful_shutdown


def test_graceful_shutdown_community_gets_local_pref_0(lab: Lab) -> None:
    """A path tagged 65535:0 gets local-pref 0 from the router's import filter (RFC 8326).

    The path stays in BIRD, but it loses to the other node's, so the kernel route
    collapses to the other node and every request goes there.
    """
    lab.stop_exabgp("node1")
    lab.start_exabgp("node1", lab.standin_argv("node1", community="65535:0"))

    for prefix in BOTH_PREFIXES:
        paths = lab.wait_paths(prefix, node1_tagged, 10.0)
        assert paths["node1"].communities == ((65535, 0),)
        assert paths["node1"].local_pref == 0
        assert paths["node1"].med == 100
        assert not paths["node1"].primary
        assert paths["node2"].local_pref == 100
        assert paths["node2"].primary
        lab.wait_fib_nodes(prefix, ["node2"], 5.0)
    for url in (URL_V4, URL_V6):
        results = [lab.client_get(url) for _ in range(40)]
        assert {r.node for r in results} == {"node2"}


def test_sigkill_of_exabgp_drops_its_paths(lab: Lab) -> None:
    """SIGKILL of node1's ExaBGP closes its TCP sessions: BIRD drops node1's paths within a second.

    The orphaned stand-in sees EOF on stdin and exits by itself; traffic then
    goes only to node2.
    """
    api = lab.wait_api_pid("node1")
    killed_at = time.monotonic()
    lab.kill_exabgp("node1")
    for prefix in BOTH_PREFIXES:
        lab.wait_path_nodes(prefix, ["node2"], 5.0)
        lab.wait_fib_nodes(prefix, ["node2"], 5.0)
    assert time.monotonic() - killed_at < 1.0
    lab.wait_until(lambda: not is_alive(api), 5.0, what="orphaned stand-in exits")
    assert not lab.sessions()["node1"].established
    results = [lab.client_get(URL_V4) for _ in range(40)]
    assert {r.node for r in results} == {"node2"}


def test_killed_api_process_is_respawned_and_routes_stay(lab: Lab) -> None:
    """SIGKILL of the API process (not ExaBGP): ExaBGP runs a new one and keeps the routes.

    The respawned stand-in re-announces identical routes, which ExaBGP suppresses:
    BIRD's paths keep their timestamps (no flap).
    """
    before = {prefix: lab.bird_paths_by_node(prefix) for prefix in BOTH_PREFIXES}
    old = lab.wait_api_pid("node1")
    os.kill(old, signal.SIGKILL)
    new = lab.wait_until(
        lambda: next((pid for pid in lab.api_pids("node1") if pid != old), None),
        5.0,
        what="a respawned API process",
    )
    assert new != old
    lab.wait_until(lambda: "announce" in lab.standin_log("node1").split(f"[{new}]")[-1], 5.0)
    time.sleep(0.3)  # give a (wrong) withdraw or re-announcement time to show
    for prefix in BOTH_PREFIXES:
        after = lab.bird_paths_by_node(prefix)
        assert sorted(after) == list(NODES)
        assert after["node1"].since == before[prefix]["node1"].since
    assert all(session.established for session in lab.sessions().values())


def test_frozen_exabgp_loses_its_paths_at_hold_time(lab: Lab) -> None:
    """A SIGSTOPped ExaBGP keeps its sessions open but silent: BIRD drops them after the hold time.

    With hold time 3 s the paths go between 1 and 4 s after the freeze; once thawed,
    ExaBGP reconnects and announces again.
    """
    frozen_at = time.monotonic()
    lab.freeze_exabgp("node1")
    try:
        for prefix in BOTH_PREFIXES:
            lab.wait_path_nodes(prefix, ["node2"], 6.0)
        lost_after = time.monotonic() - frozen_at
        assert 1.0 < lost_after < 4.0
        assert "Hold timer expired" in lab.bird_log()
    finally:
        lab.thaw_exabgp("node1")
    lab.wait_established(["node1"], 15.0)
    for prefix in BOTH_PREFIXES:
        lab.wait_path_nodes(prefix, NODES, 5.0)


def test_stopped_web_server_refuses_and_restarts(lab: Lab) -> None:
    """Stopping node1's web server (routes unchanged) makes requests hashed to node1 fail.

    Starting it again brings both nodes back; /health follows the node's flag.
    """
    lab.stop_http("node1")
    assert not lab.http_running("node1")
    results = [lab.client_get(URL_V4, timeout=1.0) for _ in range(60)]
    assert {r.node for r in results if r.ok} == {"node2"}
    assert any("refused" in (r.error or "").lower() for r in results)
    lab.start_http("node1")
    results = [lab.client_get(URL_V4, timeout=1.0) for _ in range(60)]
    assert all(r.ok for r in results)
    assert {r.node for r in results} == set(NODES)

    lab.set_healthy("node2", False)
    health = {r.node or r.status for r in (lab.client_get(f"{URL_V4}health") for _ in range(40))}
    assert health == {"ok", 503}
    lab.set_healthy("node2", True)


def test_teardown_leaves_nothing(make_lab: Callable[[], Lab]) -> None:
    """stop() kills every process of the lab by PID and deletes its namespaces, even after an error.

    Checked on a second lab running next to the module's one (names never collide).
    """
    lab = make_lab()
    baseline = {node: lab.standin_argv(node) for node in NODES}
    with pytest.raises(RuntimeError, match="test failure"), lab.start(baseline):
        pids = [lab.wait_api_pid(node) for node in NODES]
        pids += [pid for node in NODES if (pid := lab.exabgp_pid(node)) is not None]
        assert len(pids) == 4
        assert len(lab.leftovers()) > 4
        raise RuntimeError("test failure")
    assert lab.leftovers() == []
    assert not any(is_alive(pid) for pid in pids)
    assert not lab.tmpdir.exists()


def test_lab_of_a_killed_owner_is_cleaned_up_later(
    lab_requirements: None, exabgp_version: str
) -> None:
    """When the process owning a lab dies without teardown, cleanup_stale() removes that lab.

    Labs whose owner is alive (like this module's) are left alone.
    """
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from tests.lab import NODES, Lab\n"
        f"lab = Lab({exabgp_version!r})\n"
        "lab.start({node: lab.standin_argv(node) for node in NODES})\n"
        "print(lab.id, lab.tmpdir, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert owner.stdout is not None
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 30.0)
        assert ready, "the owner process did not start its lab in time"
        lab_id, tmpdir = owner.stdout.readline().split()
    finally:
        owner.kill()
        owner.wait(10.0)
        owner.stdout.close()
    assert leftovers_of(lab_id), "the killed owner's lab should still be there"
    assert lab_id in cleanup_stale()
    assert leftovers_of(lab_id) == []
    assert not Path(tmpdir).exists()


def test_lab_of_a_live_owner_is_kept_whatever_its_start_time_reads(
    lab_requirements: None,
) -> None:
    """cleanup_stale() leaves a live owner's lab alone even when the owner's start time
    reads differently than at registration, as it does from a session in another time
    namespace: the owner's lock on its registry entry says it is alive."""
    lab = Lab()
    lab._register()
    entry = REGISTRY / f"{lab.id}.json"
    try:
        info = json.loads(entry.read_text())
        entry.write_text(json.dumps({**info, "owner_start": "1"}))  # another namespace's view
        assert lab.id not in cleanup_stale()
        assert entry.exists()
        assert lab.tmpdir.exists()
    finally:
        lab.stop()
    assert not entry.exists()


def test_announcer_config_is_the_controller_toml() -> None:
    """The lab writes the controller's TOML with the selector, defaults and one web service."""
    text = to_toml(default_config(med=100, drain_seconds=3))
    config = tomllib.loads(text)
    assert config["neighbor"] == "*"
    assert config["next_hop"] == "self"
    assert config["defaults"] == {
        "interval": 0.5,
        "fast_interval": 0.1,
        "rise": 2,
        "fall": 2,
        "drain_seconds": 3,
    }
    (service,) = config["service"]
    assert service["name"] == "web"
    assert service["prefixes"] == list(BOTH_PREFIXES)
    assert service["checks"] == [{"type": "http", "url": "http://192.0.2.10/health"}]
    assert service["announce"] == {"med": 100}


def test_announcer_config_per_node_keeps_nodes_apart(lab: Lab) -> None:
    """Each node's controller config gets its own state dir, control socket and maintenance file.

    The argv ExaBGP runs is ``<repo>/.venv/bin/announcer run --config <node's file>``.
    """
    configs = {}
    for node in NODES:
        argv = lab.announcer_argv(node, med=200)
        assert argv[:3] == [str(REPO_ROOT / ".venv" / "bin" / "announcer"), "run", "--config"]
        path = Path(argv[3])
        assert path.parent == lab.node_dir(node)
        configs[node] = tomllib.loads(path.read_text())
        assert configs[node]["service"][0]["announce"] == {"med": 200}
        for key in ("state_dir", "control_socket", "maintenance_file"):
            assert Path(configs[node][key]).parent == lab.node_dir(node)
    assert lab.control_socket("node1") != lab.control_socket("node2")
