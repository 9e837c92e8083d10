"""Where worker streams meet on one console: whole lines, shown as soon as they can be.

A *screen* is one console destination (a terminal shows the launcher's stdout
and stderr on one screen; a file or pipe is a screen of its own). Each worker
stream is a :class:`Source` on a screen. The rule that keeps output live and
unmangled:

- A stream alone on its screen shows whatever it wrote at once, partial line
  included; the line is then *open* and the stream owns the screen.
- While others wait, a stream shows only up to its last line end (``\\n`` or
  ``\\r``), so lines of different ranks never interleave mid-line.
- A line left open (a progress bar between redraws, a ``print(..., end="")``)
  keeps the screen while its stream has more to show, and for :data:`HOLD_S`
  after its last write; then the others' lines go first, on a new line, and
  the open stream's next output starts with its prefix again (a ``\n`` that
  ends the broken line is the one already shown). A partial line that waited
  :data:`HOLD_S` with nothing more to read is shown too.
- The hold is bounded, so a flood without line ends stays live: while others
  wait, an open line gives up the screen once :data:`CHUNK_BYTES` of it are
  shown, once another stream holds :data:`CHUNK_BYTES`, or once another stream
  waited :data:`YIELD_S`; a waiting partial line of :data:`CHUNK_BYTES` or one
  held :data:`YIELD_S` is shown as a chunk of its own (with its prefix, on a
  line of its own, never cut inside a UTF-8 character). So after each pump no
  stream holds more than :data:`CHUNK_BYTES`, and the relay's reads keep pace
  with the console.

"More to read" is asked of the stream itself (``Source.pending``), so a relay
thread starved of CPU on a busy machine does not mistake a long line still
being written for an idle one. Every held byte is searched for a line end once
(:meth:`Source.line_end` remembers how far it looked), so the relay's work is
linear in the bytes it moves.
"""

from __future__ import annotations

from collections.abc import Callable

from icelaunch._console._text import LINE, char_start, line_end, place_prefixes

HOLD_S = 0.05
YIELD_S = 0.25
CHUNK_BYTES = 1 << 16

Write = Callable[[bytes], None]


class Source:
    """One worker stream (a rank's stdout or stderr) shown on a screen."""

    def __init__(
        self, prefix: bytes, write: Write, pending: Callable[[], bool] = lambda: False
    ) -> None:
        self.prefix = prefix
        self.write = write
        self.pending = pending  # whether the stream has bytes not read yet
        self.held = bytearray()  # read but not shown yet
        self.state = LINE  # see _text.place_prefixes
        self.open_line = False  # the screen's cursor is on a line this stream began
        self.run = 0  # bytes shown since this stream's last line end
        self.broken = False  # its open line was ended for another: a \n next is shown
        self.last_shown = 0.0
        self.held_since = 0.0
        self._scanned = 0  # held[:_scanned] was searched for line ends
        self._ends = 0  # held[:_ends] ends with the last line end found there (0: none)

    def line_end(self) -> int:
        """How much of ``held`` ends with its last line end (0: none); each held byte
        is searched once."""
        if self._scanned < len(self.held):
            self._ends = line_end(self.held, self._scanned) or self._ends
            self._scanned = len(self.held)
        return self._ends

    def show(self, cut: int, now: float) -> None:
        """Show the first ``cut`` held bytes (after :meth:`line_end`)."""
        data = bytes(self.held[:cut])
        del self.held[:cut]
        self.run = cut - self._ends if self._ends else self.run + cut
        self._scanned, self._ends = len(self.held), 0
        shown = data[1:] if self.broken and data[:1] == b"\n" else data
        self.broken = False
        text, self.state = place_prefixes(shown, self.prefix, self.state)
        if text:
            self.write(text)
        self.open_line = data[-1:] != b"\n"
        self.last_shown = now


class Screen:
    """Sources sharing one console; see the module docstring for the rule."""

    def __init__(self) -> None:
        self.owner: Source | None = None
        self.waiting: list[Source] = []

    def feed(self, source: Source, data: bytes, now: float) -> None:
        """Queue what ``source`` wrote; :meth:`pump` shows it."""
        if not data:
            return
        if not source.held:
            source.held_since = now
            self.waiting.append(source)
        source.held += data

    def pump(self, now: float, final: bool = False) -> float | None:
        """Show what may be shown now; return when to pump again (None: no need).

        ``final`` shows everything left, lines kept whole, open lines ended.
        """
        progressed = True
        while progressed and self.waiting:
            progressed = False
            for source in sorted(self.waiting, key=lambda s: s is not self.owner):
                progressed |= self._turn(source, now, final)
        if final:
            self.end_line()
            return None
        return self._next_deadline(now)

    def end_line(self) -> None:
        """Finish the open line, so what follows starts on a line of its own."""
        owner, self.owner = self.owner, None
        if owner is not None and owner.open_line:
            owner.write(b"\n")
            owner.open_line = False
            owner.state = LINE
            owner.run = 0
            owner.broken = True

    def _turn(self, source: Source, now: float, final: bool) -> bool:
        cut = self._cut(source, now, final)
        if cut == 0:
            return False
        owner = self.owner
        if owner is not None and owner is not source:
            if not final and not self._yields(owner, source, now):
                return False
            self.end_line()
        source.show(cut, now)
        self.owner = source if source.open_line else None
        if source.held:
            source.held_since = now
        else:
            self.waiting.remove(source)
        return True

    def _cut(self, source: Source, now: float, final: bool) -> int:
        """How many held bytes ``source`` may show if it has the screen (0: none)."""
        held = len(source.held)
        ends = source.line_end()
        if not any(s is not source for s in self.waiting):
            return held  # alone
        if ends:
            return ends  # whole lines first
        if final or self._idle(source, source.held_since, now):
            return held
        if self.owner is source or self._due(source, now):
            return char_start(source.held, held)  # a chunk: never cut inside a character
        return 0

    def _yields(self, owner: Source, waiter: Source, now: float) -> bool:
        """Whether the open line of ``owner`` gives the screen to ``waiter`` now."""
        if owner.run >= CHUNK_BYTES or len(waiter.held) >= CHUNK_BYTES:
            return True  # the owner had a chunk, or the waiter holds one: bounded memory
        if owner.held or owner.pending():
            return False
        return now - owner.last_shown >= HOLD_S or now - waiter.held_since >= YIELD_S

    @staticmethod
    def _due(source: Source, now: float) -> bool:
        """Whether a waiting partial line is shown as a chunk of its own."""
        return len(source.held) >= CHUNK_BYTES or now - source.held_since >= YIELD_S

    @staticmethod
    def _idle(source: Source, since: float, now: float) -> bool:
        """Whether ``source`` wrote nothing for HOLD_S and has nothing more to read."""
        return now - since >= HOLD_S and not source.pending()

    def _next_deadline(self, now: float) -> float | None:
        if not self.waiting:
            return None
        times = [s.held_since + wait for s in self.waiting for wait in (HOLD_S, YIELD_S)]
        if self.owner is not None:
            times.append(self.owner.last_shown + HOLD_S)
        later = [t for t in times if t > now]
        return min(later) if later else None
