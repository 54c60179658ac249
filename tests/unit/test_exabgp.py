"""ExaBGP's text API: command rendering and validation, parsing what ExaBGP says,
and the writer that sends commands and matches done/error acks to them."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from announcer.errors import CommandError
from announcer.exabgp import (
    ACK_TIMEOUT,
    NUDGE_AFTER,
    Expired,
    Message,
    MessageKind,
    Nudged,
    Rejected,
    Target,
    Writer,
    parse_line,
    render_announce,
    render_attributes,
    render_effect,
    render_selector,
    render_withdraw,
)
from announcer.state import Announce, Route, RouteAttributes, Withdraw

V4 = "192.0.2.10/32"
V6 = "2001:db8::10/128"
SELF = Target()


def announce(attrs: RouteAttributes, target: Target = SELF, prefix: str = V4) -> str:
    [line] = render_announce([prefix], attrs, target)
    return line


# ---------------------------------------------------------------- attributes


def test_no_attributes_gives_next_hop_only() -> None:
    """With no attribute set, only the next-hop follows the prefix."""
    assert announce(RouteAttributes()) == f"announce route {V4} next-hop self"


def test_med() -> None:
    """med renders as `med N`."""
    assert announce(RouteAttributes(med=100)) == f"announce route {V4} next-hop self med 100"


def test_med_zero_is_sent() -> None:
    """med 0 is a value, not "unset": it is sent."""
    assert announce(RouteAttributes(med=0)).endswith(" med 0")


def test_local_preference() -> None:
    """local_preference renders as `local-preference N`."""
    line = announce(RouteAttributes(local_preference=200))
    assert line == f"announce route {V4} next-hop self local-preference 200"


@pytest.mark.parametrize(("prepend", "path"), [(1, "65001 65001"), (3, "65001 65001 65001 65001")])
def test_as_path_prepend_repeats_local_as_prepend_plus_one_times(prepend: int, path: str) -> None:
    """as_path_prepend N sends an AS path of the local AS N+1 times (ExaBGP sends the
    given path as written, so our own AS must be in it once)."""
    line = announce(RouteAttributes(as_path_prepend=prepend), Target(local_as=65001))
    assert line == f"announce route {V4} next-hop self as-path [ {path} ]"
    assert line.count("65001") == prepend + 1


def test_communities() -> None:
    """communities render as one bracketed, space-separated list in the given order."""
    line = announce(RouteAttributes(communities=("65535:0", "65001:100")))
    assert line == f"announce route {V4} next-hop self community [ 65535:0 65001:100 ]"


def test_large_communities() -> None:
    """large_communities render as one bracketed list after `large-community`."""
    line = announce(RouteAttributes(large_communities=("65001:0:1", "4294967295:2:3")))
    assert line == (
        f"announce route {V4} next-hop self large-community [ 65001:0:1 4294967295:2:3 ]"
    )


def test_all_attributes_in_documented_order() -> None:
    """All attributes together come in order: next-hop, med, local-preference, as-path,
    community, large-community."""
    attrs = RouteAttributes(
        med=1000,
        local_preference=50,
        as_path_prepend=2,
        communities=("65535:0",),
        large_communities=("65001:0:1",),
    )
    assert render_attributes(attrs, Target(local_as=64512)) == (
        "next-hop self med 1000 local-preference 50 as-path [ 64512 64512 64512 ] "
        "community [ 65535:0 ] large-community [ 65001:0:1 ]"
    )


# ---------------------------------------------------------------- prefixes, next-hop, selectors


def test_v4_and_v6_prefixes_one_command_each() -> None:
    """Every prefix gets its own command; v6 prefixes are written in canonical form."""
    lines = render_announce([V4, "2001:DB8:0::10/128"], RouteAttributes(med=5), SELF)
    assert lines == [
        f"announce route {V4} next-hop self med 5",
        f"announce route {V6} next-hop self med 5",
    ]


def test_explicit_next_hop_is_normalised() -> None:
    """An explicit next-hop is written as a canonical address, v4 or v6."""
    assert announce(RouteAttributes(), Target(next_hop="198.51.100.1")) == (
        f"announce route {V4} next-hop 198.51.100.1"
    )
    assert announce(RouteAttributes(), Target(next_hop="2001:DB8:0::1"), V6) == (
        f"announce route {V6} next-hop 2001:db8::1"
    )


def test_selector_none_means_no_prefix() -> None:
    """No neighbours means every neighbour: the command has no selector."""
    assert render_selector([]) == ""
    assert announce(RouteAttributes()).startswith("announce route ")


def test_selector_one_neighbour() -> None:
    """One neighbour prefixes the command with `neighbor IP `."""
    target = Target(neighbors=("192.0.2.1",))
    assert announce(RouteAttributes(), target) == (
        f"neighbor 192.0.2.1 announce route {V4} next-hop self"
    )


def test_selector_several_neighbours_joined_with_spaced_comma() -> None:
    """Several neighbours are joined by " , " (ExaBGP needs the spaces); v6 is normalised."""
    target = Target(neighbors=("192.0.2.1", "2001:DB8::1", "192.0.2.2"))
    assert render_selector(target.neighbors) == (
        "neighbor 192.0.2.1 , neighbor 2001:db8::1 , neighbor 192.0.2.2"
    )
    assert render_withdraw([V4], target) == [
        "neighbor 192.0.2.1 , neighbor 2001:db8::1 , neighbor 192.0.2.2 "
        f"withdraw route {V4} next-hop self"
    ]


def test_withdraw_lines() -> None:
    """A withdraw is one `withdraw route P next-hop NH` per prefix, without attributes."""
    assert render_withdraw([V4, V6], Target(next_hop="192.0.2.254")) == [
        f"withdraw route {V4} next-hop 192.0.2.254",
        f"withdraw route {V6} next-hop 192.0.2.254",
    ]


def test_render_effect_dispatches_on_effect_type() -> None:
    """render_effect renders an Announce with its attributes and a Withdraw as withdraws."""
    effect = Announce((V4,), RouteAttributes(med=7), Route.ANNOUNCED)
    assert render_effect(effect, SELF) == [f"announce route {V4} next-hop self med 7"]
    assert render_effect(Withdraw((V4,)), SELF) == [f"withdraw route {V4} next-hop self"]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("192.0.2.300/32", "bad prefix"),
        ("not-a-prefix", "bad prefix"),
        ("192.0.2.10/24", "has host bits set"),
        ("2001:db8::1/64", "has host bits set"),
        (f"{V4} ", "bad prefix"),
    ],
)
def test_bad_prefix_raises(prefix: str, why: str) -> None:
    """A malformed prefix, or one with host bits set, is refused for announce and withdraw."""
    with pytest.raises(CommandError, match=why):
        render_announce([prefix], RouteAttributes(), SELF)
    with pytest.raises(CommandError, match=why):
        render_withdraw([prefix], SELF)


@pytest.mark.parametrize("next_hop", ["me", "192.0.2.256", "", "192.0.2.1/32"])
def test_bad_next_hop_raises(next_hop: str) -> None:
    """A next-hop that is neither 'self' nor an address is refused."""
    with pytest.raises(CommandError, match="bad next-hop"):
        render_announce([V4], RouteAttributes(), Target(next_hop=next_hop))
    with pytest.raises(CommandError, match="bad next-hop"):
        render_withdraw([V4], Target(next_hop=next_hop))


@pytest.mark.parametrize("neighbor", ["router1", "*", "192.0.2.1 , neighbor 192.0.2.2"])
def test_bad_neighbour_raises(neighbor: str) -> None:
    """A neighbour that is not a single IP address is refused (no selector injection)."""
    with pytest.raises(CommandError, match="is not an IP address"):
        render_announce([V4], RouteAttributes(), Target(neighbors=("192.0.2.1", neighbor)))


@pytest.mark.parametrize(
    "community",
    ["65536:0", "0:65536", "1:2:3", "abc", "1:", "\uff16\uff15\uff15\uff13\uff15:0", "65535:0\n"],
)
def test_bad_community_raises(community: str) -> None:
    """A community that is not two ASCII numbers 0-65535 is refused (fullwidth digits
    and a trailing newline included)."""
    with pytest.raises(CommandError, match="bad community"):
        announce(RouteAttributes(communities=("65535:0", community)))


@pytest.mark.parametrize("large", ["4294967296:0:0", "1:2", "1:2:3:4", "a:b:c", "1:2:3\n"])
def test_bad_large_community_raises(large: str) -> None:
    """A large community that is not three ASCII numbers 0-4294967295 is refused."""
    with pytest.raises(CommandError, match="bad large community"):
        announce(RouteAttributes(large_communities=(large,)))


def test_prepend_without_local_as_raises() -> None:
    """as-path prepend without a local AS cannot be rendered."""
    with pytest.raises(CommandError, match="needs the local AS"):
        announce(RouteAttributes(as_path_prepend=1))


@pytest.mark.parametrize(
    ("attrs", "target", "why"),
    [
        (RouteAttributes(as_path_prepend=17), Target(local_as=65001), "prepend 17 out of range"),
        (RouteAttributes(as_path_prepend=-1), Target(local_as=65001), "prepend -1 out of range"),
        (RouteAttributes(as_path_prepend=1), Target(local_as=0), "local AS 0 out of range"),
        (RouteAttributes(med=-1), SELF, "med -1 out of range"),
        (RouteAttributes(med=2**32), SELF, "out of range"),
        (RouteAttributes(local_preference=2**32), SELF, "local-preference .* out of range"),
    ],
)
def test_numbers_out_of_range_raise(attrs: RouteAttributes, target: Target, why: str) -> None:
    """med, local-preference, the prepend count and the local AS must be in range."""
    with pytest.raises(CommandError, match=why):
        announce(attrs, target)


@pytest.mark.parametrize("command", ["announce route 192.0.2.1/32\nshutdown", "a\rb", "done\n"])
def test_writer_refuses_line_breaks_and_writes_nothing(command: str) -> None:
    """A command with a line break is refused before anything of the batch is written."""
    out = io.BytesIO()
    writer = Writer(out)
    with pytest.raises(CommandError, match="line break"):
        writer.send(["withdraw route 192.0.2.1/32 next-hop self", command])
    assert out.getvalue() == b""
    assert (writer.sent, writer.pending) == (0, 0)


# ---------------------------------------------------------------- parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("done\n", Message(MessageKind.DONE, "done")),
        ("  error \n", Message(MessageKind.ERROR, "error")),
        (
            "neighbor 192.0.2.1 up\n",
            Message(MessageKind.NEIGHBOR, "neighbor 192.0.2.1 up", "192.0.2.1", "up"),
        ),
        (
            "neighbor 2001:db8::1 connected",
            Message(
                MessageKind.NEIGHBOR, "neighbor 2001:db8::1 connected", "2001:db8::1", "connected"
            ),
        ),
        (
            "neighbor 192.0.2.1 down - peer reset\n",
            Message(
                MessageKind.NEIGHBOR, "neighbor 192.0.2.1 down - peer reset", "192.0.2.1", "down"
            ),
        ),
        (
            "neighbor 192.0.2.1 down - \n",
            Message(MessageKind.NEIGHBOR, "neighbor 192.0.2.1 down -", "192.0.2.1", "down"),
        ),
        ("shutdown\n", Message(MessageKind.SHUTDOWN, "shutdown")),
        ("shutdown 1234 1\n", Message(MessageKind.SHUTDOWN, "shutdown 1234 1")),
        (
            "neighbor 192.0.2.1 receive update start",
            Message(MessageKind.OTHER, "neighbor 192.0.2.1 receive update start"),
        ),
        ("neighbor 192.0.2.1", Message(MessageKind.OTHER, "neighbor 192.0.2.1")),
        ("don\u0435", Message(MessageKind.OTHER, "don\u0435")),  # Cyrillic e: not an ack
        ("done done", Message(MessageKind.OTHER, "done done")),
        ("shutdownnow", Message(MessageKind.OTHER, "shutdownnow")),
        ("", Message(MessageKind.OTHER, "")),
    ],
)
def test_parse_line(line: str, expected: Message) -> None:
    """Lines are classified exactly: acks, session changes (status is the third word,
    even when `down` carries a reason), shutdown, and everything else as OTHER."""
    assert parse_line(line) == expected


# ---------------------------------------------------------------- the writer


def test_writer_writes_one_line_per_command_and_counts() -> None:
    """send writes each command on its own line, in order, and counts them as sent."""
    out = io.BytesIO()
    writer = Writer(out)
    writer.send(["withdraw route 192.0.2.1/32 next-hop self", "announce route 192.0.2.2/32"])
    writer.send([])
    assert out.getvalue() == (
        b"withdraw route 192.0.2.1/32 next-hop self\nannounce route 192.0.2.2/32\n"
    )
    assert (writer.sent, writer.pending) == (2, 2)


@pytest.fixture
def pipe() -> Iterator[tuple[int, io.BufferedWriter]]:
    """A pipe with a buffered writing end and a non-blocking reading fd."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    out = os.fdopen(w, "wb", buffering=65536)
    try:
        yield r, out
    finally:
        out.close()
        os.close(r)


def test_writer_flushes_every_send(pipe: tuple[int, io.BufferedWriter]) -> None:
    """Each send is flushed: ExaBGP sees the commands at once, not when a buffer fills."""
    r, out = pipe
    writer = Writer(out)
    writer.send(["announce route 192.0.2.1/32 next-hop self"])
    assert os.read(r, 4096) == b"announce route 192.0.2.1/32 next-hop self\n"
    writer.send(["a", "b"])
    assert os.read(r, 4096) == b"a\nb\n"


def test_writer_matches_acks_in_order() -> None:
    """done/error are matched to the oldest unanswered command; an error calls
    on_rejected with that command and its context, counts it and sets last_error."""
    rejected: list[Rejected] = []
    writer = Writer(io.BytesIO(), on_rejected=rejected.append)
    writer.send(["c1", "c2"], context="web announce")
    writer.send(["c3"], context="api withdraw")
    assert writer.pending == 3

    assert writer.receive("done\n").kind is MessageKind.DONE
    assert writer.receive("error\n").kind is MessageKind.ERROR
    assert rejected == [Rejected("c2", "web announce")]
    assert writer.last_error == Rejected("c2", "web announce")
    assert writer.pending == 1

    writer.receive("error")
    assert rejected == [Rejected("c2", "web announce"), Rejected("c3", "api withdraw")]
    assert writer.last_error == Rejected("c3", "api withdraw")
    assert (writer.done, writer.errors, writer.pending, writer.unexpected_acks) == (1, 2, 0, 0)


def test_writer_counts_unexpected_acks() -> None:
    """An ack with nothing pending is counted as unexpected and does not touch the
    done/error counts or call on_rejected."""
    rejected: list[Rejected] = []
    writer = Writer(io.BytesIO(), on_rejected=rejected.append)
    writer.receive("done")
    writer.receive("error")
    assert writer.unexpected_acks == 2
    assert (writer.done, writer.errors, writer.last_error, rejected) == (0, 0, None, [])
    writer.send(["c1"])
    writer.receive("done")
    writer.receive("done")
    assert (writer.done, writer.unexpected_acks, writer.pending) == (1, 3, 0)


def test_writer_without_acks_keeps_nothing_pending() -> None:
    """With acks=False commands are written but nothing waits for an answer."""
    out = io.BytesIO()
    writer = Writer(out, acks=False)
    writer.send(["c1", "c2"], context="web")
    assert out.getvalue() == b"c1\nc2\n"
    assert (writer.sent, writer.pending) == (2, 0)
    writer.receive("done")
    assert (writer.done, writer.unexpected_acks) == (0, 1)


def test_writer_passes_other_lines_through_without_touching_acks() -> None:
    """Neighbour, shutdown and other lines are returned classified and match no command."""
    writer = Writer(io.BytesIO())
    writer.send(["c1"])
    assert writer.receive("neighbor 192.0.2.1 up").status == "up"
    assert writer.receive("shutdown").kind is MessageKind.SHUTDOWN
    assert writer.receive("something else").kind is MessageKind.OTHER
    assert (writer.pending, writer.done, writer.errors, writer.unexpected_acks) == (1, 0, 0, 0)


def test_writer_error_without_callback_still_counts() -> None:
    """Without on_rejected an error ack is still counted and remembered."""
    writer = Writer(io.BytesIO())
    writer.send(["c1"], context="ctx")
    writer.receive("error")
    assert (writer.errors, writer.last_error) == (1, Rejected("c1", "ctx"))


def test_writer_propagates_a_closed_pipe() -> None:
    """When ExaBGP is gone the write raises OSError (the daemon decides what to do)."""
    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "wb")
    writer = Writer(out)
    try:
        with pytest.raises(OSError):
            writer.send(["c1"])
    finally:
        with contextlib.suppress(OSError):
            out.close()


# ---------------------------------------------------------------- batches, families, expiry


def test_many_prefixes_go_in_attribute_batches_one_family_per_line() -> None:
    """Several prefixes of a family become `announce attributes ... nlri ...` lines of at most
    BATCH prefixes; IPv4 and IPv6 never share a line."""
    from announcer import exabgp

    v4 = [f"10.1.{i // 256}.{i % 256}/32" for i in range(exabgp.BATCH + 5)]
    v6 = ["2001:db8::1/128", "2001:db8::2/128"]
    lines = render_announce(v6 + v4, RouteAttributes(med=100), SELF)
    assert len(lines) == 3
    first, second, third = lines
    assert first.startswith("announce attributes next-hop self med 100 nlri 10.1.0.0/32 ")
    assert len(first.split(" nlri ")[1].split()) == exabgp.BATCH
    assert second.split(" nlri ")[1].split() == v4[exabgp.BATCH :]
    assert third == (
        "announce attributes next-hop self med 100 nlri 2001:db8::1/128 2001:db8::2/128"
    )


def test_withdraw_repeats_the_announced_attributes() -> None:
    """Given the attributes a prefix was announced with, the withdraw carries the same words;
    a batched withdraw always names a next-hop (ExaBGP 4.2 ignores one without)."""
    attrs = RouteAttributes(med=1000, communities=("65535:0",))
    assert render_withdraw([V4], SELF, attrs) == [
        f"withdraw route {V4} next-hop self med 1000 community [ 65535:0 ]"
    ]
    assert render_withdraw([V4, "192.0.2.11/32"], SELF) == [
        f"withdraw attributes next-hop self nlri {V4} 192.0.2.11/32"
    ]
    effect = Withdraw((V4,), attrs)
    assert render_effect(effect, SELF) == render_withdraw([V4], SELF, attrs)


def test_ipv6_prefixes_use_next_hop6_when_set() -> None:
    """next_hop6 applies to IPv6 prefixes only; IPv4 keeps next_hop."""
    target = Target(next_hop="self", next_hop6="2001:db8:1::2")
    assert render_announce([V4, V6], RouteAttributes(), target) == [
        f"announce route {V4} next-hop self",
        f"announce route {V6} next-hop 2001:db8:1::2",
    ]


def test_unanswered_commands_expire_so_later_acks_match_the_right_command() -> None:
    """A command ExaBGP never answers is given up after the timeout and counted as an error;
    the next ack then belongs to the next command."""
    now = [100.0]
    rejected: list[Rejected] = []
    w = Writer(io.BytesIO(), on_rejected=rejected.append, clock=lambda: now[0])
    w.send(["announce route 2001:db8::1/128 next-hop self"], context="v6")
    now[0] = 105.0
    w.send(["announce route 192.0.2.1/32 next-hop self"], context="v4")
    assert w.expire(10.0) == []
    now[0] = 111.0
    gone = w.expire(10.0)
    assert gone == [Rejected("announce route 2001:db8::1/128 next-hop self", "v6")]
    assert (w.unanswered, w.errors, w.pending) == (1, 1, 1)
    w.receive("done")
    assert (w.done, w.pending, rejected) == (1, 0, [])
    assert w.oldest_pending is None


def test_nudge_writes_the_last_unanswered_command_again_once_per_silence() -> None:
    """nudge() repeats the newest unanswered command (the one safe to repeat) and expects
    its answer too; it is due again only after ExaBGP answers or we write something new."""
    now = [100.0]
    out = io.BytesIO()
    w = Writer(out, clock=lambda: now[0])
    assert w.nudge() is None and not w.nudge_due
    w.send(["announce route 192.0.2.1/32 next-hop self"], context="a")
    w.send(["withdraw route 192.0.2.2/32 next-hop self"], context="b")
    assert w.nudge_due and w.quiet_since == 100.0
    now[0] = 102.0
    assert w.nudge() == Rejected("withdraw route 192.0.2.2/32 next-hop self", "b")
    assert out.getvalue().decode().splitlines()[-2:] == [
        "withdraw route 192.0.2.2/32 next-hop self",
        "withdraw route 192.0.2.2/32 next-hop self",
    ]
    assert (w.pending, w.nudges, w.nudge_due) == (3, 1, False)
    for _ in range(3):
        w.receive("done")
    assert (w.done, w.pending, w.unexpected_acks) == (3, 0, 0)
    w.send(["announce route 192.0.2.3/32 next-hop self"])
    assert w.nudge_due


def test_commands_do_not_expire_while_exabgp_is_still_answering() -> None:
    """A long burst: commands older than the timeout are kept while acks keep coming, and
    given up only once ExaBGP has been silent for the quiet period."""
    now = [100.0]
    w = Writer(io.BytesIO(), clock=lambda: now[0])
    w.send([f"announce route 192.0.2.{i}/32 next-hop self" for i in range(1, 4)])
    now[0] = 111.0
    w.receive("done")
    assert w.expire(10.0, quiet=2.0) == []
    now[0] = 112.5
    assert w.expire(10.0, quiet=2.0) == []
    now[0] = 113.0
    assert [r.command for r in w.expire(10.0, quiet=2.0)] == [
        "announce route 192.0.2.2/32 next-hop self",
        "announce route 192.0.2.3/32 next-hop self",
    ]


def test_the_writer_owns_its_timing_nudge_then_expiry() -> None:
    """next_deadline() says when on_timer() has work: nothing while no command waits or
    while bytes are still being written; after NUDGE_AFTER of silence the last command is
    written again (once per silence); after ACK_TIMEOUT, with ExaBGP still silent, the
    unanswered commands are given up."""
    now = [100.0]
    writing = [False]
    out = io.BytesIO()
    w = Writer(out, clock=lambda: now[0], writing=lambda: writing[0])
    assert w.next_deadline() is None and w.on_timer(now[0]) == []
    w.send(["announce route 192.0.2.1/32 next-hop self"], context="web")
    writing[0] = True
    assert w.next_deadline() is None and w.on_timer(200.0) == []
    writing[0] = False
    assert w.next_deadline() == 100.0 + NUDGE_AFTER
    now[0] = 100.0 + NUDGE_AFTER - 0.1
    assert w.on_timer(now[0]) == []
    now[0] = 100.0 + NUDGE_AFTER
    [nudged] = w.on_timer(now[0])
    assert nudged == Nudged(
        Rejected("announce route 192.0.2.1/32 next-hop self", "web"), NUDGE_AFTER, 2
    )
    assert out.getvalue().count(b"announce") == 2
    # Nudged once per silence: next is the expiry of the first copy.
    assert w.next_deadline() == 100.0 + ACK_TIMEOUT
    now[0] = 100.0 + ACK_TIMEOUT
    [expired] = w.on_timer(now[0])
    assert isinstance(expired, Expired) and [r.context for r in expired.gone] == ["web"]
    assert expired.after == ACK_TIMEOUT and w.pending == 1
