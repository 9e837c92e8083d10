"""Worker output on the console, the pure parts: prefixes, templates, the screen's
interleaving, console options validated at freeze, and the torch pieces the relay
relies on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from icelaunch._console._screen import HOLD_S, Screen, Source
from icelaunch._console._text import CR, LINE, NONE, expand, place_prefixes
from icelaunch._rundir import check_template

# --- pure parts -------------------------------------------------------------------------

PLACE_CASES = [
    (b"a\nb\n", LINE, b"> a\n> b\n", LINE),
    (b"partial", LINE, b"> partial", NONE),
    (b" more\n", NONE, b" more\n", LINE),
    (b"\r 10%\r 20%", NONE, b"\r>  10%\r>  20%", NONE),
    (b"\r", NONE, b"\r", CR),  # the prefix waits for the redraw's first byte
    (b"x", CR, b"> x", NONE),
    (b"\n", CR, b"\n", LINE),  # \r\n line end: no second prefix
    (b"\n\n", LINE, b"> \n> \n", LINE),  # empty lines carry the prefix too
    (b"", LINE, b"", LINE),
]


@pytest.mark.parametrize(("data", "state", "shown", "after"), PLACE_CASES)
def test_prefix_at_line_starts_and_after_carriage_returns(
    data: bytes, state: int, shown: bytes, after: int
) -> None:
    assert place_prefixes(data, b"> ", state) == (shown, after)
    assert place_prefixes(data, b"", state)[0] == data  # no prefix: bytes unchanged


TEMPLATE_CASES = [
    ("[rank${rank}]: ", "[rank3]: "),
    ("${role_name}/${group_rank}/${local_rank} ", "trainer/1/2 "),
    ("$rank$$ ", "3$ "),
    ("", ""),
]


@pytest.mark.parametrize(("template", "expected"), TEMPLATE_CASES)
def test_prefix_templates(template: str, expected: str) -> None:
    fields = {"rank": 3, "local_rank": 2, "role_name": "trainer", "group_rank": 1}
    assert expand(check_template(template), fields) == expected.encode()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${nodename}", r"'\$\{nodename\}' is not one of \$\{rank\}"),
        ("cost: $5", r"'\$' is not one of"),
    ],
)
def test_bad_templates_are_named(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_template(template)
    with pytest.raises(TypeError, match="must be str"):
        check_template(3)


def _screen_with(n: int) -> tuple[Screen, list[Source], list[bytes]]:
    shown: list[bytes] = []
    screen = Screen()
    sources = [Source(f"[{i}] ".encode(), shown.append) for i in range(n)]
    return screen, sources, shown


def test_a_partial_line_alone_is_shown_at_once() -> None:
    screen, (a,), shown = _screen_with(1)
    screen.feed(a, b"loading...", 0.0)
    assert screen.pump(0.0) is None
    assert b"".join(shown) == b"[0] loading..."


def test_ranks_never_interleave_mid_line() -> None:
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"a1\na2 ha", 0.0)
    screen.feed(b, b"b1\nb2 ", 0.0)
    screen.pump(0.0)
    screen.feed(a, b"lf\n", 0.001)
    screen.feed(b, b"half\n", 0.001)
    screen.pump(0.001)
    lines = b"".join(shown).split(b"\n")
    assert lines == [b"[0] a1", b"[1] b1", b"[0] a2 half", b"[1] b2 half", b""]


def test_an_open_line_yields_after_hold_and_resumes_with_its_prefix() -> None:
    screen, (bar, log), shown = _screen_with(2)
    screen.feed(bar, b"\r 10%", 0.0)
    screen.pump(0.0)
    screen.feed(log, b"epoch 1\n", 0.01)
    deadline = screen.pump(0.01)
    assert b"".join(shown) == b"\r[0]  10%"  # the bar keeps the line a moment
    assert deadline == pytest.approx(HOLD_S)
    screen.pump(HOLD_S)
    screen.feed(bar, b"\r 20%", HOLD_S + 0.01)
    screen.pump(HOLD_S + 0.01, final=True)
    assert b"".join(shown) == b"\r[0]  10%\n[1] epoch 1\n\r[0]  20%\n"


def test_a_long_line_keeps_the_screen_while_the_relay_is_slow() -> None:
    """A starved relay reads the rest of a line late: it still completes the line."""
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"first half", 0.0)
    screen.pump(0.0)
    screen.feed(b, b"other\n", 0.001)
    screen.feed(a, b" second half\n", 1.0)  # read long after HOLD_S
    screen.pump(1.0)
    assert b"".join(shown) == b"[0] first half second half\n[1] other\n"


def test_an_open_line_with_bytes_still_to_read_is_not_broken() -> None:
    shown: list[bytes] = []
    more = [True]
    screen = Screen()
    a = Source(b"[0] ", shown.append, lambda: more[0])
    b = Source(b"[1] ", shown.append)
    screen.feed(a, b"writing", 0.0)
    screen.pump(0.0)
    screen.feed(b, b"other\n", 0.0)
    screen.pump(1.0)
    assert b"".join(shown) == b"[0] writing"
    more[0] = False
    screen.pump(1.0)
    assert b"".join(shown) == b"[0] writing\n[1] other\n"


def test_a_stale_partial_line_is_shown_while_others_wait() -> None:
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"no newline yet", 0.0)
    screen.feed(b, b"also partial", 0.0)
    screen.pump(0.0)
    assert shown == []
    screen.pump(HOLD_S)
    assert b"".join(shown) == b"[0] no newline yet"


def test_the_fork_server_child_code_we_wrap() -> None:
    """``_console._early`` wraps ``spawn._main`` in the fork server and reads the
    descriptors the fork server hands a new process; fail loudly if that changes."""
    import inspect
    from multiprocessing import forkserver

    source = inspect.getsource(forkserver._serve_one)
    assert "_forkserver._inherited_fds) = fds" in source
    assert "spawn._main(child_r, parent_sentinel)" in source


def _terminal_view(out: bytes) -> list[bytes]:
    """The lines a terminal leaves on screen: after each ``\\r``, the line is rewritten."""
    return [line.rsplit(b"\r", 1)[-1] for line in out.split(b"\n")]


def test_terminal_view_helper() -> None:
    assert _terminal_view(b"\r[r]: 1\r[r]: 2\nx") == [b"[r]: 2", b"x"]


FILTER_CASES = [
    (None, None),
    ("", None),
    ("0", (0,)),
    ("2, 0", (0, 2)),
    (1, (1,)),
    ([2, 1], (1, 2)),
]


@pytest.mark.parametrize(("value", "expected"), FILTER_CASES)
def test_ranks_filter_forms(value: object, expected: object) -> None:
    from icelaunch import ElasticLauncher

    spec = ElasticLauncher("cpu:0-2", local_ranks_filter=value).freeze().spec
    assert spec.local_ranks_filter == expected


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("3", ValueError, r"invalid local_ranks_filter '3': each entry must be a local rank"),
        ("0,x", ValueError, r"local rank of this node.s workers, 0-2"),
        ("-1", ValueError, r"e\.g\. local_ranks_filter='0'"),
        (True, TypeError, r"local_ranks_filter must be str"),
        ("", None, ""),
    ],
)
def test_bad_ranks_filter_is_named_at_freeze(
    value: object, error: type[Exception] | None, message: str
) -> None:
    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher("cpu:0-2", local_ranks_filter=value)
    if error is None:
        launcher.freeze()
        return
    with pytest.raises(error, match=message):
        launcher.freeze()


def test_bad_prefix_template_is_named_at_freeze() -> None:
    from icelaunch import ElasticLauncher

    with pytest.raises(ValueError, match=r"invalid log_line_prefix_template '\[\$\{worker\}\]'"):
        ElasticLauncher("cpu:0-1", log_line_prefix_template="[${worker}]").freeze()


def test_spec_with_console_options_survives_json() -> None:
    from icelaunch import ElasticLauncher
    from icelaunch._spec import spec_from_json, spec_to_json

    spec = ElasticLauncher("cpu:0-2", local_ranks_filter="0,2").freeze().spec
    assert spec_from_json(spec_to_json(spec)) == spec


def test_torch_log_layout_the_relay_relies_on(tmp_path: Path) -> None:
    """torch, given Std.NONE, redirects nothing and tails nothing, and makes one folder
    per attempt and rank (with error.json) in which the relay writes the logs."""
    from icelaunch._engine._logs import RelayedLogs

    logs = RelayedLogs(str(tmp_path))
    envs = {r: {"TORCHELASTIC_RUN_ID": "job", "TORCHELASTIC_RESTART_COUNT": "1"} for r in (0, 1)}
    dest = logs.reify(envs)
    assert dest.stdouts == dest.stderrs == {0: "", 1: ""}  # "" = the inherited stream
    assert dest.tee_stdouts == dest.tee_stderrs == {}
    for rank in (0, 1):
        folder = logs.rank_dir(1, rank)
        assert folder is not None and os.path.isdir(folder)
        assert Path(folder).relative_to(tmp_path).parts[1:] == ("attempt_1", str(rank))
        assert Path(folder).parent.parent.name.startswith("job_")
    assert logs.rank_dir(0, 0) is None


def test_the_owner_goes_on_with_its_open_line_while_others_wait() -> None:
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"10%", 0.0)
    screen.pump(0.0)
    screen.feed(b, b"other\n", 0.0)
    screen.feed(a, b" 20%", 0.001)
    screen.pump(0.001)
    assert b"".join(shown) == b"[0] 10% 20%"
    screen.pump(1.0, final=True)
    assert b"".join(shown) == b"[0] 10% 20%\n[1] other\n"
