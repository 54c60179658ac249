"""The address guard and managed addresses in the lab, with the REAL ``announcer run``.

Both nodes carry the anycast addresses on ``lo`` (tests/lab/lab.py) and run the
scenario config of test_scenarios.py; node1's check here asks for the IPv6 URL, so
removing its IPv4 address changes what the kernel delivers and nothing the check sees.

- The guard (ExaBGP 5.0 and 4.2): 192.0.2.10 removed from node1's ``lo`` -> node1
  withdraws 192.0.2.10/32 at once, its IPv6 prefix stays, clients keep working through
  node2; the address back -> announced again after the next passing round.
- Managed addresses (ExaBGP 5.0): node1 with ``manage_addresses = "lo"``; a drain
  withdraws, the router drops node1's path, and only then does the address leave node1;
  an undrain puts the address back before the router sees the path again. Both ends are
  polled in one loop, so the order observed is the order it happened in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from tests.integration.lab import test_scenarios as scenarios
from tests.integration.lab.test_scenarios import (
    V4,
    V6,
    announced_normally,
    baseline,
    failed,
    more_requests,
    only_node2,
    requests_after,
    restore,
    service_status,
    version,
    watch_paths,
)
from tests.lab import ANYCAST_V4, ANYCAST_V6, NODES, PREFIX_V4, PREFIX_V6, Lab, wait_until
from tests.lab import controller as ctl

pytestmark = pytest.mark.lab

ADDRESSES = {PREFIX_V4: ["ip", "addr"], PREFIX_V6: ["ip", "-6", "addr"]}


def node1_config(**service: object) -> dict[str, Any]:
    """The scenario config, node1's check on the IPv6 URL, plus ``service`` settings."""
    config = ctl.scenario_config()
    web = config["service"][0]
    web["checks"] = [{"type": "http", "url": f"http://[{ANYCAST_V6}]/health"}]
    web.update(service)
    return config


def put_back(lab: Lab) -> None:
    """The anycast addresses on node1's lo again, as the lab made them."""
    for prefix, ip in ADDRESSES.items():
        extra = ["nodad"] if ":" in prefix else []
        lab.exec_in("node1", [*ip, "replace", prefix, "dev", "lo", *extra])


def has_address(lab: Lab, prefix: str, present: bool = True) -> bool:
    """Whether node1's lo carries ``prefix`` (is ``present``)."""
    out = lab.exec_in("node1", [*ADDRESSES[prefix], "show", "dev", "lo"])
    return (f" {prefix} " in out) is present


def node1_path(lab: Lab, prefix: str, present: bool = True) -> bool:
    """Whether the router has node1's path for ``prefix`` (is ``present``)."""
    return ("node1" in lab.bird_paths_by_node(prefix)) is present


lab_module = scenarios.lab_module
"""The same lab as test_scenarios.py: one per ExaBGP version, both nodes running the
real controller, checked clean at the end."""


@pytest.fixture
def lab(lab_module: Lab) -> Iterator[Lab]:
    """The module's lab in the healthy baseline, with node1's addresses back afterwards."""
    put_back(lab_module)
    restore(lab_module)
    yield lab_module
    put_back(lab_module)


def start_node1(lab: Lab, name: str, **service: object) -> None:
    argv = ctl.controller_argv(lab, "node1", node1_config(**service), name=name)
    lab.ensure({"node1": argv, "node2": baseline(lab)["node2"]})
    for fam in (V4, V6):
        lab.wait_paths(fam.prefix, announced_normally, 15.0, what=f"{fam.prefix} announced")


def test_address_removed_withdraws_at_once_and_back_announces_again(lab: Lab) -> None:
    """node1 loses 192.0.2.10: its controller withdraws that prefix at once (status and log
    say why), keeps 2001:db8::10/128, and clients keep working through node2; with the
    address back it is announced again."""
    start_node1(lab, "guard")
    with lab.client_loop(V4.url, timeout=1.0, max_seconds=60.0) as loop:
        loop.wait_for_requests(20, 10.0)
        removed = time.time()
        lab.exec_in("node1", ["ip", "addr", "del", PREFIX_V4, "dev", "lo"])
        gone = watch_paths(lab, PREFIX_V4, only_node2, removed, 10.0)
        wait_until(lambda: more_requests(loop.stats, gone.after, 50), 20.0, what="50 requests")
        stats = loop.stop()
    after = requests_after(stats, gone.after)
    assert failed(after.results) == []
    assert set(after.per_node) == {"node2"}
    assert sorted(lab.bird_paths_by_node(PREFIX_V6)) == list(NODES)  # the other prefix stays
    svc = service_status(lab, "node1")
    assert svc is not None
    assert (svc["health"], svc["route"], svc["wire_prefixes"]) == ("UP", "ANNOUNCED", [PREFIX_V6])
    assert svc["held"] == {PREFIX_V4: "no local address or local route for it"}
    events = ctl.log_events(lab, "node1")
    assert any(e.get("event") == "address_guard" and e.get("prefixes") == PREFIX_V4 for e in events)

    lab.exec_in("node1", ["ip", "addr", "add", PREFIX_V4, "dev", "lo"])
    lab.wait_paths(PREFIX_V4, announced_normally, 10.0, what="192.0.2.10/32 announced again")
    lab.wait_fib_nodes(PREFIX_V4, NODES, 10.0)
    svc = service_status(lab, "node1")
    assert svc is not None and svc["held"] == {}


@dataclass
class FirstSeen:
    """The poll (a counter and a wall-clock time) at which a condition first held."""

    poll: int
    at: float


def first_seen(
    conditions: Mapping[str, Callable[[], bool]], timeout: float
) -> dict[str, FirstSeen]:
    """Poll every condition in each round, in order, until all have held once."""
    seen: dict[str, FirstSeen] = {}
    deadline = time.monotonic() + timeout
    poll = 0
    while len(seen) < len(conditions) and time.monotonic() < deadline:
        poll += 1
        for name, holds in conditions.items():
            if name not in seen and holds():
                seen[name] = FirstSeen(poll, time.time())
        time.sleep(0.005)
    missing = sorted(set(conditions) - set(seen))
    assert not missing, f"never seen within {timeout} s: {missing}"
    return seen


def test_managed_address_leaves_only_after_the_router_dropped_the_path(lab: Lab) -> None:
    """With manage_addresses = "lo": a drain withdraws node1, the router drops its path,
    and only after that does node1 lose the address; an undrain adds the address before
    the router has node1's path again."""
    if version(lab) != "5.0":
        pytest.skip("managed addresses are checked on ExaBGP 5.0 (the guard on both)")
    start_node1(lab, "managed", manage_addresses="lo")
    ctl.drain(lab, "node1", "managed addresses")
    both = (PREFIX_V4, PREFIX_V6)
    order = first_seen(
        {f"router dropped {p}": partial(node1_path, lab, p, False) for p in both}
        | {f"node1 lost {p}": partial(has_address, lab, p, False) for p in both},
        timeout=30.0,
    )
    for p in both:
        dropped, lost = order[f"router dropped {p}"], order[f"node1 lost {p}"]
        assert dropped.poll < lost.poll, order
    events = ctl.log_events(lab, "node1")
    assert {e.get("prefix") for e in events if e.get("event") == "address_removed"} >= {
        PREFIX_V4,
        PREFIX_V6,
    }

    ctl.undrain(lab, "node1")
    order = first_seen(
        {f"node1 has {p}": partial(has_address, lab, p) for p in both}
        | {f"router has {p}": partial(node1_path, lab, p) for p in both},
        timeout=30.0,
    )
    for p in both:
        assert order[f"node1 has {p}"].poll <= order[f"router has {p}"].poll, order
    assert ANYCAST_V4 in lab.exec_in("node1", ["ip", "addr", "show", "dev", "lo"])
