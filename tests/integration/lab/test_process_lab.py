"""The process check in the namespace lab: node1's web server SIGKILLed, clients move to node2.

node1's controller checks ``web`` with a ``process`` check on the web server's pid file
(the lab's server writes its pid to ``http.ready`` once it listens) beside the HTTP check,
polled slowly on purpose (interval 2 s, fall 3: polling alone would take 2 s or more to
withdraw). The kill is an event: node1's path leaves the router's FIB without waiting for
a round, which node1's log shows (``check_event``, ``route ... cause=event``,
``event_written`` with the delay from the death to the withdraw written). The client's
requests are counted through it: the failed ones are reported (``PROCESS_FAILOVER`` lines,
with ``pytest -s``), and every request started after the FIB change succeeds on node2.
Runs on ExaBGP 5.0 and 4.2.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.lab import ANYCAST_V4, ANYCAST_V6, NODES, PREFIX_V4, PREFIX_V6, Lab, wait_until
from tests.lab import controller as ctl
from tests.lab.watch import FibWatcher

pytestmark = pytest.mark.lab

FAMILIES = {
    "v4": (PREFIX_V4, f"http://{ANYCAST_V4}/"),
    "v6": (PREFIX_V6, f"http://[{ANYCAST_V6}]/"),
}


def process_config(lab: Lab) -> dict[str, Any]:
    """node1's config: the process check (immediate, the default) and the HTTP check, polled
    slowly so that only the event can explain a quick withdraw."""
    config = ctl.scenario_config(interval=2.0, fast_interval=0.5, rise=2, fall=3)
    pid_file = str(lab.node_dir("node1") / "http.ready")
    config["service"][0]["checks"] = [
        {"type": "process", "pid_file": pid_file},
        *config["service"][0]["checks"],
    ]
    return config


@pytest.fixture(scope="module")
def lab(lab_requirements: None, exabgp_version: str) -> Iterator[Lab]:
    """A lab per ExaBGP version: node1 on the process config, node2 on the baseline."""
    lab = Lab(exabgp_version)
    try:
        lab.start(argv(lab))
        yield lab
    finally:
        lab.stop()
        assert lab.leftovers() == [], f"lab {lab.id} left things behind"


def argv(lab: Lab) -> dict[str, list[str]]:
    return {
        "node1": ctl.controller_argv(lab, "node1", process_config(lab), name="process"),
        "node2": ctl.controller_argv(lab, "node2"),
    }


def both_announcing(lab: Lab) -> None:
    lab.ensure(argv(lab))
    for prefix in (PREFIX_V4, PREFIX_V6):
        lab.wait_path_nodes(prefix, list(NODES), 20.0)
        lab.wait_fib_nodes(prefix, list(NODES), 10.0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_killed_web_server_moves_clients_to_node2(lab: Lab, family: str) -> None:
    """SIGKILL of node1's web server: node1 withdraws on the event (its log says so, with
    the delay to the command written), the router's FIB drops node1, and every request
    started after that lands on node2; the requests that failed meanwhile are counted."""
    prefix, url = FAMILIES[family]
    both_announcing(lab)
    pid = int((lab.node_dir("node1") / "http.ready").read_text())
    with (
        FibWatcher(lab, [prefix]) as fib,
        lab.client_loop(url, timeout=1.0, max_seconds=60.0) as loop,
    ):
        loop.wait_for_requests(20, 10.0)
        killed_wall, killed = time.time(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        change = fib.wait_for(prefix, ["node2"], 10.0)
        wait_until(
            lambda: loop.stats().between(change.first_after, float("inf")).total >= 100,
            20.0,
            what="100 requests after the FIB change",
        )
        stats = loop.stop()
    lab.stop_http("node1")  # reaps the killed server; the next test's ensure starts it again

    seconds = change.seen - killed
    window = stats.between(killed_wall, change.first_after)
    after = stats.between(change.first_after, float("inf"))
    # Every failure is the kill's (node1 was healthy before): counted over the whole loop,
    # and over the requests started between the kill and the FIB change.
    print(
        f"PROCESS_FAILOVER exabgp={lab.exabgp_version} family={family} seconds={seconds:.3f}"
        f" failed={len(stats.errors)} of {stats.total} requests"
        f" ({len(window.errors)} of the {window.total} started between the kill and the FIB"
        " change)",
        flush=True,
    )
    assert [(c.before, c.after) for c in fib.changes()] == [(tuple(NODES), ("node2",))]
    assert after.errors == [] and set(after.per_node) == {"node2"}

    events = ctl.log_events(lab, "node1")
    seen = [e for e in events if e.get("event") == "check_event"]
    assert seen and seen[-1]["reason"] == f"pid {pid} exited", seen
    assert seen[-1]["action"] == "down at once"
    routes = [e for e in events if e.get("event") == "route" and e.get("to") == "WITHDRAWN"]
    assert routes and routes[-1].get("cause") == "event", routes
    written = [e for e in events if e.get("event") == "event_written"]
    assert written and float(written[-1]["delay"]) >= 0, written
    print(f"PROCESS_EVENT_WRITTEN delay={written[-1]['delay']}s", flush=True)
    wanted = ("check_event", "route", "event_written")
    for line in lab.exabgp_log("node1").splitlines()[-400:]:  # the story, for the README
        if line.startswith("ts=") and any(f" event={e} " in line for e in wanted):
            print(f"PROCESS_LOG {line}", flush=True)
    status = ctl.status(lab, "node1")
    if status is not None:  # the CLI may be absent from an old build; the log said it all
        event = status["services"][ctl.SERVICE]["last_event"]
        assert (event["down"], event["route"]) == (True, "ANNOUNCED -> WITHDRAWN")
        from announcer.client import render_status
        from announcer.protocol import DaemonStatus

        text = render_status(cast(DaemonStatus, status))
        notes = [ln for ln in text.splitlines() if "by an event" in ln]
        print(f"PROCESS_STATUS {notes}", flush=True)
