"""The timeline drawn with matplotlib: ``.png``, ``.svg``, ``.pdf``.

matplotlib is optional (``pip install icelaunch[timeline]``): it is imported
when a picture is drawn, never when icelaunch is, and no pyplot state is
touched (a bare ``Figure``, so it works in threads and without a display).
A PNG is :func:`pixels` in size: 1200 pixels wide, its height from the
number of ranks.
"""

from __future__ import annotations

from typing import Any

from icelaunch._watching._lanes import (
    END_MARKS,
    FINDING_COLOURS,
    RESTART_COLOUR,
    STATE_COLOURS,
    STATE_NAMES,
    Lane,
    caption,
    ticks,
)

DPI = 100
WIDTH_PX = 1200
LEFT_PX, RIGHT_PX, TOP_PX, BOTTOM_PX = 210, 24, 112, 56
MARKERS = {"circle": "o", "cross": "X", "square": "s", "diamond": "D", "arrow": ">"}
FORMATS = ("png", "svg", "pdf")
INSTALL = "pip install matplotlib (or pip install 'icelaunch[timeline]')"


def row_px(count: int) -> int:
    """Pixels per rank: roomy for a few ranks, compact for many."""
    return 28 if count <= 16 else 18 if count <= 40 else 14


def pixels(count: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of ``count`` ranks.

    >>> pixels(4)
    (1200, 280)
    """
    return WIDTH_PX, TOP_PX + BOTTOM_PX + row_px(max(count, 1)) * max(count, 1)


def write(path: str, fmt: str, report: dict[str, Any], found: list[Lane], extent: float) -> None:
    """Draw the lanes of ``report`` into ``path`` as ``fmt`` (one of :data:`FORMATS`)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"a .{fmt} timeline needs matplotlib: {INSTALL}; "
                          "a .html timeline needs nothing") from exc  # fmt: skip
    width, height = pixels(len(found))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes(
        (LEFT_PX / width, BOTTOM_PX / height,
         (width - LEFT_PX - RIGHT_PX) / width, (height - TOP_PX - BOTTOM_PX) / height)
    )  # fmt: skip
    _lanes(ax, found, row_px(len(found)))
    _axes(ax, found, extent)
    title, detail = caption(report)
    fig.text(8 / width, 1 - 8 / height, title, fontsize=13, weight="bold", va="top")
    fig.text(8 / width, 1 - 30 / height, detail, fontsize=9, va="top", color="#333333")
    fig.legend(handles=_legend(), loc="upper left", bbox_to_anchor=(8 / width, 1 - 48 / height),
               ncol=6, frameon=False, fontsize=9, handlelength=1.6, columnspacing=1.2)  # fmt: skip
    fig.savefig(path, dpi=DPI, format=fmt)


def _lanes(ax: Any, found: list[Lane], row: int) -> None:
    font = 9 if row >= 18 else 7
    for i, lane in enumerate(found):
        if i % 2:
            ax.axhspan(i - 0.5, i + 0.5, color="#f3f3f3", zorder=0)
        for state, colour in STATE_COLOURS.items():
            bars = [(s.from_s, s.to_s - s.from_s) for s in lane.segments if s.state == state]
            if bars:
                ax.broken_barh(bars, (i - 0.3, 0.6), facecolors=colour, zorder=2)
        for f in lane.spans:
            colour = FINDING_COLOURS[f.kind]
            if f.kind == "stall":
                ax.hlines(i + 0.4, f.from_s, f.to_s, colors=colour, linewidth=2.5, zorder=3)
                continue
            ax.broken_barh([(f.from_s, f.to_s - f.from_s)], (i - 0.45, 0.9), facecolors="none",
                           edgecolors=colour, hatch="///", linewidth=1.2, zorder=3)  # fmt: skip
            if f.label and row >= 18:
                ax.text(f.from_s, i, f" {f.label}", fontsize=font, va="center", zorder=4,
                        bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "lw": 0})  # fmt: skip
        for e in lane.ends:
            shape, colour, _ = END_MARKS[e.end]
            ax.scatter([e.at_s], [i], marker=MARKERS[shape], s=min(64, row * 2.2), c=colour,
                       edgecolors="black", linewidths=0.6, zorder=5)  # fmt: skip


def _axes(ax: Any, found: list[Lane], extent: float) -> None:
    count = max(len(found), 1)
    ax.set_xlim(0, extent)
    ax.set_ylim(count - 0.5, -0.5)
    ax.set_xticks(ticks(extent))
    ax.set_xlabel("seconds since the launch began", fontsize=9)
    ax.set_yticks(range(len(found)), [lane.label for lane in found],
                  fontsize=9 if row_px(count) >= 18 else 7)  # fmt: skip
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", color="#cccccc", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for r in found[0].restarts if found else ():
        ax.axvline(r.at_s, color=RESTART_COLOUR, linestyle="--", linewidth=1.2, zorder=6)
        ax.text(r.at_s, -0.5, " restart", fontsize=8, va="bottom", clip_on=False)


def _legend() -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(color=STATE_COLOURS[s], label=STATE_NAMES[s]) for s in STATE_COLOURS
    ]
    seen = set()
    for shape, colour, name in END_MARKS.values():
        if name not in seen:
            seen.add(name)
            handles.append(Line2D([], [], linestyle="none", marker=MARKERS[shape], color=colour,
                                  markeredgecolor="black", markersize=8, label=name))  # fmt: skip
    handles += [
        Patch(facecolor="none", edgecolor=FINDING_COLOURS["slow_rank"], hatch="///",
              label="slow rank (its function)"),
        Line2D([], [], color=FINDING_COLOURS["stall"], linewidth=2.5, label="stall (no progress)"),
        Line2D([], [], color=RESTART_COLOUR, linestyle="--", label="restart"),
    ]  # fmt: skip
    return handles
