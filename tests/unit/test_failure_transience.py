"""Which worker failures count as a transient set-up failure (no launch)."""

from __future__ import annotations

import pytest

from icelaunch import WorkerFailedError

pytestmark = pytest.mark.timeout(120)


def _error(message: str, before_user_code: bool) -> WorkerFailedError:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from icelaunch._engine._failures import RankFailure

    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file="")
    detail = RankFailure(0, 0, 1, None, "builtins.RuntimeError", message, "")
    return WorkerFailedError("job", {0: failure}, {0: detail}, {}, before_user_code)


@pytest.mark.parametrize(
    ("message", "before", "transient"),
    [
        ("Gloo connectFullMesh failed with ... Connection closed by peer", True, True),
        ("Gloo connectFullMesh failed with ... Connection closed by peer", False, False),
        ("No module named 'mymodule'", True, False),
    ],
)
def test_only_gloo_connection_failures_before_user_code_are_transient(
    message: str, before: bool, transient: bool
) -> None:
    assert _error(message, before).transient_setup_failure is transient
