"""The worker side: everything that runs inside a worker process, before and around user code.

Data flow::

    torch's agent starts a worker
      function: _run.run(payload) --receive--> Job --+
      script:   python -m icelaunch._worker._script  |
                                                     v
      Identity.from_env (read once) --> _bootstrap.bootstrap_common
                                          console attach (fds 1, 2 relayed)
                                          diagnosis (stack signal, crash file)
      _context.WorkerContext (current()) --> join_process_group (loopback store
                                             for one node; per-attempt prefix)
      user function --> value --as_result--> torch's return queue
                    \\-> exception --> failure report (_rundir.report_path)

``_user_group`` fixes torch's ``env://`` for functions that make their own group.
"""

from __future__ import annotations

from icelaunch._worker._context import WorkerContext, current, init_process_group
from icelaunch._worker._run import Job, run

__all__ = ["Job", "WorkerContext", "current", "init_process_group", "run"]
