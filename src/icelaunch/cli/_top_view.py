"""What ``icelaunch top`` shows of one launch: a table of its ranks, then its heading.

Pure: a :class:`View` is plain data (no process is looked at here), drawn as
fixed-width text (:func:`plain`, for pipes and logs) or as a ``rich`` table
(:func:`rich_view`, for a terminal; ``rich`` is imported there, not here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from icelaunch._watching import Row

if TYPE_CHECKING:
    from rich.console import RenderableType

#: the table's columns, in order
COLUMNS = ("rank", "node", "pid", "state", "cpu%", "mem", "gpu mem", "gpu%", "same for", "where")
_RIGHT = frozenset({"rank", "node", "pid", "cpu%", "mem", "gpu mem", "gpu%", "same for"})
_STYLES = {"running": "green", "waiting": "yellow", "stopped": "bold red", "ended": "dim"}
_NONE = "-"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass(frozen=True)
class Line:
    """One rank as shown: its row, the node it runs on, its use of the GPUs."""

    row: Row
    node: int | None = None  # the launcher's node_rank, where known
    gpu_bytes: int | None = None
    gpu_percent: int | None = None


@dataclass(frozen=True)
class View:
    """One launch at one moment."""

    pid: int  # the launching process
    command: str  # its command line
    attempt: int | None  # the restart count of the ranks shown; None: no rank seen yet
    lines: tuple[Line, ...]
    findings: tuple[str, ...] = ()  # the launcher's latest slow-rank findings
    from_launcher: bool = False  # the rows are the launcher's own samples (live.json)
    ended: bool = False  # the launcher is gone


def size(n: int | None) -> str:
    """Bytes, short.

    >>> size(None), size(512), size(3 << 20), size(314 << 20), size(5 << 30)
    ('-', '512 B', '3.0 MiB', '314 MiB', '5.0 GiB')
    """
    if n is None:
        return _NONE
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{n} B"
    return f"{value:.1f} {_UNITS[unit]}" if value < 10 else f"{value:.0f} {_UNITS[unit]}"


def seconds(s: float | None) -> str:
    """A duration, short.

    >>> seconds(None), seconds(0.04), seconds(7.25), seconds(95), seconds(4000)
    ('-', '0.0s', '7.2s', '95s', '1h06m')
    """
    if s is None:
        return _NONE
    if s < 10:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{s:.0f}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def percent(p: float | None) -> str:
    """A share, in percent.

    >>> percent(None), percent(3.14), percent(199.6)
    ('-', '3', '200')
    """
    return _NONE if p is None else f"{p:.0f}"


def cells(line: Line) -> tuple[str, ...]:
    """The text of each of :data:`COLUMNS` for one rank."""
    row = line.row
    return (
        str(row.rank),
        _NONE if line.node is None else str(line.node),
        str(row.pid),
        row.state,
        percent(row.cpu_percent),
        size(row.rss_bytes),
        size(line.gpu_bytes),
        percent(line.gpu_percent),
        seconds(row.stack_age_s),
        row.where or _NONE,
    )


def heading(view: View) -> str:
    """The line under a launch's table: which launch, which attempt, whose samples."""
    text = f"launch {view.pid} ({view.command})"
    if view.attempt is not None:
        text += f", attempt {view.attempt}"
    if view.ended:
        return text + ": ended"
    if not view.lines:
        return text + ": no rank is running Python code of its own yet"
    ranks = len(view.lines)
    whose = "the launcher's samples" if view.from_launcher else "sampled by icelaunch top"
    return text + f", {ranks} rank{'s' if ranks != 1 else ''} ({whose})"


def table_text(lines: Sequence[Line]) -> str:
    """The ranks as a fixed-width table, a header line first.

    >>> print(table_text([Line(Row(0, 0, 42, "waiting", 1.0, 2 << 20, 0.5, "f (a.py:1)"))]))
    rank  node  pid  state    cpu%      mem  gpu mem  gpu%  same for  where
       0     -   42  waiting     1  2.0 MiB        -     -      0.5s  f (a.py:1)
    """
    grid = [COLUMNS, *(cells(line) for line in lines)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(COLUMNS))]
    out = []
    for r in grid:
        parts = [
            text.rjust(width) if name in _RIGHT else text.ljust(width)
            for name, text, width in zip(COLUMNS, r, widths, strict=True)
        ]
        parts[-1] = r[-1]  # the last column is not padded
        out.append("  ".join(parts))
    return "\n".join(out)


def plain(views: Sequence[View]) -> str:
    """Every launch as text: its table, its heading, its findings; a blank line between."""
    blocks = []
    for view in views:
        text = "\n".join(
            [table_text(view.lines), heading(view), *(f"finding: {f}" for f in view.findings)]
        )
        blocks.append(text)
    return "\n\n".join(blocks)


def rich_view(views: Sequence[View]) -> RenderableType:
    """Every launch as a ``rich`` table, its heading and findings under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    for number, view in enumerate(views):
        if number:
            parts.append(Text(""))
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in COLUMNS:
            right = name in _RIGHT
            table.add_column(name, justify="right" if right else "left", no_wrap=name != "where")
        for line in view.lines:
            texts = [Text(text) for text in cells(line)]
            texts[COLUMNS.index("state")].stylize(_STYLES.get(line.row.state, ""))
            table.add_row(*texts, style="dim" if line.row.state == "ended" else None)
        parts.append(table)
        parts.append(Text(heading(view), style="bold"))
        parts.extend(Text(f"finding: {f}", style="yellow") for f in view.findings)
    return Group(*parts)
