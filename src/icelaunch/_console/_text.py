"""Pure text work of the console relay: prefix templates and prefix placement."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

#: what a stream's next byte needs: nothing, a prefix (line start), a prefix after ``\r``
NONE, LINE, CR = 0, 1, 2
_BREAKS = re.compile(rb"([\r\n])")
# where a prefix goes inside data: after \n unless \r follows, after \r before text
_LF_BEFORE_TEXT = re.compile(rb"\n(?=[^\r])")
_CR_BEFORE_TEXT = re.compile(rb"\r(?=[^\r\n])")


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
    if not prefix or not data:
        return data, _state_after(data, state)
    if b"\n" in prefix or b"\r" in prefix:
        return place_by_pieces(data, prefix, state)
    first = data[0]
    needs = state == LINE if first == 0x0A else first != 0x0D and state != NONE
    literal = prefix.replace(b"\\", b"\\\\")  # re.sub's replacement is a template
    text = _LF_BEFORE_TEXT.sub(b"\n" + literal, data) if b"\n" in data else data
    if b"\r" in text:  # the prefix has no line end: the \n pass added none
        text = _CR_BEFORE_TEXT.sub(b"\r" + literal, text)
    return (prefix + text if needs else text), _state_after(data, state)


def place_by_pieces(data: bytes, prefix: bytes, state: int) -> tuple[bytes, int]:
    """:func:`place_prefixes` a piece at a time: any prefix, slower."""
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


def line_end(data: bytes | bytearray, start: int = 0) -> int:
    """How much of ``data`` ends with its last line end (``\\n`` or ``\\r``) at or
    after ``start``; 0 if there is none there. Only ``data[start:]`` is searched.

    >>> line_end(b"a\\nb\\rc"), line_end(b"a\\nbc", 2), line_end(b"abc")
    (4, 0, 0)
    """
    return max(data.rfind(b"\n", start), data.rfind(b"\r", start)) + 1


def char_start(data: bytes | bytearray, end: int) -> int:
    """``end``, or where an unfinished UTF-8 character just before it starts, so a
    cut there never splits a character.

    >>> text = "añ€".encode()
    >>> [char_start(text, end) for end in range(len(text) + 1)]
    [0, 1, 1, 3, 3, 3, 6]
    >>> char_start(b"\\xff\\xfe", 2)  # not UTF-8: cut anywhere
    2
    """
    for back in range(1, min(4, end + 1)):
        byte = data[end - back]
        if byte < 0x80 or byte >= 0xF8:
            return end
        if byte >= 0xC0:  # a lead byte: how long its character is
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if size > back else end
    return end
