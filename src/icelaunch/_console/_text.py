"""Pure text work of the console relay: prefix templates and prefix placement."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

#: what a stream's next byte needs: nothing, a prefix (line start), a prefix after ``\r``
NONE, LINE, CR = 0, 1, 2
_BREAKS = re.compile(rb"([\r\n])")


def expand(template: str, fields: Mapping[str, object]) -> bytes:
    """The prefix of one worker stream, as bytes.

    >>> expand("[rank${rank}]: ", {"rank": 3})
    b'[rank3]: '
    """
    return string.Template(template).safe_substitute(fields).encode()


def place_prefixes(data: bytes, prefix: bytes, state: int) -> tuple[bytes, int]:
    """``data`` with ``prefix`` at the start of every line and after every ``\\r``.

    ``state`` says what the stream's previous byte left pending (:data:`LINE` at
    a stream's start); the new state is returned. The prefix is written only
    before the byte that needs it, so a stream never ends in a dangling prefix;
    an empty line gets one, a ``\\r\\n`` line end does not get a second one.

    >>> place_prefixes(b"a\\n\\rb\\r\\n", b"> ", LINE)
    (b'> a\\n\\r> b\\r\\n', 1)
    """
    if not prefix:
        return data, _state_after(data, state)
    out: list[bytes] = []
    for piece in _BREAKS.split(data):
        if piece == b"\n":
            out.append(prefix + piece if state == LINE else piece)
            state = LINE
        elif piece == b"\r":
            out.append(piece)
            state = CR
        elif piece:
            out.append(prefix + piece if state != NONE else piece)
            state = NONE
    return b"".join(out), state


def _state_after(data: bytes, state: int) -> int:
    if not data:
        return state
    last = data[-1:]
    return LINE if last == b"\n" else CR if last == b"\r" else NONE
