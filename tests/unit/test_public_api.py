"""The public door: ``icelaunch.__all__`` and its lazy names."""

from __future__ import annotations

import pytest

import icelaunch

# Names loaded on first use, and the private module each one lives in. Those
# modules may not be written yet; only their absence excuses a missing name.
LAZY = {
    "ElasticLauncher": "icelaunch._launcher",
    "WorkerFailedError": "icelaunch._failures",
    "parse_devices": "icelaunch._devices",
}


def test_all_is_sorted_without_duplicates():
    assert icelaunch.__all__ == sorted(set(icelaunch.__all__))


def test_lazy_names_are_public():
    assert set(LAZY) <= set(icelaunch.__all__)


@pytest.mark.parametrize("name", icelaunch.__all__)
def test_every_public_name_resolves(name):
    try:
        value = getattr(icelaunch, name)
    except ModuleNotFoundError as exc:
        if name in LAZY and exc.name == LAZY[name]:
            pytest.skip(f"{LAZY[name]} is not written yet")
        raise
    assert value is not None
    assert name in dir(icelaunch)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'icelaunch' has no attribute 'nope'"):
        icelaunch.nope  # noqa: B018
