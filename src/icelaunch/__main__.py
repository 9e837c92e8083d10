"""``python -m icelaunch``: the same as the ``icelaunch`` command."""

from __future__ import annotations

import sys

from icelaunch.cli import main

if __name__ == "__main__":
    sys.exit(main())
