"""The launcher side: one thread moves every worker's output to the console and files.

Workers connect to the relay's Unix socket when they start (:mod:`._attach`)
and receive, over ``SCM_RIGHTS``, the write ends of their stdout and stderr:
pseudo-terminals when the launcher's stream is a terminal (raw mode, so bytes
pass unchanged; the terminal's window size), pipes otherwise. The relay thread
waits on all read ends at once with a selector and shows bytes as they arrive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import select
import selectors
import signal
import socket
import struct
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from icelaunch._console._screen import CHUNK_BYTES, Screen, Source
from icelaunch._console._sink import Sink, guard_forks
from icelaunch._console._text import expand
from icelaunch._rundir import PREFIX_TEMPLATE, read_hello, stderr_tail_path

logger = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
DRAIN_TIMEOUT_S = 2.0  # after the launch, for output held open by a worker's leftovers
JOIN_TIMEOUT_S = 5.0
MIN_COLUMNS = 20  # a worker's terminal is never narrower, however long the prefix
TAIL_BYTES = 1 << 16
# what a catch-up reads of one stream at most: far more than the kernel holds between a
# worker and the relay (a pipe's 64 KiB, a terminal's buffers), so all a worker wrote
# before the catch-up began, but bounded while a leftover process goes on writing
CATCH_UP_BYTES = 1 << 20
_READ_SIZE = 1 << 16
_READ_BUDGET = CHUNK_BYTES  # per stream and wake-up, so a stream holds under two chunks
_HELLO_MAX = 4096

#: file descriptors the relay holds; a worker forked from the launcher closes its copies
LAUNCHER_FDS: set[int] = set()


def new_address() -> str:
    """A fresh abstract Unix socket name (no file, no TMPDIR length limit)."""
    return f"icelaunch-console-{os.getpid()}-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Routes:
    """Where a launch's worker output goes.

    Args:
        template: the line prefix template (``""``: none).
        shown: ``shown(local_rank, stream)``: whether that stream reaches the console.
        rank_dir: ``rank_dir(attempt, local_rank)``: the folder for the stream's log
            file (``stdout.log``/``stderr.log``), or None for no file.
    """

    template: str = PREFIX_TEMPLATE
    shown: Callable[[int, str], bool] = lambda local_rank, stream: True
    rank_dir: Callable[[int, int], str | None] = lambda attempt, local_rank: None


class _Stream:
    """One worker stream being read: its read end, log file and console source."""

    def __init__(
        self, fd: int, log: IO[bytes] | None, source: Source | None, screen: Screen | None
    ):
        self.fd = fd
        self.log = log
        self.source = source
        self.screen = screen
        self.tail: bytearray | None = None  # the last TAIL_BYTES, for a failure report
        self.terminal: tuple[Sink, int, int] | None = None  # (console, prefix width, pid)


class Relay:
    """Owns the relay thread; use as a context manager around the launch."""

    def __init__(
        self,
        address: str,
        routes: Routes,
        stdout: IO[Any] | None = None,
        stderr: IO[Any] | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        """``on_closed``: called when the launcher's stdout or stderr is a pipe whose
        reader went away."""
        self.address = address
        self._routes = routes
        self._sinks = {
            "stdout": Sink(stdout or sys.stdout, on_closed),
            "stderr": Sink(stderr or sys.stderr, on_closed),
        }
        screens: dict[tuple[Any, ...], Screen] = {}
        self._screens = {
            name: screens.setdefault(sink.key, Screen()) for name, sink in self._sinks.items()
        }
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake_r = self._wake_w = -1
        self._streams: set[_Stream] = set()
        self._tails: dict[tuple[int, int], bytearray] = {}  # (attempt, local rank) -> stderr
        self._stopping = threading.Event()
        self._syncs: list[threading.Event] = []  # callers waiting for a catch-up
        self._syncs_lock = threading.Lock()
        self._winch: Any = None  # the SIGWINCH handler we replaced (while ours is in place)
        self._thread = threading.Thread(target=self._loop, name="icelaunch-console", daemon=True)

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Listen for workers and start the relay thread."""
        guard_forks()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._listener.bind("\0" + self.address)
        self._listener.listen(64)
        self._listener.setblocking(False)
        for fd in (self._listener.fileno(), self._wake_r, self._wake_w):
            LAUNCHER_FDS.add(fd)
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._woken)
        for sink in self._sinks.values():
            sink.stream.flush()
        self._thread.start()
        self._follow_resizes()

    def _follow_resizes(self) -> None:
        """On SIGWINCH, pass the console's new size to the workers' terminals (only
        from the main thread, where Python signal handlers live)."""
        if not any(s.is_tty for s in self._sinks.values()):
            return
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGWINCH)

        def on_winch(signum: int, frame: Any) -> None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"w")
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGWINCH, on_winch)
        self._winch = (previous, on_winch)

    def release_signals(self) -> None:
        """Put back the SIGWINCH handler (main thread only; elsewhere nothing to do)."""
        if self._winch is None or threading.current_thread() is not threading.main_thread():
            return
        previous, ours = self._winch
        self._winch = None
        if signal.getsignal(signal.SIGWINCH) is ours:
            signal.signal(signal.SIGWINCH, previous if previous is not None else signal.SIG_DFL)

    def close(self) -> None:
        """Show what the workers wrote up to their end, then stop and join the thread."""
        self.release_signals()
        if not self._thread.is_alive():  # never started (or it stopped on its own)
            if self._thread.ident is None:
                self._listener.close()
                self._selector.close()
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the console relay did not stop within %s s", JOIN_TIMEOUT_S)

    def sync(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Return once everything the workers wrote before this call is shown (open
        lines ended), without waiting for their streams to close."""
        self.release_signals()
        if not self._thread.is_alive():
            return
        done = threading.Event()
        with self._syncs_lock:
            self._syncs.append(done)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        if not done.wait(timeout):
            logger.debug("the console relay did not catch up within %s s", timeout)

    def stderr_files(self, attempt: int, folder: str) -> dict[int, str]:
        """The end of each rank's stderr in ``attempt``, written to files in ``folder``
        (call after :meth:`close`); local rank -> path."""
        paths: dict[int, str] = {}
        for (seen, local_rank), tail in sorted(self._tails.items()):
            if seen == attempt:
                paths[local_rank] = stderr_tail_path(folder, attempt, local_rank)
                with open(paths[local_rank], "wb") as fh:
                    fh.write(tail)
        return paths

    # --- the relay thread ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._serve()
        except Exception:  # a relay bug must not hang the launch; the files say the rest
            logger.exception("the console relay failed")
        finally:
            self._shutdown()

    def _serve(self) -> None:
        drain_until: float | None = None
        deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._stopping.is_set() and drain_until is None:
                drain_until = now + DRAIN_TIMEOUT_S
                self._stop_listening()
            if drain_until is not None and (not self._streams or now >= drain_until):
                return
            waits = [t for t in (deadline, drain_until) if t is not None]
            timeout = max(0.0, min(waits) - now) if waits else None
            for key, _ in self._selector.select(timeout):
                key.data(key)
            deadline = self._pump(time.monotonic())
            if self._syncs:
                self._catch_up()

    def _woken(self, key: selectors.SelectorKey) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        if b"w" in data:
            self._resize()

    def _resize(self) -> None:
        """The console's window changed: resize every worker terminal (less its
        prefix) and tell its worker with SIGWINCH, as a terminal would."""
        changed = {id(s) for s in self._sinks.values() if s.resized()}
        for stream in list(self._streams):
            if stream.terminal is None or id(stream.terminal[0]) not in changed:
                continue
            sink, width, pid = stream.terminal
            with contextlib.suppress(OSError):
                _set_size(stream.fd, sink, width)
                if pid > 0:
                    os.kill(pid, signal.SIGWINCH)

    def _catch_up(self) -> None:
        """For :meth:`sync`: read every stream to its current end, show it all."""
        with self._syncs_lock:
            waiting, self._syncs = self._syncs, []
        for stream in list(self._streams):
            self._read(stream, CATCH_UP_BYTES)  # bounded: a stream may still be flooding
        self._pump(time.monotonic(), final=True)
        for done in waiting:
            done.set()

    def _pump(self, now: float, final: bool = False) -> float | None:
        deadlines = [s.pump(now, final) for s in set(self._screens.values())]
        found = [d for d in deadlines if d is not None]
        return min(found) if found else None

    def _stop_listening(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        LAUNCHER_FDS.discard(self._listener.fileno())
        self._listener.close()

    def _shutdown(self) -> None:
        for stream in list(self._streams):
            self._drop(stream)
        self._pump(time.monotonic(), final=True)
        with self._syncs_lock:
            waiting, self._syncs = self._syncs, []
        for done in waiting:
            done.set()
        if self._listener.fileno() >= 0:
            self._stop_listening()
        for fd in (self._wake_r, self._wake_w):
            LAUNCHER_FDS.discard(fd)
            os.close(fd)
        self._selector.close()

    def _accept(self, key: selectors.SelectorKey) -> None:
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        LAUNCHER_FDS.add(conn.fileno())
        hello = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, lambda k: self._greet(conn, hello))

    def _greet(self, conn: socket.socket, hello: bytearray) -> None:
        """Read a worker's hello; answer with its stdout and stderr write ends."""
        try:
            data = conn.recv(_HELLO_MAX)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        hello += data
        if data and b"\n" not in hello and len(hello) < _HELLO_MAX:
            return
        self._selector.unregister(conn)
        LAUNCHER_FDS.discard(conn.fileno())
        with conn:
            if data and b"\n" in hello:
                self._give_streams(conn, read_hello(hello.split(b"\n", 1)[0]))

    def _give_streams(self, conn: socket.socket, who: dict[str, Any]) -> None:
        write_ends: list[int] = []
        try:
            for name in STREAMS:
                write_ends.append(self._open(who, name))
            conn.setblocking(True)
            conn.settimeout(JOIN_TIMEOUT_S)
            socket.send_fds(conn, [b"ok"], write_ends)
        except OSError as exc:
            logger.debug("could not hand rank %s its streams: %s", who.get("rank"), exc)
        finally:
            for fd in write_ends:
                os.close(fd)

    def _open(self, who: dict[str, Any], name: str) -> int:
        """Start reading one stream of a worker; return the end the worker writes to."""
        local_rank, attempt = int(who["local_rank"]), int(who["attempt"])
        sink = self._sinks[name] if self._routes.shown(local_rank, name) else None
        prefix = expand(self._routes.template, who)
        width = len(prefix.decode(errors="replace"))
        read_end, write_end = _pair(sink, width)
        source = screen = None
        if sink is not None:
            source = Source(prefix, sink.writer(), functools.partial(_readable, read_end))
            screen = self._screens[name]
        folder = self._routes.rank_dir(attempt, local_rank)
        log = open(os.path.join(folder, f"{name}.log"), "wb", buffering=0) if folder else None  # noqa: SIM115  (closed with the stream)
        stream = _Stream(read_end, log, source, screen)
        if sink is not None and sink.is_tty:
            stream.terminal = (sink, width, int(who.get("pid", 0)))
        if name == "stderr":
            stream.tail = self._tails.setdefault((attempt, local_rank), bytearray())
        self._streams.add(stream)
        LAUNCHER_FDS.add(read_end)
        self._selector.register(read_end, selectors.EVENT_READ, lambda k: self._read(stream))
        return write_end

    def _read(self, stream: _Stream, budget: int = _READ_BUDGET) -> int:
        """Read what is there, up to about ``budget`` bytes; how many (0: nothing now,
        or the stream ended and is dropped)."""
        pieces: list[bytes] = []
        got, ended = 0, False
        while got < budget:  # a terminal gives 4 KiB a read: one wake-up, many reads
            try:
                data = os.read(stream.fd, min(_READ_SIZE, budget - got))
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: a terminal whose every writer has closed it
                if exc.errno != errno.EIO:
                    logger.debug("reading worker output failed: %s", exc)
                data = b""
            if not data:
                ended = True
                break
            pieces.append(data)
            got += len(data)
        if got:
            self._deliver(stream, pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if ended:
            self._drop(stream)
        return got

    def _deliver(self, stream: _Stream, data: bytes) -> None:
        if stream.log is not None:
            stream.log.write(data)
        if stream.tail is not None:
            stream.tail += data
            del stream.tail[:-TAIL_BYTES]
        if stream.source is not None and stream.screen is not None:
            stream.screen.feed(stream.source, data, time.monotonic())

    def _drop(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        if stream.source is not None:
            stream.source.pending = lambda: False  # the fd number may be reused
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(stream.fd)
        LAUNCHER_FDS.discard(stream.fd)
        os.close(stream.fd)
        if stream.log is not None:
            stream.log.close()


def _readable(fd: int) -> bool:
    """Whether ``fd`` has bytes to read now (or is at its end)."""
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


def _pair(sink: Sink | None, prefix_width: int) -> tuple[int, int]:
    """(read end, write end) for a worker stream: a raw terminal for a terminal console,
    as wide as the console less the prefix, so a full-width line fits after it."""
    if sink is None or not sink.is_tty:
        read_end, write_end = os.pipe()
    else:
        read_end, write_end = os.openpty()
        tty.setraw(write_end)
        _set_size(write_end, sink, prefix_width)
    os.set_blocking(read_end, False)
    return read_end, write_end


def _set_size(fd: int, sink: Sink, prefix_width: int) -> None:
    """Give the terminal ``fd`` the console's size, less the prefix's width."""
    if sink.winsize is not None:
        rows, cols, xpixel, ypixel = struct.unpack("HHHH", sink.winsize)
        cols = max(cols - prefix_width, MIN_COLUMNS)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpixel, ypixel))
