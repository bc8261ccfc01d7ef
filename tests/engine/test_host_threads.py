"""`on_passing_thread`: one-off CPU work runs on a thread that leaves with its OpenMP team."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from neo_engine.host_threads import on_passing_thread


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_work_runs_on_another_thread_and_its_team_leaves_with_it():
    """A parallel kernel on the passing thread starts a team there; once the call returns,
    the process is back to its threads before the call (the team has gone, not parked)."""
    before = _threads()
    ran_on: list[int] = []

    def work() -> float:
        ran_on.append(threading.get_ident())
        return torch.ones(2**24).sum().item()  # 64 MiB: parallel wherever torch has 2+ threads

    assert on_passing_thread(work) == 2**24
    assert ran_on and ran_on[0] != threading.get_ident()
    deadline = time.monotonic() + 5.0
    while _threads() > before and time.monotonic() < deadline:
        time.sleep(0.01)  # a team's threads exit just after their thread
    assert _threads() == before


def test_an_exception_is_raised_to_the_caller():
    def fail() -> None:
        raise ValueError("from the passing thread")

    with pytest.raises(ValueError, match="from the passing thread"):
        on_passing_thread(fail)


def test_host_work_leaves_this_thread_only_beside_a_gpu():
    """`host_work` runs here on a CPU device (this thread's team computes there) and on a
    passing thread beside a GPU; the bandwidth probe beside a GPU reads through it."""
    from neo_engine.bandwidth import ReadProbe
    from neo_engine.host_threads import host_work

    here = threading.get_ident()
    assert host_work(threading.get_ident, beside_gpu=False) == here
    assert host_work(threading.get_ident, beside_gpu=True) != here
    gbs = ReadProbe(num_bytes=16 * 2**20, beside_gpu=True).read_gbs()
    assert 0 < gbs < 10_000
