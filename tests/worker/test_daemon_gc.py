"""tune_gc: what the daemon's entry points do to the collector (docs/performance.md)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest

from worker.daemon import GC_GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    _, older, oldest = gc.get_threshold()
    gc.unfreeze()
    before = gc.get_freeze_count()
    kept = [[] for _ in range(1_000)]  # lists are tracked by the collector
    with warnings.catch_warnings():
        # tune_gc collects first: earlier tests' leftovers must not fail this one
        warnings.simplefilter("ignore", ResourceWarning)
        tune_gc()
    assert gc.get_freeze_count() >= before + len(kept)
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, older, oldest)
