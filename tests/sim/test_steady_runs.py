"""Steady runs are exact: every policy gives the same results with and without them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from neo_sim.profile import FusedDecodeSaving, HostOverhead, load_profile, save_profile
from neo_sim.runs import RunSpec, execute
from neo_sim.scheduler import POLICIES

WORKLOADS = {
    # Low load on a big GPU: long runs of identical decode iterations between arrivals.
    "h100-low-load": dict(hardware="h100", rate=4.0, input_len=512, output_len=128),
    # Offline, KV-bound on a small GPU: swaps, preemption, CPU offload, then a steady tail.
    "t4-offline": dict(hardware="t4", rate=math.inf, gpu_kv_blocks=54, max_batch_tokens=832),
    # Bursty arrivals with short outputs: runs cut by arrivals and finishes.
    "a10g-bursty": dict(hardware="a10g", rate=3.0, burstiness=0.3, input_len=200, output_len=20),
    # Overloaded, batch-capped: a queue that cannot move until a request finishes.
    "h100-queued": dict(hardware="h100", rate=50.0, input_len=300, output_len=60, max_batch_size=8),
    # Overloaded, KV-bound: a queue (and swapped requests) held back by the GPU pool.
    "a10g-kv-bound": dict(
        hardware="a10g", rate=20.0, input_len=300, output_len=100, gpu_kv_blocks=90
    ),
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
    # Runs go through the iterations that finish requests and chain into the next run: the
    # scheduler steps at most once per arrival (its prefill) at this load.
    for out in (fast, neo):
        assert len(out.iterations) - out.result.steady_iterations <= len(out.requests)


def test_a_first_token_inside_a_steady_run_is_recorded():
    """A chunked prefill that stops one token short leaves its last prompt token to run as a
    decode does; when that iteration starts a steady run, the request's first token (TTFT)
    comes from the run and must equal the stepped result."""
    from neo_sim.costmodel import RooflineCostModel
    from neo_sim.hardware import PRESETS as HW
    from neo_sim.model import PRESETS as MODELS
    from neo_sim.scheduler import SchedulerConfig
    from neo_sim.simulator import simulate
    from neo_sim.workload import RequestSpec

    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["a10g-g5.4xlarge"])
    config = SchedulerConfig(
        num_gpu_blocks=200, num_cpu_blocks=200, max_batch_tokens=256, chunked_prefill_tokens=256
    )
    # Iteration 1: A's 100-token prompt and 156 of B's 157; then both run as decodes.
    workload = [RequestSpec(0, 0.0, 100, 20), RequestSpec(1, 0.0, 157, 20)]
    fast = simulate("gpu-only", config, cost, workload)
    slow = simulate("gpu-only", config, cost, workload, steady_runs=False)
    assert fast.steady_iterations > 0
    first = {r.request_id: r.first_token_s for r in fast.metrics.requests}
    assert first == {r.request_id: r.first_token_s for r in slow.metrics.requests}
    assert all(t is not None and t == t for t in first.values())


@pytest.mark.parametrize("policy", ["gpu-only", "vllm-256"])
def test_steady_runs_cover_a_queue_that_cannot_move(policy):
    """Overloaded with a full batch: requests wait, yet the batch repeats until one finishes."""
    fast = run(policy, WORKLOADS["h100-queued"], steady=True)
    assert fast.summary["ttft_p50"] > 5 * fast.summary["tpot_p50"]  # a real queue
    assert fast.result.steady_iterations > 0.5 * len(fast.iterations)


SHIPPED_CPU_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "cpu-2core-vm__small.json"


def with_engine_term(policy: str, tmp_path: Path, **term):
    """The shipped CPU profile with an engine term set (`Profile` field=value), saved and read
    back; then runs on it with and without steady runs, which must agree bit for bit, and a
    run on the profile without the term. Returns (the steady run, the bare run)."""
    profile = load_profile(SHIPPED_CPU_PROFILE)
    path = save_profile(dataclasses.replace(profile, **term), tmp_path / "p.json")
    ((field, value),) = term.items()
    assert getattr(load_profile(path), field) == value
    workload = dict(hardware=str(path), rate=2.0, input_len=64, output_len=40)
    spec = dict(model="small", policy=policy, num_requests=30, seed=2, timeline_iterations=0)
    fast = execute(RunSpec.of(**spec, **workload, iteration_records=True))
    slow = execute(RunSpec.of(**spec, **workload, iteration_records=True, steady_runs=False))
    assert fast.result.steady_iterations > 0
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.iterations, slow.iterations, check_exact=True)
    bare = workload | {"hardware": str(SHIPPED_CPU_PROFILE)}
    return fast, execute(RunSpec.of(**spec, **bare, iteration_records=True))


@pytest.mark.parametrize("policy", ["gpu-only", "neo"])
def test_the_engines_host_overhead_is_paid_by_every_iteration_steady_or_not(policy, tmp_path):
    """A measured profile's host overhead (the engine's own work per iteration) lengthens
    every iteration by fixed + per-sequence seconds, in the steady runs' closed forms exactly as
    in the stepped iterations."""
    overhead = HostOverhead(fixed_s=4e-4, per_seq_s=2e-5)
    fast, bare = with_engine_term(policy, tmp_path, host_overhead=overhead)
    assert fast.summary["iteration_s_mean"] > bare.summary["iteration_s_mean"]


@pytest.mark.parametrize("policy", ["gpu-only", "neo"])
def test_the_fused_decode_saving_shortens_decode_only_iterations_steady_or_not(policy, tmp_path):
    """A measured profile's fused decode saving (what the engine saves per layer by running a
    decode-only iteration's layers in one call each) shortens every decode-only iteration, in
    the steady runs' closed forms exactly as in the stepped iterations, and no other."""
    saving = FusedDecodeSaving(fixed_s=1e-4, per_seq_s=1e-6)
    fast, bare = with_engine_term(policy, tmp_path, fused_decode_saving=saving)
    it, base = fast.iterations, bare.iterations

    def decode_only(frame):
        one = (frame["mode"] == "sequential") & (frame.num_cpu_decodes == 0)
        return frame[one & (frame.prefill_tokens == 0) & (frame.num_gpu_decodes > 0)]

    assert decode_only(it).duration_s.mean() < decode_only(base).duration_s.mean()
    # Arrivals match both runs' first prefill-bearing iteration: the same plan, the same time.
    first, first_bare = it[it.prefill_tokens > 0].iloc[0], base[base.prefill_tokens > 0].iloc[0]
    assert first.duration_s == first_bare.duration_s
