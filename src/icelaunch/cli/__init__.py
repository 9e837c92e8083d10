"""The command line: ``icelaunch [options] script.py``, ``icelaunch stacks [PID]``,
``icelaunch report RUN.json``.

Data flow::

    argv --_parser.build_parser (options derived from ElasticLauncher.__freeze__,
            torchrun's spellings from _torchrun)--> parse --> Invocation(spec, command)
         --_main.run--> engine.launch_command --> exit status (0, the first failed
            rank's code, 124 timeout, 128+N signal, 2 usage)
    `icelaunch stacks [PID]` --_stacks--> job folders in the temp dir --> grouped stacks
    `icelaunch report RUN.json [--timeline OUT]` --_report--> summary (and a picture)
    `icelaunch top [PID]` --_top--> the same job folders --> live.json (_watching.read), or
        its own samples (_watching.Sampler) --> _top_view: a rich table (terminal) or text

``--help`` imports no torch: the engine is imported only to launch; ``rich`` only by
``icelaunch top``.
"""

from __future__ import annotations

from icelaunch._errors import EXIT_TIMEOUT, exit_status
from icelaunch.cli._main import EXIT_INTERRUPTED, EXIT_USAGE, main, run
from icelaunch.cli._parser import PROG, Invocation, build_parser, devices_for_nproc, parse

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "Invocation",
    "build_parser",
    "devices_for_nproc",
    "exit_status",
    "main",
    "parse",
    "run",
]
