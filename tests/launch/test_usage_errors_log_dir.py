"""A usage error found by a launch ends at once with one clear line."""

from __future__ import annotations

import pytest

from icelaunch import ElasticLauncher

pytestmark = pytest.mark.timeout(120)


def test_a_log_dir_that_cannot_be_created_names_it() -> None:
    launcher = ElasticLauncher("cpu", log_dir="/proc/no/such/logs").freeze()
    with pytest.raises(ValueError, match=r"invalid log_dir '/proc/no/such/logs': cannot create"):
        launcher(print)
