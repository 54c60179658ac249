"""The takeover plan (announcer.restore.plan): what a new controller believes at start.

Pure: a state file's snapshot, who we are and the clock readings in, the per-service
starting points and the prefixes to withdraw out.
"""

from __future__ import annotations

import pytest

from announcer import state as sm
from announcer.persist import ServiceRecord, Snapshot
from announcer.restore import Clocks, plan

WEB = ("192.0.2.10/32",)
DNS = ("192.0.2.53/32",)
POLICIES = {
    "web": sm.Policy(prefixes=WEB, drain_seconds=20),
    "dns": sm.Policy(prefixes=DNS, drain_seconds=20),
}
ME = "4242:123456"
BOOT = "boot-a"
CLOCKS = Clocks(now=50.0, boottime=1000.0, wall=1_700_000_000.0, boot_id=BOOT)
DRAIN = sm.RouteAttributes(med=1000, communities=("65535:0",))


def rec(route: sm.Route = sm.Route.ANNOUNCED, **kw: object) -> ServiceRecord:
    prefixes = kw.pop("prefixes", WEB)
    return ServiceRecord(route=route, prefixes=prefixes, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("readable", [True, False], ids=["no-file", "unreadable"])
def test_without_a_file_every_configured_prefix_may_be_on_the_wire(readable: bool) -> None:
    """No state file, or one that cannot be read: every configured service starts uncertain
    with all its prefixes possibly announced, so the first decision asserts them."""
    p = plan(None, readable=readable, identity=ME, policies=POLICIES, clocks=CLOCKS)
    assert p.wire == ("no_state_file" if readable else "state_unreadable")
    assert p.withdraw == ()
    assert p.services == {
        "web": sm.Restored(sm.Route.WITHDRAWN, WEB),
        "dns": sm.Restored(sm.Route.WITHDRAWN, DNS),
    }
    assert not any(r.certain for r in p.services.values())


@pytest.mark.parametrize(
    ("exabgp", "boot_id"),
    [("1:1", BOOT), (ME, "boot-b")],
    ids=["another-exabgp", "another-boot"],
)
def test_a_file_from_another_exabgp_means_an_empty_wire_and_kept_drains(
    exabgp: str, boot_id: str
) -> None:
    """Written under another ExaBGP (or before a reboot, even with the same pid and start
    time): nothing of ours is announced; only operator drains carry over, certain."""
    snap = Snapshot(
        exabgp=exabgp,
        boot_id=boot_id,
        services={"web": rec(operator_drain=True, drain_reason="disk"), "dns": rec()},
    )
    p = plan(snap, readable=True, identity=ME, policies=POLICIES, clocks=CLOCKS)
    assert p.wire == "new_exabgp"
    assert p.services == {
        "web": sm.Restored(sm.Route.WITHDRAWN, (), drained=True, drain_reason="disk", certain=True)
    }
    assert p.withdraw == ()


def test_a_file_from_this_exabgp_is_a_belief_to_assert() -> None:
    """Under the same ExaBGP the recorded routes are the starting belief, uncertain; a
    prefix recorded but no longer configured stays possible (to be withdrawn); services
    and in-flight prefixes nobody owns any more are withdrawn at once."""
    snap = Snapshot(
        exabgp=ME,
        boot_id=BOOT,
        services={
            "web": rec(prefixes=(*WEB, "192.0.2.11/32"), attributes=sm.RouteAttributes(med=100)),
            "old": rec(prefixes=("198.51.100.1/32", *DNS)),
        },
        inflight=("198.51.100.2/32", *WEB),
    )
    p = plan(snap, readable=True, identity=ME, policies=POLICIES, clocks=CLOCKS)
    assert p.wire == "same_exabgp"
    assert p.services["web"] == sm.Restored(
        sm.Route.ANNOUNCED, (*WEB, "192.0.2.11/32"), sm.RouteAttributes(med=100)
    )
    assert p.services["dns"] == sm.Restored(sm.Route.WITHDRAWN, DNS)
    assert p.withdraw == ("198.51.100.1/32", "198.51.100.2/32")


def test_a_file_of_an_older_version_without_a_boot_id_is_still_recognised() -> None:
    """Files written before the boot id was kept compare by ExaBGP identity alone, so an
    upgrade of the controller under a running ExaBGP is a takeover, not a fresh start."""
    snap = Snapshot(exabgp=ME, services={"web": rec()})
    p = plan(snap, readable=True, identity=ME, policies=POLICIES, clocks=CLOCKS)
    assert p.wire == "same_exabgp"
    assert p.services["web"].route is sm.Route.ANNOUNCED


@pytest.mark.parametrize(
    ("deadlines", "boot_id", "left"),
    [
        pytest.param({"drain_boottime": 1012.0}, BOOT, 12.0, id="boot-clock"),
        pytest.param(
            {"drain_boottime": 1012.0, "drain_deadline": CLOCKS.wall - 86400},
            BOOT,
            12.0,
            id="boot-clock-wins-over-a-wall-clock-a-day-behind",
        ),
        pytest.param({"drain_deadline": CLOCKS.wall + 86400}, "", 20.0, id="old-file-day-ahead"),
        pytest.param({"drain_deadline": CLOCKS.wall - 86400}, "", 0.0, id="old-file-day-behind"),
        pytest.param({"drain_boottime": 5000.0}, BOOT, 20.0, id="never-beyond-drain-seconds"),
        pytest.param({}, BOOT, 20.0, id="no-deadline-recorded"),
    ],
)
def test_a_restored_drain_deadline_is_bounded_and_immune_to_wall_clock_steps(
    deadlines: dict[str, float], boot_id: str, left: float
) -> None:
    """A drain in progress resumes with the time it had left on the boot-time clock, at most
    drain_seconds; a file with only a wall-clock deadline is bounded the same way."""
    record = rec(
        sm.Route.DRAINING, attributes=DRAIN, operator_drain=True, drain_reason="r", **deadlines
    )
    snap = Snapshot(exabgp=ME, boot_id=boot_id, services={"web": record})
    p = plan(snap, readable=True, identity=ME, policies=POLICIES, clocks=CLOCKS)
    restored = p.services["web"]
    assert restored.drained and restored.route is sm.Route.DRAINING
    assert restored.drain_deadline == pytest.approx(CLOCKS.now + left)
