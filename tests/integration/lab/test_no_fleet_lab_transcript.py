"""Lab scenario (e) of the fleet guard (issue 13), on ExaBGP 5.0 and 4.2: without a
``[fleet]`` the real controller sends real ExaBGP, byte for byte, what the code sent
before the fleet guard existed.

The committed transcript (no_fleet_lab_transcript.txt) was made by this very story
(tests/lab/wire_story.py) run against a worktree of commit 9f3cfa6, the parent of the
first commit touching announcer/fleet (9f3cfa6 itself only adds dependencies; its own
parent 9ab217a made the loop-level transcript of tests/unit/test_no_fleet_transcript.py):

    git worktree add --detach ../prefleet 9f3cfa6
    .venv/bin/python -m tests.lab.wire_story --code ../prefleet --exabgp 5.0 \
        --out tests/integration/lab/no_fleet_lab_transcript.txt

It came out identical on ExaBGP 5.0.15 and 4.2.25, so one transcript serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.lab import REPO_ROOT, Lab
from tests.lab.wire_story import story

TRANSCRIPT = Path(__file__).with_name("no_fleet_lab_transcript.txt")


def test_without_a_fleet_the_wire_matches_the_pre_fleet_transcript(
    make_lab: Callable[[], Lab],
) -> None:
    """Start and rise, check failing, recovering, drain (lowered, then withdrawn),
    undrain, SIGTERM: the bytes the controller wrote to ExaBGP equal the transcript."""
    lab = make_lab()
    lab.start()
    assert story(lab, REPO_ROOT) == TRANSCRIPT.read_text()
