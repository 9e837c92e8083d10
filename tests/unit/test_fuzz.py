"""Property tests: every input freezes, or raises ValueError/TypeError quoting it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icelaunch import ElasticLauncher, parse_devices

GRAMMAR = st.text(alphabet="autocpd:*,-0123456789 ", max_size=14)
SPECS = st.one_of(
    GRAMMAR,
    st.text(max_size=12),
    st.sampled_from(["auto", "cpu", "cuda", "cpu:0-3", "auto:*", "cpu:*", "cuda:0-2,7"]),
)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    GRAMMAR,
    st.lists(st.integers(), max_size=3),
)
PARAMETERS = [name for name in list(inspect.signature(ElasticLauncher.__freeze__).parameters)[1:]]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _quoted(value: Any, message: str) -> bool:
    return repr(value) in message or str(value) in message


@FUZZ
@given(SPECS)
def test_device_grammar_never_escapes(spec: str) -> None:
    try:
        devices, backend = parse_devices(spec)
    except (ValueError, TypeError) as exc:
        assert _quoted(spec, str(exc)), str(exc)
    else:
        assert devices and backend in ("gloo", "nccl")


@pytest.mark.parametrize("name", PARAMETERS)
@FUZZ
@given(value=ANY_VALUE)
def test_every_freeze_argument_is_validated(name: str, value: Any) -> None:
    arguments: dict[str, Any] = {"devices": "cpu", name: value}
    try:
        ElasticLauncher(**arguments).freeze()
    except (ValueError, TypeError) as exc:
        assert _quoted(value, str(exc)), f"{name}={value!r}: {exc}"
