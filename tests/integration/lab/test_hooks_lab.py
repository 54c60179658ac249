"""Hooks in the namespace lab: the real controller on node1 with a hook, BIRD watching.

A fast hook records every route change of the failure, recovery and drain story, in
order, while the router sees each of them; a hook that never ends holds up nothing:
node1's withdraw reaches the router while it still runs. Hooks act after the wire and
do not depend on ExaBGP's version: the module runs on 5.0 only.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import NODES, PREFIX_V4, PREFIX_V6, Lab, wait_until
from tests.lab import controller as ctl

pytestmark = pytest.mark.lab


def hooked(hook: list[str]) -> dict[str, Any]:
    """The scenario config with ``hook`` as the service's on_change hook."""
    config = ctl.scenario_config()
    config["service"][0]["hooks"] = {"on_change": hook, "timeout": 3600.0}
    return config


@pytest.fixture(scope="module")
def lab(lab_requirements: None, exabgp_version: str) -> Iterator[Lab]:
    if exabgp_version != "5.0":
        pytest.skip("hooks run after the wire, whatever ExaBGP's version: 5.0 only")
    lab = Lab(exabgp_version)
    try:
        lab.start({node: ctl.controller_argv(lab, node) for node in NODES})
        yield lab
    finally:
        lab.stop()
        assert lab.leftovers() == [], f"lab {lab.id} left things behind"


def run_node1_with(lab: Lab, config: dict[str, Any], name: str) -> None:
    """node1's controller on ``config``, node2's on the baseline; both announcing."""
    lab.ensure(
        {
            "node1": ctl.controller_argv(lab, "node1", config, name=name),
            "node2": ctl.controller_argv(lab, "node2"),
        }
    )
    for prefix in (PREFIX_V4, PREFIX_V6):
        lab.wait_path_nodes(prefix, list(NODES), 15.0)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_fast_hook_records_the_story_in_order(lab: Lab) -> None:
    """Failure, recovery, drain and the drain's end: the hook sees each route change
    once, in order, with its events, as the router sees node1's path go and come back."""
    record = lab.node_dir("node1") / "hooks.log"
    record.unlink(missing_ok=True)
    echo = f'echo "$ANNOUNCER_EVENT|$ANNOUNCER_ROUTE_BEFORE|$ANNOUNCER_ROUTE" >> {record}'
    run_node1_with(lab, hooked(["/bin/sh", "-c", echo]), "fast-hook")
    wait_until(lambda: lines(record), 10.0, what="the hook of the first announce")
    start = len(lines(record))

    lab.stop_http("node1")
    lab.wait_path_nodes(PREFIX_V4, ["node2"], 10.0)
    wait_until(lambda: len(lines(record)) > start, 10.0, what="the withdraw's hook")
    lab.start_http("node1")
    lab.wait_path_nodes(PREFIX_V4, list(NODES), 10.0)
    wait_until(lambda: len(lines(record)) > start + 1, 10.0, what="the announce's hook")
    ctl.drain(lab, "node1", "hook story")
    lab.wait_path_nodes(PREFIX_V4, ["node2"], 15.0)  # lowered, then withdrawn
    wait_until(lambda: len(lines(record)) >= start + 4, 10.0, what="the drain's hooks")
    story = lines(record)[start:]
    ctl.undrain(lab, "node1")

    assert story == [
        "down withdraw change|ANNOUNCED|WITHDRAWN",
        "up change|WITHDRAWN|ANNOUNCED",
        "drain change|ANNOUNCED|DRAINING",
        "withdraw change|DRAINING|WITHDRAWN",
    ]


def test_a_hook_that_never_ends_holds_up_no_withdraw(lab: Lab) -> None:
    """The announce's hook sleeps for good; node1's web server stops: the withdraw still
    reaches the router (node1's path leaves BIRD) while that hook runs."""
    pidfile = lab.node_dir("node1") / "hook.pid"
    pidfile.unlink(missing_ok=True)
    run_node1_with(lab, hooked(["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 3600"]), "hang")
    wait_until(lambda: lines(pidfile), 10.0, what="the announce's hook to start")
    pid = int(lines(pidfile)[0])
    try:
        lab.stop_http("node1")
        for prefix in (PREFIX_V4, PREFIX_V6):
            lab.wait_path_nodes(prefix, ["node2"], 10.0)
        os.kill(pid, 0)  # still running: raises ProcessLookupError if not
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        lab.start_http("node1")
