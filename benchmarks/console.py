"""Console relay throughput: worker output through a terminal, against ``cat``.

Each run is a fresh launcher process whose stdout and stderr are a raw
pseudo-terminal (Python's ``pty``), read here as fast as it comes; its ranks wait
for each other, then each writes its share of the bytes with ``os.write`` to its
own terminal, which the relay reads, prefixes and writes to ours. The baseline is
``cat`` of a file holding the same bytes, onto the same kind of terminal, read by
the same loop. The floor is ``cat`` onto a terminal of a small Python forwarder
that moves its bytes to ours as the relay does, without prefixes: what any relay
that gives workers a terminal pays (a second terminal on the way). Throughput is
the bytes written over the time from when writing began (the first rank's
first write, the forwarder starting ``cat``, ``cat`` started) to the last byte
read, so bytes the relay holds back count against it; the launch itself does
not count. Prints a markdown table, with how long the relay's first byte took;
the runs are interleaved (relay, floor, cat, relay, ...) so noise hits all alike.

    python benchmarks/console.py [--repeats 3] [--mib 64] [--ranks 1,8]
                                 [--line 0,100] [--json PATH]

``--line 0`` is a flood without line ends (cut into prefixed chunks while ranks
contend), ``--line 100`` lines of 100 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = 1 << 16
TIMEOUT_S = 300


def payload(size: int, line: int, rank: int = 0) -> bytes:
    """``size`` bytes a rank writes: one letter, with a line end every ``line`` bytes."""
    letter = b"abcdefgh"[rank % 8 : rank % 8 + 1]
    if not line:
        return letter * size
    one = letter * (line - 1) + b"\n"
    return (one * (size // line + 1))[:size]


def note_start(path: str) -> None:
    """Add the time now (CLOCK_MONOTONIC, one for all processes) to ``path``."""
    with open(path, "a") as fh:
        fh.write(f"{time.monotonic()!r}\n")


def flood(launcher: Any, size: int, line: int, started: str) -> int:
    """The job of every rank: wait for the others, then write ``size`` bytes."""
    import torch.distributed as dist

    dist.barrier()
    data = memoryview(payload(size, line, launcher.rank))
    note_start(started)
    while data:
        data = data[os.write(1, data[:BLOCK]) :]
    return int(launcher.rank)


def job(ranks: int, size: int, line: int, started: str) -> None:
    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher(f"cpu:0-{ranks - 1}").freeze()
    launcher(flood, launcher, size, line, started)


def forward(path: str, started: str) -> None:
    """The floor of any relay that gives workers a terminal: ``cat path`` onto a
    terminal of our own, its bytes moved to our stdout as they come (read as the
    relay reads, written as the relay writes, no prefix)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    note_start(started)
    proc = subprocess.Popen(["cat", path], stdin=subprocess.DEVNULL, stdout=slave)
    os.close(slave)
    os.set_blocking(master, False)
    out = sys.stdout.buffer
    ended = False
    while not ended:
        select.select([master], [], [])
        pieces: list[bytes] = []
        got = 0
        while got < BLOCK:
            try:
                data = os.read(master, BLOCK - got)
            except BlockingIOError:
                break
            except OSError:  # EIO: cat closed its terminal
                data = b""
            if not data:
                ended = True
                break
            pieces.append(data)
            got += len(data)
        out.write(b"".join(pieces))
        out.flush()
    proc.wait()


def read_pty(argv: list[str], started: str) -> dict[str, float]:
    """Run ``argv`` on a raw terminal; the bytes read, and the seconds to the first
    and the last byte from when writing began: the earliest time ``argv`` noted in
    the empty file ``started`` (``cat``, noting none: when it was started)."""
    master, slave = os.openpty()
    tty.setraw(slave)  # bytes pass unchanged, as for the relay's own terminals
    note_start(started)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # no launcher warning before the bytes
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    first = last = 0.0
    total = 0
    try:
        while True:
            try:
                data = os.read(master, 1 << 20)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            last = time.monotonic()
            first = first or last
            total += len(data)
    finally:
        os.close(master)
    if proc.wait(timeout=TIMEOUT_S) != 0:
        raise RuntimeError(f"{argv} failed with {proc.returncode}")
    with open(started) as fh:
        noted = [float(x) for x in fh.read().split()]
    start = min(noted[1:]) if len(noted) > 1 else noted[0]  # the child's own, if any
    return {"bytes": total, "seconds": last - start, "first_s": first - start}


def measure(ranks: int, mib: int, line: int, cat_file: str) -> dict[str, float]:
    """One run each of the relay, the floor and ``cat``, the same bytes; MB/s of each."""
    size = (mib << 20) // ranks
    moved = size * ranks
    argvs = {
        "relay": [sys.executable, __file__, "job", str(ranks), str(size), str(line)],
        "floor": [sys.executable, __file__, "forward", cat_file],
        "cat": ["cat", cat_file],
    }
    found: dict[str, float] = {}
    for name, argv in argvs.items():
        with tempfile.TemporaryDirectory(prefix="icelaunch-bench-") as folder:
            started = os.path.join(folder, "started")
            run = read_pty(argv if name == "cat" else [*argv, started], started)
        if run["bytes"] < moved or (name != "relay" and run["bytes"] != moved):
            raise RuntimeError(f"bytes lost: wrote {moved}, {name} moved {run['bytes']}")
        found[name] = moved / run["seconds"] / 1e6
        found[f"{name}_first_ms"] = run["first_s"] * 1000
    return found


def stat(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mib", type=int, default=64, help="MiB written in all, per run")
    parser.add_argument("--ranks", default="1,8")
    parser.add_argument("--line", default="0,100", help="line lengths (0: no line ends)")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    rows = [
        "| output | ranks | relay MB/s | floor MB/s | cat MB/s | cat / relay | floor / relay |"
        " relay's first byte ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results: dict[str, Any] = {}
    for line in [int(x) for x in args.line.split(",")]:
        for ranks in [int(x) for x in args.ranks.split(",")]:
            size = (args.mib << 20) // ranks
            with tempfile.NamedTemporaryFile(prefix="icelaunch-bench-") as fh:
                for rank in range(ranks):
                    fh.write(payload(size, line, rank))
                fh.flush()
                runs = [measure(ranks, args.mib, line, fh.name) for _ in range(args.repeats)]
            relay, floor, cat = ([r[k] for r in runs] for k in ("relay", "floor", "cat"))
            by_cat = statistics.median(cat) / statistics.median(relay)
            by_floor = statistics.median(floor) / statistics.median(relay)
            what = "no line ends" if not line else f"{line}-byte lines"
            first = [r["relay_first_ms"] for r in runs]
            rows.append(
                f"| {what} | {ranks} | {stat(relay)} | {stat(floor)} | {stat(cat)} "
                f"| {by_cat:.2f}x | {by_floor:.2f}x | {stat(first)} |"
            )
            results[f"{line}/{ranks}"] = runs
            print(f"  console: {what}, {ranks} ranks done", file=sys.stderr)
    print(f"console relay, {args.mib} MiB per run through a terminal, median (min-max):")
    print("\n".join(rows))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["job"]:
        job(*(int(x) for x in sys.argv[2:5]), sys.argv[5])
    elif sys.argv[1:2] == ["forward"]:
        forward(*sys.argv[2:4])
    else:
        main()
