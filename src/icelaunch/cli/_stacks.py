"""``icelaunch stacks [PID]``: the grouped stacks of running launches, from outside.

Launches are found through their job folders (``icelaunch_<pid>_*`` in the
temp directory); the ranks are asked as the launcher asks them, by the stack
signal, which they answer from C without stopping their work.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from icelaunch import _diagnosis, _rundir

USAGE = "icelaunch stacks [PID]"
DESCRIPTION = """\
Print the Python stacks (all threads) of the workers of a running launch,
ranks with the same stack shown once, without disturbing them. PID is the
process that launched (the one running ElasticLauncher or the icelaunch
command); without it, every launch on this machine that you may see.
To run a script file named `stacks` instead, write `icelaunch ./stacks`."""


def stacks_command(argv: list[str]) -> int:
    """Run ``icelaunch stacks``; return the exit status (1: no launch found)."""
    parser = argparse.ArgumentParser(prog="icelaunch stacks", usage=USAGE, description=DESCRIPTION)
    parser.add_argument("pid", nargs="?", type=int, help="the launching process")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    note_shadowed_script("stacks")
    launches = launches_or_say("stacks", args.pid)
    if not launches:
        return 1
    shown = [report(pid, folder) for pid, folder in launches]
    print("\n\n".join(shown))
    return 0


def note_shadowed_script(command: str) -> None:
    """Say how to run a script file named like the sub-command, if there is one here."""
    if os.path.isfile(command):
        print(
            f"icelaunch: note: showing {command}; to run the script ./{command}, write "
            f"`icelaunch ./{command}`",
            file=sys.stderr,
        )


def launches_or_say(command: str, pid: int | None) -> list[tuple[int, str]]:
    """:func:`find_launches`; if there is none, one line on stderr says so."""
    launches = find_launches(pid)
    if not launches:
        which = f"with pid {pid}" if pid else "running"
        print(f"icelaunch {command}: no icelaunch launch {which} on this machine", file=sys.stderr)
    return launches


def find_launches(pid: int | None = None) -> list[tuple[int, str]]:
    """(launcher pid, job folder) of running launches this user may see, oldest pid first."""
    folder = tempfile.gettempdir()
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        owner = _rundir.job_folder_pid(name)
        if owner is None or (pid is not None and owner != pid):
            continue
        path = os.path.join(folder, name)
        if os.access(path, os.R_OK | os.X_OK) and _alive(owner):
            found.append((owner, path))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def report(pid: int, job_dir: str) -> str:
    """The grouped stacks of the newest attempt of one launch, under a heading."""
    heading = f"launch {pid} ({_diagnosis.command_line(pid)})"
    for run_dir in _rundir.run_folders(job_dir):
        ranks = _diagnosis.known_ranks(run_dir)
        if ranks:
            listening = {r: info for r, info in ranks.items() if info.listens}
            dumps = _diagnosis.ask(listening, owner=False)
            notes = _diagnosis.why_silent(ranks, dumps)
            view = _diagnosis.group(dumps, sorted(ranks), notes)
            return f"{heading}, {len(ranks)} rank(s):\n{view}"
    return f"{heading}: no rank is running Python code of its own yet"
