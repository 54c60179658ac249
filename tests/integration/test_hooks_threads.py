"""Hooks with the daemon on its own threads and a fake ExaBGP at the pipe (the fixtures of
test_daemon_threads.py): a fast hook sees every route change of a failure, recovery and
drain story, in order; a hook that hangs delays no route change and is killed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_daemon_threads import (
    ANN,
    WD,
    WD_DRAINED,
    Running,
    file_service,
    start,
    write_config,
)

__all__ = ["start"]  # the fixture, used by name

LOWER = "announce route 192.0.2.10/32 next-hop self med 1000 community [ 65535:0 ]"


def wait_for(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_fast_hook_records_every_route_change_in_order(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """Up, failure, recovery, drain and the drain's end each run the hook once, in order,
    with the events they match, and every command reaches ExaBGP."""
    flag, record = tmp_path / "ok", tmp_path / "hooks"
    hook = (
        "[service.hooks]\non_change = "
        f'["/bin/sh", "-c", \'echo "$ANNOUNCER_EVENT|$ANNOUNCER_ROUTE_BEFORE|$ANNOUNCER_ROUTE" '
        f">> {record}']\n"
    )
    # Healthy from the first round: a round that ran before the flag existed would take
    # the service DOWN first, and a start DOWN withdraws (a stale route may be there).
    flag.touch()
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag, hook)))

    def recorded(n: int) -> Callable[[], bool]:
        return lambda: record.exists() and len(record.read_text().splitlines()) >= n

    wait_for(recorded(1), "the up hook")
    flag.unlink()
    wait_for(recorded(2), "the down hook")
    flag.touch()
    wait_for(recorded(3), "the second up hook")
    (tmp_path / "maintenance").touch()  # drained: lowered, withdrawn after 0.5 s
    wait_for(recorded(5), "the drain and withdraw hooks")
    assert record.read_text().splitlines() == [
        "up change|WITHDRAWN|ANNOUNCED",
        "down withdraw change|ANNOUNCED|WITHDRAWN",
        "up change|WITHDRAWN|ANNOUNCED",
        "drain change|ANNOUNCED|DRAINING",
        "withdraw change|DRAINING|WITHDRAWN",
    ]
    assert r.exa.commands() == [ANN, WD, ANN, LOWER, WD_DRAINED]
    assert r.stop() == 0


def test_a_hanging_hook_delays_no_route_change(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    """While the hook of the announce hangs (until the test lets it end), the withdraw and
    the next announce still go out; the changes it held back then run once, as one
    coalesced run. (Killing a hook at its timeout: tests/unit/test_hooks.py.)"""
    flag, started, release = tmp_path / "ok", tmp_path / "started", tmp_path / "release"
    hook = (
        '[service.hooks]\non_change = ["/bin/sh", "-c", '
        f'"echo $ANNOUNCER_COALESCED >> {started}; '
        f'while [ ! -e {release} ]; do sleep 0.05; done"]\ntimeout = 600\n'
    )
    flag.touch()  # healthy from the first round (see above)
    r = start(write_config(tmp_path, file_service("web", "192.0.2.10/32", flag, hook)))
    wait_for(started.exists, "the hook to start")
    flag.unlink()
    r.exa.wait_for(lambda c: WD in c)
    flag.touch()
    r.exa.wait_for(lambda c: c.count(ANN) == 2)
    assert started.read_text().splitlines() == ["1"]  # the first run still hangs
    release.touch()
    wait_for(lambda: len(started.read_text().splitlines()) == 2, "the coalesced run")
    assert started.read_text().splitlines() == ["1", "2"]
    wait_for(lambda: r.log.getvalue().count("event=hook ") == 2, "both runs logged")
    assert r.stop() == 0
