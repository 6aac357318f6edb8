"""paused_collector: no garbage collection while a heavy import runs, the collector back on
(as it was) after, and the import's objects frozen out of later collections."""

from __future__ import annotations

import gc

from workbench.heavy_imports import paused_collector


def test_collector_paused_inside_restored_and_import_frozen_after():
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    try:
        with paused_collector():
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]  # objects the collector tracks, as an import makes
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(made)
    finally:
        gc.unfreeze()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with paused_collector():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
