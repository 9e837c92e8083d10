"""The worker side: everything that runs inside a worker process, before and around user code.

Data flow::

    a launched function (torch's entrypoint _run.run):
      payload --_transfer.receive--> Job; Identity.from_env (read once); "up" to the agent
      tied to the launcher; the launcher's environment taken (Job.env)
      _placement.place: CUDA_VISIBLE_DEVICES narrowed, LOCAL_RANK, OMP_NUM_THREADS,
                        NUMA binding (before CUDA and user code)
      _bootstrap.bootstrap_common: console attach (fds 1, 2 relayed),
                                   diagnosis (stack signal, crash file)
      WorkerContext (current()) --> join_process_group (loopback store for one
                                    node; a per-attempt prefix after restarts)
      fn(*args) --> value --_transfer.as_result--> torch's return queue; "returned"
                \\-> exception --> failure report (_rundir.report_path), exit 1

    a script (python -m icelaunch._worker._script --env-file F COMMAND...):
      F's variables set (spec, run folder, console); Identity.from_env (read once,
      kept for current()); _placement.place and _bootstrap.bootstrap_common as above
      COMMAND run in this process (runpy) or exec'd; the script calls
      icelaunch.init_process_group() itself; its exit status is the result
      _exit.exit_now: threads joined, atexit callbacks, garbage collected, then
                      os._exit (no interpreter teardown, where torch's threads abort)

``_user_group`` fixes torch's ``env://`` for functions that make their own group.
"""

from __future__ import annotations

from icelaunch._worker._context import WorkerContext, current, init_process_group
from icelaunch._worker._run import Job, run

__all__ = ["Job", "WorkerContext", "current", "init_process_group", "run"]
