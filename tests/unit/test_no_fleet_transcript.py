"""Without a [fleet] the wire is what it was: the story of tests/unit/transcript.py
sends exactly the committed transcript (made by the code before the fleet guard)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.transcript import TRANSCRIPT, story


def test_without_a_fleet_the_commands_match_the_transcript_byte_for_byte(
    tmp_path: Path,
) -> None:
    """Rise, failure, drain, lowered failure, maintenance file, reload and stop send
    the very bytes the pre-fleet code sent."""
    sent = "".join(line + "\n" for line in story(tmp_path))
    assert sent == TRANSCRIPT.read_text()
