"""Ctrl-C early in a launch, many times: how each launcher process ended.

Each launch is a fresh process in a session of its own (as a terminal's foreground
job); SIGINT goes to its whole process group a random delay after the launch
began: the call ``launcher(work)`` (``function``), ``icelaunch.cli.main`` with
``--devices auto`` (``command``: parsing imports torch), or a second launch in
the same process (``second``: torch imported, the fork server warm; it starts
its workers within ~0.1 s, so its delays are drawn from 0-0.15 s). Every other
pair of launches runs beside two CPU hogs. Each end is one of:

- ``stopped``: LaunchStopped / KeyboardInterrupt, exit 130, no traceback;
- ``abort``: SIGABRT ("terminate called ... pybind11::error_already_set");
- ``traceback``: a traceback (e.g. numpy imported twice inside torch's import);
- ``lost``: the launch ran to its end as if no Ctrl-C had come;
- ``survivor``: a process of the launch outlived it.

Prints the seed (replay with ``--seed``), one line per launch, and a count of each
end per door; the output of any end but ``stopped`` is kept in a folder it names.
Exit status 1 if any launch ended otherwise than ``stopped`` (or, for ``second``,
ran to its end before the signal came: then a Ctrl-C while the interpreter exits
may interrupt the wait for the launch's teardown, with a traceback).

    python benchmarks/early_ctrl_c.py [--launches 100] [--doors function,command]
                                      [--delays 0.05,0.5] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

FUNCTION = """
import sys
from pathlib import Path
from icelaunch import ElasticLauncher

def work():
    return 0

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    if sys.argv[2] == "second":
        launcher(work)  # torch imported, the fork server warm
    Path(sys.argv[1]).write_text("")
    try:
        launcher(work)
    except KeyboardInterrupt:
        sys.exit(130)
    print("RAN TO ITS END", flush=True)
"""
COMMAND = """
import sys
from pathlib import Path
from icelaunch.cli import main

Path(sys.argv[1]).write_text("")
code = main(["--devices", "auto", sys.argv[2]])
print("RAN TO ITS END" if code == 0 else "", flush=True)
sys.exit(code)
"""
RANK = "import time\ntime.sleep(3)\n"
EARLIER = "ended before the signal"
MARK = "EARLY_CTRL_C_MARK"  # in every process of one launch, to find survivors


def _processes_marked(value: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                if f"{MARK}={value}".encode() in fh.read():
                    found.append(int(name))
        except (OSError, ValueError):
            pass
    return found


def _launch(folder: str, door: str, delay: float) -> tuple[str, str]:
    """One launch, interrupted ``delay`` s after it began: (its end, its output)."""
    stamp = os.path.join(folder, f"began-{uuid.uuid4().hex}")
    mark = uuid.uuid4().hex
    script = "command.py" if door == "command" else "function.py"
    extra = os.path.join(folder, "rank.py") if door == "command" else door
    proc = subprocess.Popen(
        [sys.executable, os.path.join(folder, script), stamp, extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, MARK: mark, "PYTHONFAULTHANDLER": "1"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(stamp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    except ProcessLookupError:
        out = proc.communicate()[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return "hang", proc.communicate()[0]
    time.sleep(0.5)  # the workers end with their launcher within a second
    left = _processes_marked(mark)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if os.path.exists(stamp):
        os.remove(stamp)
    return _end(proc.returncode, out, bool(left)), out


def _end(code: int, out: str, left: bool) -> str:
    if code == -signal.SIGABRT or "terminate called" in out:
        return "abort"
    if "RAN TO ITS END" in out:
        return "lost"
    if "Traceback" in out or "Fatal Python error" in out:
        return "traceback"
    if left:
        return "survivor"
    return "stopped" if code == 130 else f"exit {code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=100)
    parser.add_argument("--doors", default="function,command")
    parser.add_argument("--delays", default="0.05,0.5", help="low,high (seconds)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored in the launchers
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    low, high = (float(x) for x in args.delays.split(","))
    doors = args.doors.split(",")
    folder = tempfile.mkdtemp(prefix="early-ctrl-c-")
    for name, code in (("function", FUNCTION), ("command", COMMAND), ("rank", RANK)):
        with open(os.path.join(folder, f"{name}.py"), "w") as fh:
            fh.write(textwrap.dedent(code))
    print(f"seed {seed}; outputs of launches that did not stop cleanly go to {folder}")
    counts: collections.Counter[tuple[str, bool, str]] = collections.Counter()
    for i in range(args.launches):
        door = doors[i % len(doors)]
        delay = rng.uniform(0.0, 0.15) if door == "second" else rng.uniform(low, high)
        busy = (i // len(doors)) % 2 == 1
        hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2 * busy)]
        try:
            end, out = _launch(folder, door, delay)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        if door == "second" and end == "lost":  # a second launch may be that quick
            end = EARLIER + (" (a traceback at exit)" if "Traceback" in out else "")
        counts[door, busy, end] += 1
        print(f"{i:4d} {door:8s} {'busy' if busy else 'idle'} {delay:.3f} s -> {end}", flush=True)
        if end != "stopped":
            with open(os.path.join(folder, f"{i}-{door}-{end}.txt"), "w") as fh:
                fh.write(out)
    print("\n| door | machine | end | launches |\n|---|---|---|---|")
    for (door, busy, end), n in sorted(counts.items()):
        print(f"| {door} | {'2 CPU hogs' if busy else 'as it is'} | {end} | {n} |")
    bad = sum(n for (_, _, end), n in counts.items() if not end.startswith(("stopped", EARLIER)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
