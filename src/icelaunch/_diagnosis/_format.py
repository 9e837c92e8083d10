"""Turn faulthandler dumps into readable stacks, and group ranks with the same stack.

faulthandler lists frames most recent call first; these views list them as
Python tracebacks do (most recent call last), leave out the launch machinery
around the user's code (icelaunch's bootstrap, multiprocessing, torch's
elastic wrapper, runpy) and mark the innermost user frame with ``>``.
"""

from __future__ import annotations

import functools
import linecache
import os
import re
import sysconfig
from collections.abc import Collection, Mapping
from dataclasses import dataclass

_FRAME = re.compile(r'^\s+File "(.*)", line (\d+|\?\?\?) in (.*)$')
_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)")
# icelaunch's own files, wherever the launch being looked at runs it from
_ICELAUNCH_FILE = re.compile(r"[/\\]icelaunch[/\\](?:_[a-z]+[/\\])?_?[a-z_]+\.py$")
_MACHINERY_PARTS = (
    os.sep + os.path.join("multiprocessing", ""),
    os.sep + os.path.join("torch", "distributed", "elastic", ""),
    os.sep + os.path.join("torch", "multiprocessing", ""),
    os.sep + "runpy.py",
    os.sep + "threading.py",
)
_MACHINERY_NAMES = ("<frozen runpy>",)
_INNER_FRAMES = 8  # library frames shown inside the innermost user frame


@dataclass(frozen=True)
class Frame:
    """One frame of a dump."""

    file: str
    line: int
    function: str

    @property
    def where(self) -> str:
        """``file.py:120 in name``, short."""
        return f"{os.path.basename(self.file)}:{self.line} in {self.function}"

    def source(self) -> str:
        """The frame's source line, stripped, or empty where the file is not readable."""
        return linecache.getline(self.file, self.line).strip() if self.line > 0 else ""


Thread = tuple[Frame, ...]  # outermost call first


def parse(dump: str) -> list[Thread]:
    """The threads of a faulthandler dump, oldest thread first, outermost frame first.

    >>> parse('Current thread 0x1 (most recent call first):\\n  File "a.py", line 3 in f\\n')
    [(Frame(file='a.py', line=3, function='f'),)]
    """
    threads: list[list[Frame]] = []
    for text in dump.splitlines():
        if _THREAD.match(text):
            threads.append([])
            continue
        match = _FRAME.match(text)
        if match and threads:
            line = int(match[2]) if match[2].isdigit() else 0
            threads[-1].append(Frame(match[1], line, match[3]))
    return [tuple(reversed(frames)) for frames in reversed(threads)]


def is_machinery(frame: Frame) -> bool:
    """Whether ``frame`` belongs to the launch machinery, not the user's program."""
    path = frame.file
    return (
        is_icelaunch(path)
        or path in _MACHINERY_NAMES
        or any(part in path for part in _MACHINERY_PARTS)
    )


def is_icelaunch(path: str) -> bool:
    """Whether ``path`` is one of icelaunch's own modules.

    >>> is_icelaunch("/x/site-packages/icelaunch/_engine/_agent.py"), is_icelaunch("/w/train.py")
    (True, False)
    """
    return _ICELAUNCH_FILE.search(path) is not None


# an installed package or the standard library of any Python (the job may run in another
# environment than the one looking at it: `icelaunch top` from pipx, a job in a venv)
_ANY_LIBRARY = re.compile(r"[/\\](?:site|dist)-packages[/\\]|[/\\]lib[/\\]python\d+\.\d+[/\\]")


def is_library(frame: Frame) -> bool:
    """Whether ``frame`` is in the standard library, an installed package or icelaunch.

    >>> is_library(Frame("/other/venv/lib/python3.12/site-packages/torch/x.py", 1, "f"))
    True
    >>> is_library(Frame("/home/me/train.py", 3, "main"))
    False
    """
    return _library_file(frame.file)


@functools.lru_cache(maxsize=4096)
def _library_file(path: str) -> bool:
    """:func:`is_library` by file (a sample looks at the same few files again and again)."""
    if path.startswith("<frozen ") or is_icelaunch(path):
        return True
    if any(path.startswith(root + os.sep) for root in _library_roots()):
        return True
    return _ANY_LIBRARY.search(path) is not None


@functools.lru_cache(maxsize=1)
def _library_roots() -> frozenset[str]:
    paths = sysconfig.get_paths()
    return frozenset(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def _trimmed(frames: Thread) -> Thread:
    """``frames`` from the outermost user frame on (else without the outer machinery)."""
    for index, frame in enumerate(frames):
        started_by_python = index == 0 and frame.file == "<string>"  # `python -c` of a server
        if not (started_by_python or is_library(frame) or is_machinery(frame)):
            return frames[index:]
    start = 0
    while start < len(frames) and (is_machinery(frames[start]) or frames[start].file == "<string>"):
        start += 1
    return frames[start:]


def user_frames(thread: Thread) -> Thread:
    """One thread's frames (outermost first) without the launch machinery around them."""
    return _trimmed(thread)


def user_threads(dump: str) -> list[Thread]:
    """The dump's threads without the launch machinery around them; machinery-only threads go."""
    return [thread for thread in map(_trimmed, parse(dump)) if thread]


def _focus(thread: Thread) -> int:
    """Index of the innermost user frame (else the innermost frame)."""
    for index in range(len(thread) - 1, -1, -1):
        if not is_library(thread[index]):
            return index
    return len(thread) - 1


def render_threads(threads: list[Thread], indent: str = "  ") -> str:
    """Threads as text, most recent call last, the innermost user frame marked ``>``.

    Import machinery frames are left out (as Python's tracebacks do), and of the
    library frames inside the marked one only the first few are shown.
    """
    lines: list[str] = []
    for number, thread in enumerate(threads):
        if len(threads) > 1:
            lines.append(f"{indent}thread {number + 1} of {len(threads)}:")
        focus = _focus(thread)
        for index, frame in enumerate(thread):
            if frame.file.startswith("<frozen importlib"):
                continue
            if index > focus + _INNER_FRAMES:
                lines.append(f"{indent}  ... {len(thread) - index} more frame(s) inside")
                break
            mark = "> " if index == focus else "  "
            lines.append(
                f'{indent}{mark}File "{frame.file}", line {frame.line}, in {frame.function}'
            )
            source = frame.source() if not is_library(frame) else ""
            if source:
                lines.append(f"{indent}      {source}")
    return "\n".join(lines)


def stack_text(dump: str) -> str:
    """One rank's stack as shown to the user (``err.stacks[rank]``)."""
    threads = user_threads(dump)
    if not threads:
        return "(no Python frames outside icelaunch's own code)"
    return render_threads(threads, indent="")


def rank_list(ranks: list[int]) -> str:
    """Ranks as ranges.

    >>> rank_list([0, 2, 3, 4, 7])
    '0,2-4,7'
    """
    parts: list[str] = []
    ordered = sorted(ranks)
    start = prev = ordered[0]
    for rank in [*ordered[1:], None]:
        if rank is not None and rank == prev + 1:
            prev = rank
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if rank is not None:
            start = prev = rank
    return ",".join(parts)


_MARKED = re.compile(r'^\s*> File "(.*)", line (\d+), in (.*)$')


def headline(text: str) -> str:
    """What a stack text's first thread does: ``dist.all_reduce(t)  (train.py:120 in f)``."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _MARKED.match(line)
        if match is None:
            continue
        where = f"{os.path.basename(match[1])}:{match[2]} in {match[3]}"
        after = lines[index + 1] if index + 1 < len(lines) else ""
        is_source = after.startswith(" " * (len(line) - len(line.lstrip()) + 6))
        return f"{after.strip()}  ({where})" if is_source and after.strip() else where
    return lines[0].strip() if lines else "no Python frames"


def group_texts(stacks: Mapping[int, str], expected: Collection[int] = ()) -> str:
    """Ranks with the same stack text shown once, the odd ones out first.

    Args:
        stacks: stack text (:func:`stack_text`) by global rank.
        expected: ranks that should have answered; those that did not are named.

    >>> print(group_texts({0: "x", 1: "y", 2: "x"}))
    rank 1: y
        y
    ranks 0,2: x
        x
    """
    groups: dict[str, list[int]] = {}
    for rank, text in stacks.items():
        groups.setdefault(text, []).append(rank)
    ordered = sorted(groups.items(), key=lambda item: (len(item[1]), min(item[1])))
    blocks = []
    for text, ranks in ordered:
        label = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {rank_list(ranks)}"
        if _is_note(text):  # a one-line note in parentheses says it all
            blocks.append(f"{label}: {text}")
            continue
        body = "\n".join("    " + line for line in text.splitlines())
        blocks.append(f"{label}: {headline(text)}\n{body}")
    silent = sorted(set(expected) - set(stacks))
    if silent:
        label = "rank" if len(silent) == 1 else "ranks"
        blocks.append(
            f"{label} {rank_list(silent)}: no stack (not yet running Python code of its own, "
            f"already ended, or no answer within the time bound)"
        )
    return "\n".join(blocks)


def _is_note(text: str) -> bool:
    return text.startswith("(") and text.endswith(")") and "\n" not in text


def group(
    dumps: Mapping[int, str],
    expected: Collection[int] = (),
    notes: Mapping[int, str] | None = None,
) -> str:
    """:func:`group_texts` of raw faulthandler dumps, and of ``notes`` (one line in
    parentheses) for ranks that gave no dump."""
    texts = {rank: stack_text(dump) for rank, dump in dumps.items()}
    return group_texts({**(notes or {}), **texts}, expected)
