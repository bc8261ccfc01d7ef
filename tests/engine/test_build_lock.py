"""A build lock left by a killed host-kernel build does not hang the next engine start."""

from __future__ import annotations

import os
import time

from neo_engine.cpu_kernel import STALE_BUILD_LOCK_S, clear_stale_build_lock


def test_a_stale_build_lock_is_removed_and_a_live_one_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / "neo_test_ext" / "lock"
    assert not clear_stale_build_lock("neo_test_ext")  # no lock: nothing to do
    lock.parent.mkdir(exist_ok=True)
    lock.touch()
    assert not clear_stale_build_lock("neo_test_ext")  # a build in progress keeps its lock
    assert lock.exists()
    old = time.time() - STALE_BUILD_LOCK_S - 60
    os.utime(lock, (old, old))
    assert clear_stale_build_lock("neo_test_ext")
    assert not lock.exists()
