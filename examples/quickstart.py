"""The specification's example: one worker per device, each reporting who it is.

Run: ``python examples/quickstart.py [devices]`` (default ``auto:*``: every GPU,
else one worker per CPU core).
"""

from __future__ import annotations

import sys

from icelaunch import ElasticLauncher


def worker(launcher: ElasticLauncher) -> int:
    """Print this worker's place in the job and return a value to the parent."""
    print("rank", launcher.rank)
    print("local_rank", launcher.local_rank)
    print("device", launcher.assigned_device)
    return int(launcher.rank) * 10


if __name__ == "__main__":
    launcher = ElasticLauncher(sys.argv[1] if len(sys.argv) > 1 else "auto:*").freeze()
    print(launcher(worker, launcher))
