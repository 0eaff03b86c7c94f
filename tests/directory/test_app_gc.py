"""The directory raises the young GC threshold while it serves, and restores it after."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from openred.directory import app as directory_app


@pytest.fixture
def thresholds() -> Iterator[tuple[int, ...]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)
    directory_app._gc_users.clear()


def test_threshold_is_raised_while_any_directory_serves(thresholds: tuple[int, ...]) -> None:
    gc.set_threshold(700, 10, 10)
    directory_app._serving_gc(+1)
    assert gc.get_threshold() == (directory_app.GC_YOUNG_THRESHOLD, 10, 10)
    directory_app._serving_gc(+1)  # a second directory in the same process
    directory_app._serving_gc(-1)
    assert gc.get_threshold() == (directory_app.GC_YOUNG_THRESHOLD, 10, 10)
    directory_app._serving_gc(-1)
    assert gc.get_threshold() == (700, 10, 10)
    directory_app._serving_gc(-1)  # an unmatched stop changes nothing
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_served_directory_raises_it_and_restores_it_when_stopped(
    directory_factory: Any, thresholds: tuple[int, ...],
) -> None:
    gc.set_threshold(700, 10, 10)
    async with directory_factory():
        assert gc.get_threshold()[0] == directory_app.GC_YOUNG_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)
