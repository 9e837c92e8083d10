"""The timeline as one self-contained HTML file: inline SVG and CSS, nothing fetched.

Every drawn piece says what it shows in ``data-*`` attributes, numbers as Python
writes them (``repr``), so that a test or a user can read the picture back:

- a segment: ``class="segment" data-rank data-attempt data-state data-from data-to``
- an attempt's end: ``class="end" data-rank data-attempt data-end data-at``
- a finding: ``class="finding" data-kind data-rank data-attempt data-from data-to``
- a restart: ``class="restart" data-at data-attempt``

The file parses as XML too (no HTML-only entities, every tag closed).
"""

from __future__ import annotations

from html import escape
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

WIDTH = 1200
LEFT = 210  # the rank labels
RIGHT = 24
PLOT = WIDTH - LEFT - RIGHT
LEGEND_ITEM, LEGEND_LINE = 195, 20
MARKS_ROW = 18  # the restarts' labels, above the lanes
AXIS = 44

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px;
       color: #111; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px 0; word-break: break-all; }
p.detail { margin: 0 0 10px 0; color: #333; font-size: 13px; }
svg text { font-family: inherit; fill: #111; }
svg .label { font-size: var(--label, 12px); }
svg .tick { font-size: 11px; fill: #333; }
svg .legend { font-size: 12px; }
svg .fn { font-size: 10px; }
svg .segment:hover, svg .finding:hover, svg .end:hover { opacity: 0.75; }
pre.summary { font-size: 12px; background: #f6f6f6; padding: 8px; overflow-x: auto; }
.status-succeeded { color: #006b50; } .status-failed, .status-error { color: #a33b00; }
"""


def _n(x: float) -> str:
    return f"{x:.2f}"


class _Scale:
    def __init__(self, extent: float, count: int) -> None:
        self.extent = extent
        self.row = 24 if count <= 16 else 16 if count <= 40 else 12
        self.top = 2 * LEGEND_LINE + 10 + MARKS_ROW

    def x(self, t: float) -> float:
        return LEFT + PLOT * min(max(t, 0.0), self.extent) / self.extent

    def y(self, index: int) -> float:
        return float(self.top + index * self.row)


def write(
    path: str, report: dict[str, Any], found: list[Lane], extent: float, resolution_s: float,
    text: str,
) -> None:  # fmt: skip
    """Write the HTML timeline of ``found`` (lanes of ``report``) to ``path``."""
    title, detail = caption(report)
    status = escape(str(report["outcome"]["status"]))
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"/>',
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
            f'<h1>{escape(str(report["target"]))}: <span class="status-{status}">{status}'
            "</span></h1>",
            f'<p class="detail">{escape(detail)}</p>',
            svg(found, extent, resolution_s, title),
            f'<pre class="summary">{escape(text)}</pre>',
            "</body></html>",
            "",
        ]
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)


def svg(found: list[Lane], extent: float, resolution_s: float, title: str) -> str:
    """The picture alone: legend, restarts, one lane per rank, the seconds axis."""
    scale = _Scale(extent, len(found))
    height = scale.y(len(found)) + AXIS
    font = min(12, scale.row - 2)
    parts = [
        f'<svg width="{WIDTH}" height="{_n(height)}" viewBox="0 0 {WIDTH} {_n(height)}" '
        f'role="img" aria-label="{escape(title)}" style="--label: {font}px" '
        f'data-extent="{extent!r}" data-resolution-s="{resolution_s!r}">',
        "<defs>"
        '<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)">'
        f'<rect width="6" height="6" fill="{FINDING_COLOURS["slow_rank"]}" fill-opacity="0.12"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{FINDING_COLOURS["slow_rank"]}" '
        'stroke-width="2"/></pattern></defs>',
        *_legend(),
        *_grid(scale, len(found)),
    ]
    for index, lane in enumerate(found):
        parts.extend(_lane(lane, index, scale))
    parts.extend(_restarts(found, scale, len(found)))
    parts.append("</svg>")
    return "\n".join(parts)


def _legend() -> list[str]:
    items = [(f'<rect width="14" height="10" y="-9" fill="{STATE_COLOURS[s]}"/>', STATE_NAMES[s])
             for s in STATE_COLOURS]  # fmt: skip
    seen = set()
    for shape, colour, name in END_MARKS.values():
        if name not in seen:
            seen.add(name)
            items.append((_shape(shape, colour, 7.0, -4.0, 5.0), name))
    items += [
        ('<rect width="14" height="12" y="-10" fill="url(#hatch)" '
         f'stroke="{FINDING_COLOURS["slow_rank"]}"/>', "slow rank (its function)"),
        (f'<rect width="14" height="3" y="-3" fill="{FINDING_COLOURS["stall"]}"/>',
         "stall (no progress)"),
        (f'<line x1="7" x2="7" y1="-11" y2="3" stroke="{RESTART_COLOUR}" '
         'stroke-dasharray="3 2"/>', "restart"),
    ]  # fmt: skip
    per_line = (WIDTH - 20) // LEGEND_ITEM
    out = ['<g class="legend">']
    for i, (mark, name) in enumerate(items):
        x, y = 10 + (i % per_line) * LEGEND_ITEM, 16 + (i // per_line) * LEGEND_LINE
        out.append(
            f'<g transform="translate({x},{y})">{mark}<text x="20">{escape(name)}</text></g>'
        )
    out.append("</g>")
    return out


def _grid(scale: _Scale, count: int) -> list[str]:
    top, bottom = scale.y(0), scale.y(count)
    out = ['<g class="axis" stroke="#ccc">']
    for t in ticks(scale.extent):
        x = _n(scale.x(t))
        out.append(f'<line x1="{x}" x2="{x}" y1="{_n(top)}" y2="{_n(bottom + 4)}"/>')
        out.append(
            f'<text class="tick" x="{x}" y="{_n(bottom + 17)}" text-anchor="middle" '
            f'stroke="none">{t:g}</text>'
        )
    out.append(
        f'<text class="tick" x="{LEFT + PLOT / 2}" y="{_n(bottom + 36)}" text-anchor="middle" '
        'stroke="none">seconds since the launch began</text></g>'
    )
    return out


def _lane(lane: Lane, index: int, scale: _Scale) -> list[str]:
    top, row = scale.y(index), scale.row
    bar_y, bar_h = top + row * 0.2, row * 0.6
    mid = top + row / 2
    out = [f'<g class="lane" data-rank="{lane.rank}">']
    if index % 2:
        out.append(f'<rect x="{LEFT}" y="{_n(top)}" width="{PLOT}" height="{row}" fill="#f3f3f3"/>')
    out.append(
        f'<text class="label" x="{LEFT - 8}" y="{_n(mid)}" text-anchor="end" '
        f'dominant-baseline="central">{escape(lane.label)}</text>'
    )
    for s in lane.segments:
        x0, x1 = scale.x(s.from_s), scale.x(s.to_s)
        tip = f"rank {lane.rank}, attempt {s.attempt}: {s.state} {s.from_s:.3f} to {s.to_s:.3f}"
        tip += f" s ({s.to_s - s.from_s:.3f} s)" + (f" in {s.where}" if s.where else "")
        out.append(
            f'<rect class="segment" x="{_n(x0)}" y="{_n(bar_y)}" width="{_n(max(x1 - x0, 0.5))}" '
            f'height="{_n(bar_h)}" fill="{STATE_COLOURS[s.state]}" data-rank="{lane.rank}" '
            f'data-attempt="{s.attempt}" data-state="{s.state}" data-from="{s.from_s!r}" '
            f'data-to="{s.to_s!r}"><title>{escape(tip)}</title></rect>'
        )
    out.extend(_spans(lane, top, row, scale))
    out.extend(_ends(lane, mid, min(5.0, row * 0.3), scale))
    out.append("</g>")
    return out


def _ends(lane: Lane, mid: float, size: float, scale: _Scale) -> list[str]:
    out = []
    for e in lane.ends:
        shape, colour, _ = END_MARKS[e.end]
        how = f"signal {e.signal}" if e.signal else f"exit code {e.exit_code}"
        tip = f"rank {lane.rank}, attempt {e.attempt}: {e.end} at {e.at_s:.3f} s"
        tip += "" if e.end == "running" or (e.exit_code is None and not e.signal) else f" ({how})"
        attrs = (
            f'class="end" data-rank="{lane.rank}" data-attempt="{e.attempt}" '
            f'data-end="{e.end}" data-at="{e.at_s!r}"'
        )
        mark = _shape(shape, colour, scale.x(e.at_s), mid, size)
        out.append(f"<g {attrs}>{mark}<title>{escape(tip)}</title></g>")
    return out


def _spans(lane: Lane, top: float, row: int, scale: _Scale) -> list[str]:
    out = []
    for f in lane.spans:
        x0, x1 = scale.x(f.from_s), scale.x(f.to_s)
        w = _n(max(x1 - x0, 1.0))
        attrs = (
            f'class="finding" data-kind="{f.kind}" data-rank="{lane.rank}" '
            f'data-attempt="{f.attempt}" data-from="{f.from_s!r}" data-to="{f.to_s!r}"'
        )
        tip = f"<title>{escape(f.message)}</title>"
        colour = FINDING_COLOURS[f.kind]
        if f.kind == "stall":
            y = _n(top + row - 3)
            out.append(f'<rect {attrs} x="{_n(x0)}" y="{y}" width="{w}" height="2.5" '
                       f'fill="{colour}">{tip}</rect>')  # fmt: skip
            continue
        out.append(f'<rect {attrs} x="{_n(x0)}" y="{_n(top + 1)}" width="{w}" '
                   f'height="{row - 2}" fill="url(#hatch)" stroke="{colour}" '
                   f'stroke-width="1.5">{tip}</rect>')  # fmt: skip
        if f.label and row >= 16 and x1 - x0 > 40:  # its function, on a white ground
            mid, width = top + row / 2, min(6.2 * len(f.label) + 6, x1 - x0 - 4)
            out.append(f'<rect x="{_n(x0 + 2)}" y="{_n(mid - 7)}" width="{_n(width)}" height="14" '
                       'fill="#fff" fill-opacity="0.85"/>'
                       f'<text class="fn" x="{_n(x0 + 5)}" y="{_n(mid)}" '
                       f'dominant-baseline="central">{escape(f.label)}</text>')  # fmt: skip
    return out


def _restarts(found: list[Lane], scale: _Scale, count: int) -> list[str]:
    if not found:
        return []
    top, bottom = scale.y(0), scale.y(count)
    out = []
    for r in found[0].restarts:
        x = _n(scale.x(r.at_s))
        attempt = "" if r.attempt is None else f' data-attempt="{r.attempt}"'
        out.append(
            f'<g class="restart" data-at="{r.at_s!r}"{attempt}>'
            f'<line x1="{x}" x2="{x}" y1="{_n(top - MARKS_ROW + 4)}" y2="{_n(bottom)}" '
            f'stroke="{RESTART_COLOUR}" stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text class="tick" x="{x}" y="{_n(top - 6)}" dx="3">restart</text>'
            f"<title>{escape(f'{r.at_s:.3f} s: {r.message}')}</title></g>"
        )
    return out


def _path(*points: tuple[float, float], close: bool = True, jump: int = -1) -> str:
    """An SVG path through ``points`` (a new stroke at index ``jump``)."""
    steps = [
        ("M" if i in (0, jump) else "L") + f"{_n(x)} {_n(y)}" for i, (x, y) in enumerate(points)
    ]
    return "".join(steps) + ("Z" if close else "")


def _shape(shape: str, colour: str, x: float, y: float, r: float) -> str:
    """One end mark: its shape tells it apart without its colour."""
    if shape == "circle":
        return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{colour}" stroke="#000"/>'
    if shape == "cross":
        d = _path(
            (x - r, y - r), (x + r, y + r), (x - r, y + r), (x + r, y - r), close=False, jump=2
        )
        return f'<path d="{d}" stroke="{colour}" stroke-width="3" fill="none"/>'
    if shape == "square":
        d = _path((x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r))
        return f'<path d="{d}" fill="{colour}" stroke="#000"/>'
    if shape == "diamond":
        q = r + 1
        d = _path((x, y - q), (x + q, y), (x, y + q), (x - q, y))
        return f'<path d="{d}" fill="{colour}" stroke="#fff"/>'
    d = _path((x - r, y - r), (x + r, y), (x - r, y + r))  # an arrow: still running
    return f'<path d="{d}" fill="{colour}" stroke="#000"/>'
