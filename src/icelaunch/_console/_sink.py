"""A console destination of the relay: the launcher's stdout or stderr at launch time."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import struct
import termios
import threading
from collections.abc import Callable
from typing import IO, Any

# Held while the relay writes to the launcher's streams, and across every fork: a
# worker forked (start_method="fork") mid-write would inherit the stream's lock held.
_WRITING = threading.Lock()
_hooked = False


def guard_forks() -> None:
    """Make forks of this process wait for a write to the console to finish (once)."""
    global _hooked
    if not _hooked:
        os.register_at_fork(
            before=_WRITING.acquire,
            after_in_parent=_WRITING.release,
            after_in_child=_WRITING.release,
        )
        _hooked = True


class Sink:
    """Writes worker bytes to one of the launcher's streams (a file, a terminal, a
    notebook's stream object), and says what a worker stream for it should be."""

    def __init__(self, stream: IO[Any], on_closed: Callable[[], None] | None = None) -> None:
        """``on_closed``: called (once) when the stream's reader went away (EPIPE: the
        ``head`` of ``icelaunch ... | head -1`` exited)."""
        self.stream = stream
        self._on_closed = on_closed
        self._binary: IO[bytes] | None = getattr(stream, "buffer", None)
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        fd = self._fd = _fileno(stream)
        self.is_tty = fd is not None and os.isatty(fd)
        self.winsize = _winsize(fd) if self.is_tty and fd is not None else None
        self.key: tuple[Any, ...] = ("object", id(stream))
        if fd is not None:
            st = os.fstat(fd)
            self.key = ("file", st.st_dev, st.st_ino, st.st_rdev)

    def resized(self) -> bool:
        """Read the terminal's window size again; whether it changed."""
        if not self.is_tty or self._fd is None:
            return False
        size = _winsize(self._fd)
        changed, self.winsize = size != self.winsize, size
        return changed

    def writer(self) -> Callable[[bytes], None]:
        """A writer for one worker stream (text consoles decode each stream on its own,
        so a character split between two reads stays whole)."""
        decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        return lambda data: self.write(data, decode)

    def write(self, data: bytes, decode: Callable[[bytes], str] | None = None) -> None:
        """Write ``data`` now. A pipe whose reader went away calls ``on_closed`` (the
        launch stops, as a shell user expects of ``| head``); other errors of a console
        that went away are ignored (the log files go on)."""
        with _WRITING, contextlib.suppress(OSError, ValueError):
            try:
                if self._binary is not None:
                    self.stream.flush()
                    self._binary.write(data)
                    self._binary.flush()
                else:
                    self.stream.write((decode or self._decode)(data))
                    self.stream.flush()
            except BrokenPipeError:
                on_closed, self._on_closed = self._on_closed, None
                if on_closed is not None:
                    on_closed()
                raise


def _fileno(stream: IO[Any]) -> int | None:
    """The stream's file descriptor when it is a real file (not e.g. a notebook stream)."""
    if getattr(stream, "buffer", None) is None:
        return None
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


def _winsize(fd: int) -> bytes | None:
    """The terminal's window size, as TIOCGWINSZ gives it."""
    try:
        size = fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    except OSError:
        return None
    return size if struct.unpack("HHHH", size)[:2] != (0, 0) else None
