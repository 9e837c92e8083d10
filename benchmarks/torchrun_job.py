"""The benchmark job as a script, for torchrun."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers import job

if __name__ == "__main__":
    job()
