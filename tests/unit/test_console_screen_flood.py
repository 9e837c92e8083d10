"""Worker output under a flood, the pure parts: the screen's hold on a partial line is
bounded (chunks, each with its prefix), its work is linear in the bytes it holds, and
prefix placement keeps pace."""

from __future__ import annotations

import random
import re

import pytest

from icelaunch._console._screen import CHUNK_BYTES, YIELD_S, Screen, Source
from icelaunch._console._text import CR, LINE, NONE, place_by_pieces, place_prefixes

PIECE = 4096  # what one read of a worker's terminal gives


class CountingBytes(bytearray):
    """A held buffer that counts the bytes searched for line ends."""

    searched = 0

    def rfind(self, sub: object, start: int | None = 0, *rest: int | None) -> int:  # type: ignore[override]
        CountingBytes.searched += len(self) - (start or 0)
        return super().rfind(sub, start, *rest)  # type: ignore[arg-type]


def _sources(n: int, shown: list[bytes], pending: bool) -> list[Source]:
    sources = [Source(f"[{i}] ".encode(), shown.append, lambda: pending) for i in range(n)]
    for source in sources:
        source.held = CountingBytes()
    return sources


def _stream(rank: int, size: int, text: bytes = b"0123456789") -> bytes:
    """What one rank writes: its letter and ``text``, over and over, no line end."""
    one = bytes([ord("a") + rank]) + text
    return (one * (size // len(one) + 1))[:size]


def _flood(ranks: int, size: int, pending: bool = True) -> tuple[bytes, int, int]:
    """``ranks`` streams written at once, PIECE bytes a round each, the screen pumped
    after every round, a millisecond apart; (all shown, most held by one stream,
    bytes shown before the last round)."""
    shown: list[bytes] = []
    screen = Screen()
    sources = _sources(ranks, shown, pending)
    streams = [_stream(rank, size) for rank in range(ranks)]
    most_held, now = 0, 0.0
    for start in range(0, size, PIECE):
        now += 0.001
        for source, data in zip(sources, streams, strict=True):
            screen.feed(source, data[start : start + PIECE], now)
        screen.pump(now)
        most_held = max([most_held] + [len(s.held) for s in sources])
    live = sum(map(len, shown))
    screen.pump(now + 1.0, final=True)
    return b"".join(shown), most_held, live


def _chunks_by_rank(out: bytes, ranks: int) -> dict[int, bytes]:
    """Each rank's bytes in the order shown; every line one rank's, with its prefix."""
    found: dict[int, list[bytes]] = {rank: [] for rank in range(ranks)}
    assert out.endswith(b"\n")
    for line in out[:-1].split(b"\n"):
        match = re.fullmatch(rb"\[(\d+)\] (.+)", line, re.S)
        assert match, line[:80]
        rank = int(match[1])
        letters = set(match[2]) - set(b"0123456789")
        assert letters == {ord("a") + rank}, (rank, line[:80])  # no other rank mid-chunk
        found[rank].append(match[2])
    return {rank: b"".join(pieces) for rank, pieces in found.items()}


def test_a_flood_without_line_ends_from_eight_ranks_is_shown_live_in_chunks() -> None:
    """Every rank writing at once, none ever idle: shown as it comes, in prefixed
    chunks, while little is held (the relay reads only as fast as it shows)."""
    size = 1 << 20
    out, most_held, live = _flood(8, size)
    assert most_held < CHUNK_BYTES + PIECE, most_held  # after each pump: below a chunk
    assert live >= 8 * (size - 3 * CHUNK_BYTES), live
    assert _chunks_by_rank(out, 8) == {rank: _stream(rank, size) for rank in range(8)}
    lines = out.count(b"\n")
    assert 8 * size // (3 * CHUNK_BYTES) <= lines <= 8 * size // CHUNK_BYTES + 16, lines


def test_each_held_byte_is_searched_for_a_line_end_once() -> None:
    """The screen's work is linear in the bytes it holds, not in held x pumps."""
    CountingBytes.searched = 0
    size = 1 << 19
    _flood(8, size)
    assert CountingBytes.searched <= 2 * 8 * size, CountingBytes.searched  # \n and \r
    CountingBytes.searched = 0
    out, _, _ = _flood(8, size, pending=False)  # the same while the stream looks idle
    assert CountingBytes.searched <= 2 * 8 * size, CountingBytes.searched
    assert _chunks_by_rank(out, 8) == {rank: _stream(rank, size) for rank in range(8)}


def test_a_chunk_never_cuts_a_character() -> None:
    shown: list[bytes] = []
    screen = Screen()
    sources = _sources(2, shown, pending=True)
    data = "€".encode() * 200_000  # 3 bytes each: a 4096-byte read ends mid-character
    for i, start in enumerate(range(0, len(data), PIECE)):
        for source in sources:
            screen.feed(source, data[start : start + PIECE], i * 0.001)
        screen.pump(i * 0.001)
    screen.pump(10.0, final=True)
    lines = b"".join(shown).split(b"\n")[:-1]
    assert len(lines) >= 2 * len(data) // (3 * CHUNK_BYTES), len(lines)
    for line in lines:
        assert line[:4] in (b"[0] ", b"[1] ")
        assert line[4:].decode() == "€" * (len(line[4:]) // 3)


def test_an_open_line_redrawn_without_pause_yields_after_a_while() -> None:
    """A bar redrawn every 10 ms is never idle; another rank's line still goes within
    YIELD_S, and the bar goes on, on a line of its own with its prefix."""
    shown: list[bytes] = []
    screen = Screen()
    bar, log = Source(b"[0] ", shown.append), Source(b"[1] ", shown.append)
    screen.feed(bar, b"\r 0%", 0.0)
    screen.pump(0.0)
    screen.feed(log, b"epoch 1\n", 0.001)
    seen_at = None
    for step in range(1, 100):
        now = step * 0.01
        screen.feed(bar, f"\r {step}%".encode(), now)
        screen.pump(now)
        if seen_at is None and b"[1] epoch 1\n" in b"".join(shown):
            seen_at = now
    assert seen_at is not None and seen_at <= YIELD_S + 0.011, seen_at
    out = b"".join(shown)
    assert b"%\n[1] epoch 1\n\r[0] " in out, out


def test_a_long_line_while_another_rank_prints_is_cut_once_a_chunk_is_shown() -> None:
    shown: list[bytes] = []
    screen = Screen()
    big, log = Source(b"[0] ", shown.append, lambda: True), Source(b"[1] ", shown.append)
    line = b"x" * (8 * CHUNK_BYTES) + b"\n"
    screen.feed(big, line[:PIECE], 0.0)
    screen.pump(0.0)
    screen.feed(log, b"hello\n", 0.0)
    for i, start in enumerate(range(PIECE, len(line), PIECE)):
        screen.feed(big, line[start : start + PIECE], i * 0.001)
        screen.pump(i * 0.001)
    out = b"".join(shown)
    first, rest = out.split(b"\n[1] hello\n")
    assert first == b"[0] " + b"x" * (len(first) - 4)
    assert CHUNK_BYTES <= len(first) - 4 <= CHUNK_BYTES + PIECE
    assert rest.startswith(b"[0] x") and rest.count(b"\n") == 1


def test_the_line_end_of_a_broken_line_is_not_shown_twice() -> None:
    """A line ended early for another rank: its own ``\\n`` is not a blank line."""
    shown: list[bytes] = []
    screen = Screen()
    slow, other = Source(b"[0] ", shown.append), Source(b"[1] ", shown.append)
    screen.feed(slow, b"x" * (2 * CHUNK_BYTES), 0.0)
    screen.pump(0.0)
    screen.feed(other, b"hello\n", 0.0)
    screen.pump(0.0)
    screen.feed(slow, b"\nnext\n", 0.1)
    screen.pump(0.1)
    assert b"".join(shown) == b"[0] " + b"x" * (2 * CHUNK_BYTES) + b"\n[1] hello\n[0] next\n"


@pytest.mark.parametrize("seed", range(3))
def test_fast_prefix_placement_matches_piece_by_piece(seed: int) -> None:
    """The regular-expression placement gives exactly what the piece loop gives."""
    rng = random.Random(seed)
    print("seed", seed)
    for _ in range(3000):
        data = bytes(rng.choice(b"ab\r\n\\") for _ in range(rng.randint(0, 14)))
        state = rng.choice([LINE, NONE, CR])
        for prefix in (b"> ", b"[r\\1] ", b"\\g<0>", b"a\nb ", b"\r", b""):
            expected = place_by_pieces(data, prefix, state) if prefix else (data, None)
            got = place_prefixes(data, prefix, state)
            assert got[0] == expected[0], (data, state, prefix)
            if prefix:
                assert got[1] == expected[1], (data, state, prefix)
