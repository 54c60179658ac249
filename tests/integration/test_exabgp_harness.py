"""End-to-end checks of the ExaBGP pair harness, against both supported ExaBGP versions.

Each test runs a real speaker ExaBGP whose API process is a small script written into
the test's tmp dir, peered on loopback with a receiver ExaBGP that logs what it got.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from exabgp_harness import (
    ExaBGPPair,
    PairOptions,
    RouteEvent,
    exabgp_binary,
    exabgp_version,
    is_running,
    proc_info,
)

pytestmark = pytest.mark.e2e

PREFIX = "192.0.2.1/32"

# The speaker's API process: announce at start, withdraw once the file "withdraw"
# appears. It always drains stdin (ExaBGP blocks when that pipe is full) into a log.
SPEAKER_SCRIPT = textwrap.dedent(
    """\
    import os, signal, sys, threading, time
    from pathlib import Path

    workdir = Path(sys.argv[1])
    if os.environ.get("IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def drain():
        with open(workdir / "api-stdin.log", "a", buffering=1) as log:
            for line in sys.stdin:
                log.write(line)
        if not os.environ.get("IGNORE_SIGTERM"):
            os._exit(0)

    threading.Thread(target=drain, daemon=True).start()

    def send(command):
        sys.stdout.write(command + "\\n")
        sys.stdout.flush()

    send("announce route {prefix} next-hop self {attributes}")
    while not (workdir / "withdraw").exists():
        time.sleep(0.01)
    send("withdraw route {prefix} next-hop self {attributes}")
    while True:
        time.sleep(1)
    """
)


@pytest.fixture(params=["5", "4.2"], ids=lambda major: f"exabgp{major}")
def exabgp(request: pytest.FixtureRequest) -> Path:
    """The ExaBGP binary of each supported major version (skip if not installed)."""
    binary = exabgp_binary(str(request.param))
    if binary is None:
        pytest.skip(f"ExaBGP {request.param} not installed: run scripts/bootstrap.sh")
    return binary


@pytest.fixture
def speaker_argv(tmp_path: Path) -> Iterator[list[str]]:
    """argv of the speaker's API process, announcing PREFIX with MED 100."""
    script = tmp_path / "speaker_process.py"
    script.write_text(SPEAKER_SCRIPT.format(prefix=PREFIX, attributes="med 100"))
    yield [sys.executable, str(script), str(tmp_path)]


def _announced(events: list[RouteEvent]) -> list[RouteEvent]:
    return [e for e in events if e.prefix == PREFIX and e.action == "announce"]


def _withdrawn(events: list[RouteEvent]) -> list[RouteEvent]:
    return [e for e in events if e.prefix == PREFIX and e.action == "withdraw"]


def test_announce_with_med_then_withdraw_reach_the_receiver(
    exabgp: Path, speaker_argv: list[str], tmp_path: Path
) -> None:
    """The API process's announce arrives with MED 100 and next-hop self, and its
    later withdraw removes the prefix; ExaBGP answers each command with ``done``."""
    with ExaBGPPair(exabgp, speaker_argv, tmp_path / "pair") as pair:
        announce = pair.wait_for(_announced)[0]
        assert announce.med == 100
        assert announce.next_hop == pair.sessions[0].speaker
        assert announce.family == "ipv4 unicast"
        assert PREFIX in pair.routes()

        (tmp_path / "withdraw").touch()
        withdraw = pair.wait_for(_withdrawn)[0]
        assert withdraw.received_at >= announce.received_at
        assert pair.routes() == {}

    acks = (tmp_path / "api-stdin.log").read_text().split()
    assert acks.count("done") == 2
    assert "error" not in acks


def test_attributes_are_normalised_across_versions(exabgp: Path, tmp_path: Path) -> None:
    """as-path, communities and MED come out of ``received()`` in one shape for 4.2 and
    5.0; local-preference is not sent on eBGP, so it is absent."""
    script = tmp_path / "speaker_process.py"
    attributes = (
        "med 7 local-preference 50 as-path [ 65001 65001 ] community [ 65535:0 ] "
        "large-community [ 65001:0:1 ]"
    )
    script.write_text(SPEAKER_SCRIPT.format(prefix=PREFIX, attributes=attributes))
    with ExaBGPPair(exabgp, [sys.executable, str(script), str(tmp_path)], tmp_path / "p") as pair:
        announce = pair.wait_for(_announced)[0]
    assert dict(announce.attributes) == {
        "origin": "igp",
        "as-path": [65001, 65001],
        "med": 7,
        "community": ["65535:0"],
        "large-community": ["65001:0:1"],
        "next-hop": "127.0.0.2",
    }


def test_exposes_pids_and_version(exabgp: Path, speaker_argv: list[str], tmp_path: Path) -> None:
    """The speaker's API process is its only child, in its own process group but in
    the speaker's session; after stop() none of the pair's processes runs."""
    with ExaBGPPair(exabgp, speaker_argv, tmp_path / "pair") as pair:
        api_pid = pair.wait_api_pid()
        assert pair.api_pids() == [api_pid]
        info = proc_info(api_pid)
        assert info is not None
        assert info.ppid == pair.speaker_pid
        assert info.pgid == api_pid
        assert info.sid == pair.speaker_pid
        pids = [pair.speaker_pid, pair.receiver_pid, api_pid]
    assert not [pid for pid in pids if is_running(pid)]
    assert exabgp_version(exabgp).split(".")[0] in ("4", "5")


def test_teardown_kills_everything_when_the_test_fails(
    exabgp: Path, speaker_argv: list[str], tmp_path: Path
) -> None:
    """An exception in the body still stops the pair, even with an API process that
    ignores SIGTERM (ExaBGP 4.2 then waits for it forever: the harness SIGKILLs)."""
    options = PairOptions(speaker_env={"IGNORE_SIGTERM": "1"}, stop_timeout=3.0)
    pids: list[int] = []
    with (
        pytest.raises(RuntimeError, match="test body failed"),
        ExaBGPPair(exabgp, speaker_argv, tmp_path / "pair", options) as pair,
    ):
        pids += [pair.speaker_pid, pair.receiver_pid, pair.wait_api_pid()]
        raise RuntimeError("test body failed")
    assert len(pids) == 3
    assert not [pid for pid in pids if is_running(pid)]


def test_routes_forget_a_peer_whose_session_went_down(
    exabgp: Path, speaker_argv: list[str], tmp_path: Path
) -> None:
    """Killing the speaker drops the session; the receiver logs no withdraws, but
    ``routes()`` no longer lists what that peer announced."""
    with ExaBGPPair(exabgp, speaker_argv, tmp_path / "pair") as pair:
        pair.wait_for(_announced)
        os.kill(pair.speaker_pid, signal.SIGKILL)
        pair.wait_for(lambda _: pair.session_state() == "down")
        assert pair.routes() == {}
        assert not _withdrawn(pair.received())
