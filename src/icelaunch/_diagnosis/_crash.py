"""A native crash's Python stack, as faulthandler wrote it: to the rank's crash file,
or to its stderr when the program called ``faulthandler.enable()`` itself."""

from __future__ import annotations

from icelaunch._diagnosis._format import stack_text

_FATAL = "Fatal Python error: "


def crash_stack(crash_file: str, stderr_file: str | None = None) -> str:
    """The Python stack at a native crash, as the user reads it; empty if none was written.

    Args:
        crash_file: the rank's crash file (``_rundir.crash_path``), where faulthandler
            writes unless the program enabled it again with a file of its own.
        stderr_file: the end of the rank's stderr, where ``faulthandler.enable()``
            called by the program itself writes (its default file).
    """
    dump = _read(crash_file)
    if not dump.strip() and stderr_file:
        text = _read(stderr_file)
        start = text.rfind(_FATAL)
        dump = text[start:] if start >= 0 else ""
    if not dump.strip():
        return ""
    first = dump.strip().splitlines()[0]
    return f"{first} (Python stack at the crash, most recent call last):\n" + stack_text(dump)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""
