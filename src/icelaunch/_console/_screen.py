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
  the open stream's next output starts with its prefix again. A partial line
  that waited :data:`HOLD_S` with nothing more to read is shown too.

"More to read" is asked of the stream itself (``Source.pending``), so a relay
thread starved of CPU on a busy machine does not mistake a long line still
being written for an idle one.
"""

from __future__ import annotations

from collections.abc import Callable

from icelaunch._console._text import LINE, place_prefixes

HOLD_S = 0.05

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
        self.last_shown = 0.0
        self.held_since = 0.0

    def show(self, data: bytes, now: float) -> None:
        text, self.state = place_prefixes(data, self.prefix, self.state)
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
            for source in list(self.waiting):
                progressed |= self._turn(source, now, final)
        if final:
            self.end_line()
            return None
        return self._next_deadline()

    def end_line(self) -> None:
        """Finish the open line, so what follows starts on a line of its own."""
        owner, self.owner = self.owner, None
        if owner is not None and owner.open_line:
            owner.write(b"\n")
            owner.open_line = False
            owner.state = LINE

    def _turn(self, source: Source, now: float, final: bool) -> bool:
        owner = self.owner
        if owner is not None and owner is not source:
            if not final and (owner.held or not self._idle(owner, owner.last_shown, now)):
                return False
            self.end_line()
        contended = any(s is not source for s in self.waiting)
        cut = len(source.held)
        if contended:
            cut = max(source.held.rfind(b"\n"), source.held.rfind(b"\r")) + 1
            if cut == 0:  # no line end: only the owner goes on with its open line at once
                waits = self.owner is not source and not final
                if waits and not self._idle(source, source.held_since, now):
                    return False
                cut = len(source.held)
        data = bytes(source.held[:cut])
        del source.held[:cut]
        source.show(data, now)
        self.owner = source if source.open_line else None
        if source.held:
            source.held_since = now
        else:
            self.waiting.remove(source)
        return True

    @staticmethod
    def _idle(source: Source, since: float, now: float) -> bool:
        """Whether ``source`` wrote nothing for HOLD_S and has nothing more to read."""
        return now - since >= HOLD_S and not source.pending()

    def _next_deadline(self) -> float | None:
        if not self.waiting:
            return None
        times = [s.held_since + HOLD_S for s in self.waiting]
        if self.owner is not None:
            times.append(self.owner.last_shown + HOLD_S)
        return min(times)
