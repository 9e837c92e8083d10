"""Pure text work of the console relay: prefix templates and prefix placement."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

DEFAULT_TEMPLATE = "[rank${rank}]: "
FIELDS = ("rank", "local_rank", "role_name", "group_rank", "node_rank", "hostname")
_EXAMPLE = "'[${role_name}${rank}]: '"

#: what a stream's next byte needs: nothing, a prefix (line start), a prefix after ``\r``
NONE, LINE, CR = 0, 1, 2
_BREAKS = re.compile(rb"([\r\n])")


def check_template(template: object) -> str:
    """``template`` if it is a valid prefix template, else ValueError/TypeError.

    >>> check_template("[${role_name}:${local_rank}] ")
    '[${role_name}:${local_rank}] '
    """
    if not isinstance(template, str):
        raise TypeError(
            f"log_line_prefix_template must be str, not {template!r}; "
            f"e.g. log_line_prefix_template={_EXAMPLE}"
        )
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if match.group("invalid") is not None or (name is not None and name not in FIELDS):
            found = match.group(0)
            raise ValueError(
                f"invalid log_line_prefix_template {template!r}: {found!r} is not one of "
                f"{', '.join('${' + f + '}' for f in FIELDS)} (write $$ for a dollar sign), "
                f"e.g. log_line_prefix_template={_EXAMPLE}"
            )
    return template


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
