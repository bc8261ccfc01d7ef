"""Which thread runs host-side (CPU) work, so that a process keeps one OpenMP team.

A thread that runs a parallel CPU kernel (torch's, or ours) gets an OpenMP team of torch's
thread count, which lives as long as the thread. While the teams' threads outnumber the
cores, libgomp throttles every team's spin-wait (GOMP_SPINCOUNT in its manual), so each
parallel kernel pays a wake-up: on a CPU device a second, idle team made SmolLM2's batch-64
decode step 1.25x slower (`benchmarks/results/openmp_teams.json`). On CUDA the executor's
host worker runs the host attention kernels for the whole run; the calling thread must then
run no parallel CPU work of its own, and one-off CPU work (zeroing the pinned host KV pools)
runs on a thread that exits with its team (`on_passing_thread`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def on_passing_thread(fn: Callable[[], T]) -> T:
    """fn() on a new thread that exits when it returns (taking any OpenMP team that fn's
    kernels started with it); fn's result, or its exception raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="neo-passing") as pool:
        return pool.submit(fn).result()


def host_work(fn: Callable[[], T], beside_gpu: bool) -> T:
    """fn(), parallel CPU work of a thread that may drive a GPU: on a passing thread when it
    does (`beside_gpu`: the device is CUDA), here otherwise (on a CPU device this thread's
    team is the one the engine computes with)."""
    return on_passing_thread(fn) if beside_gpu else fn()
