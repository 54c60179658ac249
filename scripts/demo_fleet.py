"""The fleet guard, live: three nodes behind a BIRD router share their state in etcd.

Builds the namespace lab with three nodes running the real ``announcer run`` under
ExaBGP 5.0 and a 3-member etcd in the router's namespace, then, while a client keeps
making requests:

1. healthy   - three nodes announce; ``announcer fleet`` counts them
2. shared    - every node's /health reports its backend down at once (the web servers
               still answer): two withdraw, the last one is held by the fleet guard
3. recovery  - node2 recovers; the held node may withdraw now
4. slots     - max_drained = 1: node1 and node2 drained together take turns

Prints what the router has (BIRD's paths and MED), what ``announcer fleet`` says and
who answered the client. Needs root; ``sudo make demo-fleet`` sets everything up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.lab import ANYCAST_V4, ClientLoop, Lab, cleanup_stale, wait_until  # noqa: E402
from tests.lab.etcd import LabEtcd, etcd_available  # noqa: E402
from tests.lab.fleet import NODES3, announcer, counted, paths, start_all  # noqa: E402

T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def show(lab: Lab, loop: ClientLoop, node: str = "node1") -> None:
    time.sleep(1.5)  # the controllers read the group once a second
    routes = ", ".join(f"{n} med {m}" for n, m in sorted(paths(lab).items())) or "none"
    stats = loop.stats()
    answered = ", ".join(f"{n} {c}" for n, c in sorted(stats.per_node.items()))
    print(f"    router: {routes}")
    print(f"    client: answered {answered}; failed {stats.failures}")
    print(f"    $ announcer fleet   (on {node})")
    for line in announcer(lab, node, "fleet").stdout.splitlines():
        print(f"      {line}".rstrip())


def story(lab: Lab, etcd: LabEtcd, loop: ClientLoop) -> None:
    say(">>> HEALTHY: three nodes announce; each controller keeps its record in etcd")
    wait_until(lambda: counted(lab, "node1") == 3, 30, what="the fleet counting three")
    show(lab, loop)
    say(">>> SHARED FAILURE: every /health says the backend is down (the web servers still answer)")
    for node in NODES3:
        lab.set_healthy(node, False)
    wait_until(lambda: len(paths(lab)) == 1, 30, what="two withdrawn")
    time.sleep(2)
    (held,) = paths(lab)
    say(f"    two withdrew; {held} may not: the last one keeps announcing, lowered (MED 1000)")
    show(lab, loop, held)
    say(">>> RECOVERY: node2's backend is back; the held node withdraws once node2 announces")
    lab.set_healthy("node2", True)
    wait_until(lambda: set(paths(lab)) == {"node2"}, 30, what="only node2")
    show(lab, loop)
    for node in NODES3:
        lab.set_healthy(node, True)
    wait_until(lambda: len(paths(lab)) == 3, 30, what="all three back")
    say(">>> DRAIN SLOTS (max_drained = 1): node1 and node2 drained together")
    announcer(lab, "node1", "drain", "web", "--reason", "kernel upgrade")
    wait_until(lambda: paths(lab).get("node1") == 1000, 15, what="node1 lowered")
    announcer(lab, "node2", "drain", "web", "--reason", "kernel upgrade")
    time.sleep(2)
    print("    $ announcer status   (on node2)")
    for line in announcer(lab, "node2", "status").stdout.splitlines():
        print(f"      {line}".rstrip())
    show(lab, loop, "node2")
    say(">>> node1 undrained: node2 takes the slot")
    announcer(lab, "node1", "undrain", "web")
    wait_until(lambda: paths(lab).get("node2") == 1000, 15, what="node2 lowered")
    show(lab, loop, "node2")
    announcer(lab, "node2", "undrain", "web")


def main() -> int:
    if not etcd_available():
        print("demo-fleet: needs etcd (apt-get install etcd-server)", file=sys.stderr)
        return 2
    cleanup_stale()
    say("building the lab: BIRD router, three nodes (ExaBGP 5.0 + announcer), etcd x3, client")
    with Lab("5.0", nodes=NODES3) as lab:
        etcd = LabEtcd(lab).start()
        try:
            start_all(lab, etcd)
            wait_until(lambda: len(paths(lab)) == 3, 30, what="three nodes announcing")
            with lab.client_loop(f"http://{ANYCAST_V4}/", timeout=1.0, max_seconds=300.0) as loop:
                loop.wait_for_requests(20, 10.0)
                story(lab, etcd, loop)
                stats = loop.stats()
            say(f">>> SUMMARY: {stats.total} requests, {stats.failures} failed")
        finally:
            etcd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
