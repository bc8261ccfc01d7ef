"""Steady runs are exact: every policy gives the same results with and without them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from neo_sim.runs import RunSpec, execute
from neo_sim.scheduler import POLICIES

WORKLOADS = {
    # Low load on a big GPU: long runs of identical decode iterations between arrivals.
    "h100-low-load": dict(hardware="h100", rate=4.0, input_len=512, output_len=128),
    # Offline, KV-bound on a small GPU: swaps, preemption, CPU offload, then a steady tail.
    "t4-offline": dict(hardware="t4", rate=math.inf, gpu_kv_blocks=54, max_batch_tokens=832),
    # Bursty arrivals with short outputs: runs cut by arrivals and finishes.
    "a10g-bursty": dict(hardware="a10g", rate=3.0, burstiness=0.3, input_len=200, output_len=20),
}


def run(policy: str, workload: dict, steady: bool):
    spec = RunSpec.of(
        model="llama-2-7b",
        policy=policy,
        num_requests=60,
        seed=5,
        steady_runs=steady,
        iteration_records=True,
        timeline_iterations=0,
        **workload,
    )
    return execute(spec)


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_results_are_identical_with_and_without_steady_runs(policy, workload):
    fast = run(policy, WORKLOADS[workload], steady=True)
    slow = run(policy, WORKLOADS[workload], steady=False)
    assert slow.result.steady_iterations == 0
    # Per request and per iteration: bit for bit (the same float operations in the same order).
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.iterations, slow.iterations, check_exact=True)
    # The summary pools inter-token gaps in another order: means may differ in the last bits.
    assert fast.summary.keys() == slow.summary.keys()
    for key, value in slow.summary.items():
        if isinstance(value, float) and not math.isnan(value):
            assert fast.summary[key] == pytest.approx(value, rel=1e-12, abs=0), key
        else:
            assert fast.summary[key] == value or (
                value != value and fast.summary[key] != fast.summary[key]
            ), key


def test_steady_runs_really_skip_the_scheduler_where_they_can():
    fast = run("gpu-only", WORKLOADS["h100-low-load"], steady=True)
    assert fast.result.steady_iterations > 0.8 * len(fast.iterations)
    neo = run("neo", WORKLOADS["h100-low-load"], steady=True)
    assert neo.result.steady_iterations > 0.8 * len(neo.iterations)
