"""A run report read back: its lanes, its picture, its summary.

- :func:`rows`: one :class:`~icelaunch._watching._lanes.Lane` per global rank
  (pure data, from the report alone: x is seconds since the launch began);
- :func:`draw`: the picture, by the file's suffix: ``.html`` (one self-contained
  file, inline SVG; ``_svg``) or ``.png``/``.svg``/``.pdf`` (matplotlib; ``_plot``);
- :func:`summary`: a short text, as ``icelaunch report`` prints it.
"""

from __future__ import annotations

import os
from typing import Any

from icelaunch._watching import _plot, _svg
from icelaunch._watching._lanes import Lane, coarsened, extent_s, lanes, restarts
from icelaunch._watching._record import SCHEMA, VERSION

#: the picture formats, by file suffix: .html needs nothing, the others matplotlib
SUFFIXES = (".html", ".png", ".svg", ".pdf")
#: beyond this many segments in all, a picture joins those narrower than a pixel
MAX_SEGMENTS = 20_000
MIB = 1 << 20
#: the report versions this module reads
VERSIONS = (VERSION,)
#: what rows() and summary() need of a report, beside its schema and version
NEEDED = ("target", "duration_s", "outcome", "events", "ranks", "findings")


def check(report: object) -> None:
    """Raise ValueError, saying why, unless ``report`` is a run report of a version read here.

    >>> check({"schema": "icelaunch-run-report", "version": 9})
    Traceback (most recent call last):
    ...
    ValueError: a run report of version 9: this icelaunch reads version 1
    """
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ValueError(f'not an icelaunch run report (it has no "schema": "{SCHEMA}")')
    version = report.get("version")
    if version not in VERSIONS:
        known = ", ".join(str(v) for v in VERSIONS)
        raise ValueError(
            f"a run report of version {version!r}: this icelaunch reads version {known}"
        )
    missing = [key for key in NEEDED if key not in report]
    if missing:
        raise ValueError(f"an incomplete run report: it lacks {', '.join(missing)}")


def rows(report: dict[str, Any]) -> list[Lane]:
    """One lane per global rank of ``report`` (a run report, version 1), by rank."""
    return lanes(report)


def picture_format(path: str) -> str:
    """The format a picture at ``path`` is drawn in, from its suffix.

    >>> picture_format("run.HTML"), picture_format("out/run.png")
    ('html', 'png')
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot draw a timeline as {path!r}: name a file ending in .html (no dependencies) "
            "or .png, .svg, .pdf (matplotlib), e.g. 'run.html'"
        )
    return suffix[1:]


def draw(report: dict[str, Any], path: str) -> None:
    """Draw ``report``'s timeline into ``path``, in the format its suffix names.

    Raises:
        ValueError: an unknown suffix (see :data:`SUFFIXES`).
        ImportError: a matplotlib format without matplotlib (the message says what to
            install).
    """
    fmt = picture_format(path)
    found = rows(report)
    extent = extent_s(report, found)
    resolution = 0.0
    if sum(len(lane.segments) for lane in found) > MAX_SEGMENTS:
        resolution = extent / _svg.PLOT
        found = coarsened(found, resolution)
    if fmt == "html":
        _svg.write(path, report, found, extent, resolution, summary(report))
    else:
        _plot.write(path, fmt, report, found, extent)


def summary(report: dict[str, Any]) -> str:
    """A short text: the target, the outcome, one line per rank, the findings, the failure."""
    outcome = report["outcome"]
    lines = [f"run report: {report['target']}", f"outcome:  {_outcome(outcome)}"]
    lines.append(
        f"duration: {duration(float(report['duration_s']))}, from {report.get('started_at', '?')}"
        f" on {report.get('host', '?')} (icelaunch {report.get('icelaunch', '?')}, "
        f"torch {report.get('torch', '?')})"
    )
    lines.extend(_rank_lines(report["ranks"]))
    marks = restarts(report["events"])
    if marks:
        lines.append(f"restarts: {len(marks)}, at " + ", ".join(f"{m.at_s:.1f} s" for m in marks))
    findings = report["findings"]
    if findings:
        lines.append("findings:")
        lines.extend(
            f"  {f['from_s']:.1f}-{f['to_s']:.1f} s {f['kind']}: {f['message']}" for f in findings
        )
    failure = report.get("failure")
    if failure and str(failure.get("message", "")).strip():
        lines.append("failure:  " + str(failure["message"]).strip().splitlines()[0])
    return "\n".join(lines)


def _outcome(outcome: dict[str, Any]) -> str:
    text = str(outcome["status"])
    if outcome.get("message"):
        text += f": {outcome['message']}"
    extra = []
    if outcome.get("signal"):
        extra.append(f"signal {outcome['signal']}")
    if outcome.get("exit_status") is not None:
        extra.append(f"exit status {outcome['exit_status']}")
    return "; ".join([text, *extra])


def _rank_lines(entries: list[dict[str, Any]]) -> list[str]:
    """A table: one line per rank, its last attempt (earlier ones in the last column)."""
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for e in sorted(entries, key=lambda e: (e["rank"], e["attempt"])):
        by_rank.setdefault(int(e["rank"]), []).append(e)
    gpu = any(e.get("gpu_peak_bytes") for e in entries)
    head = f"{'rank':>5}  {'pid':>7}  {'attempt':>7}  {'end':<8}  {'status':<13}  {'peak MiB':>8}"
    head += f"  {'GPU MiB':>8}" * gpu + f"  {'CPU s':>8}"
    lines = [head]
    for rank, attempts in by_rank.items():
        e = attempts[-1]
        line = (
            f"{rank:>5}  {e['pid']:>7}  {e['attempt']:>7}  {e['end']:<8}  {_status(e):<13}  "
            f"{_mib(e['peak_rss_bytes']):>8}"
        )
        line += f"  {_mib(e.get('gpu_peak_bytes')):>8}" * gpu
        line += f"  {'-' if e['cpu_s'] is None else format(e['cpu_s'], '.2f'):>8}"
        earlier = [f"{a['attempt']}: {a['end']}, {_status(a)}" for a in attempts[:-1]]
        lines.append(line + (f"  (attempt {'; '.join(earlier)})" if earlier else ""))
    return lines if by_rank else ["no rank started"]


def _status(entry: dict[str, Any]) -> str:
    if entry.get("signal"):
        return str(entry["signal"])
    code = entry.get("exit_code")
    return "-" if code is None else f"exit {code}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / MIB:.0f}"


def duration(seconds: float) -> str:
    """Seconds as people read them.

    >>> duration(2.345), duration(125), duration(3725)
    ('2.3 s', '2 min 05 s (125.0 s)', '1 h 02 min 05 s (3725.0 s)')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    h, m, s = whole // 3600, whole // 60 % 60, whole % 60
    text = f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"
    return f"{text} ({seconds:.1f} s)"
