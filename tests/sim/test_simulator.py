import json
import math

import pandas as pd
import pytest

from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.lanes import Lane
from neo_sim.latency import RequestRecord
from neo_sim.metrics import SLO, GapLog, Metrics, summarize
from neo_sim.model import PRESETS as MODELS
from neo_sim.runs import RunSpec, execute
from neo_sim.scheduler import DecodeWork, Mode, Plan, SchedulerConfig, SubBatch
from neo_sim.simulator import simulate
from neo_sim.timing import TimingModel
from neo_sim.workload import RequestSpec, synthetic

T4 = dict(gpu_kv_blocks=54, max_batch_tokens=832, cpu_kv_gb=20)


def test_same_seed_same_summary_and_different_seed_differs():
    spec = RunSpec.of(
        hardware="t4", model="llama-2-7b", rate=3.0, num_requests=150, noise=0.05, **T4
    )
    a, b = execute(spec).summary, execute(spec).summary
    assert a == b
    assert execute(spec.with_(seed=1)).summary != a


def test_every_request_completes_with_its_output_length():
    out = execute(RunSpec.of(hardware="t4", model="llama-2-7b", rate=4.0, num_requests=120, **T4))
    done = out.requests
    assert (done["status"] == "finished").all()
    assert (done["num_tokens"] == done["output_len"]).all()
    assert (done["first_token_s"] >= done["arrival_s"]).all()
    assert (done["finish_s"] >= done["first_token_s"]).all()


def test_neo_sustains_more_load_than_gpu_only_on_t4():
    base = RunSpec.of(hardware="t4", model="llama-2-7b", rate=4.0, num_requests=300, **T4)
    gpu = execute(base.with_(policy="gpu-only")).summary
    neo = execute(base.with_(policy="neo")).summary
    assert neo["throughput_req_s"] > 1.5 * gpu["throughput_req_s"]
    assert neo["cpu_busy"] > 0 and gpu["cpu_busy"] == 0


def test_metrics_follow_vllm_definitions():
    r = RequestRecord(0, arrival_s=1.0, prompt_len=10, output_len=3)
    itl = GapLog()
    for t in (1.5, 1.7, 2.0):
        r.on_token(t, itl)
    r.finish_s, r.status = 2.0, "finished"
    m = Metrics.of([r], [], itl)
    frame = m.requests_frame()
    assert frame.loc[0, "ttft_s"] == pytest.approx(0.5)
    assert frame.loc[0, "tpot_s"] == pytest.approx((1.0 - 0.5) / 2)
    assert sorted(itl.values()) == pytest.approx([0.2, 0.3])
    s = summarize(frame, m.totals, itl.values(), SLO(ttft_s=0.4))
    assert s["goodput_req_s"] == 0.0 and s["throughput_req_s"] == pytest.approx(1.0)


def test_slo_shares_count_all_requests_and_the_quarter_with_the_longest_prompts():
    """Four requests, prompts of 10, 20, 30 and 40 tokens, the first token 0.1 s x the prompt
    length after arrival; a TTFT bound of 2.5 s: the two short ones meet it. Of all requests
    half do, of the longest quarter (the 40-token prompt) none; a rejected request counts as
    missed."""
    itl = GapLog()
    records = []
    for i, n in enumerate((10, 20, 30, 40)):
        r = RequestRecord(i, arrival_s=0.0, prompt_len=n, output_len=1)
        r.on_token(0.1 * n, itl)
        r.finish_s, r.status = 0.1 * n, "finished"
        records.append(r)
    m = Metrics.of(records, [], itl)
    s = summarize(m.requests_frame(), m.totals, itl.values(), SLO(ttft_s=2.5))
    assert s["slo_met_share"] == pytest.approx(0.5)
    assert s["slo_met_share_long_prompts"] == 0.0
    s = summarize(m.requests_frame(), m.totals, itl.values(), SLO(ttft_s=5.0))
    assert s["slo_met_share"] == 1.0 and s["slo_met_share_long_prompts"] == 1.0
    rejected = RequestRecord(4, arrival_s=0.0, prompt_len=50, output_len=1)
    rejected.status = "rejected"
    m = Metrics.of([*records, rejected], [], itl)
    s = summarize(m.requests_frame(), m.totals, itl.values(), SLO(ttft_s=5.0))
    assert s["slo_met_share"] == pytest.approx(0.8)
    assert s["slo_met_share_long_prompts"] == pytest.approx(0.5)  # 40 met, 50 rejected


def test_timing_model_shows_a_bubble_when_the_cpu_is_slow():
    model = MODELS["llama-2-7b"]
    fast = RooflineCostModel(model, HW["t4"])
    slow = RooflineCostModel(model, HW["t4"], Efficiencies(cpu_memory=0.02))
    plan = Plan(
        1,
        Mode.PIPELINED,
        (
            SubBatch(gpu_decodes=tuple(DecodeWork(i, 400) for i in range(4))),
            SubBatch(cpu_decodes=tuple(DecodeWork(10 + i, 400) for i in range(8))),
        ),
    )
    t_fast = TimingModel(fast, 16).run(plan)
    t_slow = TimingModel(slow, 16).run(plan)
    assert t_slow.busy_s[Lane.GPU] == pytest.approx(t_fast.busy_s[Lane.GPU])
    assert t_slow.duration_s > 2 * t_fast.duration_s  # the GPU waits for the CPU
    assert t_slow.duration_s >= t_slow.busy_s[Lane.CPU]


def test_swaps_occupy_pcie_lanes():
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    from neo_sim.scheduler import Swap

    plan = Plan(
        1,
        Mode.SEQUENTIAL,
        (SubBatch(gpu_decodes=(DecodeWork(0, 100),)),),
        swap_out=(Swap(1, 800, tuple(range(50)), tuple(range(50))),),
    )
    timing = TimingModel(cost, 16).run(plan)
    expected = 50 * 16 * MODELS["llama-2-7b"].kv_bytes_per_token / (15.75e9 * 0.8)
    assert timing.busy_s[Lane.D2H] == pytest.approx(expected, rel=0.05)


def test_rejected_requests_are_reported_not_lost():
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = SchedulerConfig(num_gpu_blocks=10, num_cpu_blocks=10, max_batch_tokens=4096)
    workload = [RequestSpec(0, 0.0, 50, 5), RequestSpec(1, 0.0, 5000, 5)]
    result = simulate("gpu-only", config, cost, workload)
    statuses = {r.request_id: r.status for r in result.metrics.requests}
    assert statuses == {0: "finished", 1: "rejected"}


def test_golden_summary(tmp_path):
    """A seeded run compared with its stored summary (regenerate with NEO_UPDATE_GOLDEN=1)."""
    import os
    from pathlib import Path

    golden = Path(__file__).with_name("golden_t4_neo.json")
    spec = RunSpec.of(hardware="t4", model="llama-2-7b", rate=3.0, num_requests=200, seed=7, **T4)
    keys = [
        "completed",
        "throughput_req_s",
        "ttft_p50",
        "tpot_p50",
        "e2e_p90",
        "gpu_busy",
        "cpu_busy",
        "num_iterations",
    ]
    summary = {k: execute(spec).summary[k] for k in keys}
    if os.environ.get("NEO_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(summary, indent=1) + "\n")
    stored = json.loads(golden.read_text())
    for k in keys:
        assert summary[k] == pytest.approx(stored[k], rel=1e-9), k


@pytest.mark.parametrize("policy,hardware", [("gpu-only", "a10g"), ("neo", "t4"), ("apex", "t4")])
def test_offline_workload_and_frames(policy, hardware):
    """Totals kept without records (the default) equal those summed from the records: on
    T4 with a small GPU pool, over pipelined and fused iterations too."""
    small_gpu = dict(gpu_kv_blocks=54, max_batch_tokens=832) if hardware == "t4" else {}
    spec = RunSpec.of(
        hardware=hardware,
        model="llama-3-8b" if hardware == "a10g" else "llama-2-7b",
        policy=policy,
        rate=math.inf,
        num_requests=50,
        **small_gpu,
    )
    out = execute(spec.with_(iteration_records=True))
    assert isinstance(out.requests, pd.DataFrame) and len(out.requests) == 50
    assert len(out.iterations) == out.summary["num_iterations"]
    lean = execute(spec)  # by default only the totals: memory flat in the number of iterations
    assert len(lean.iterations) == 0 and lean.summary == out.summary
    if policy != "gpu-only":
        assert out.summary["pipelined_fraction"] > 0.5
    if policy == "apex":
        assert out.summary["fused_fraction"] > 0
    assert set(
        ["throughput_req_s", "ttft_p99", "tpot_p99", "e2e_p99", "gpu_busy", "cpu_busy"]
    ) <= set(out.summary)


def test_synthetic_rejects_bad_sizes():
    from neo_sim.errors import NeoError

    with pytest.raises(NeoError):
        synthetic(0, 1.0, 10, 10)


@pytest.mark.parametrize("policy", ["gpu-only", "neo"])
def test_timing_model_and_scheduler_estimate_charge_swaps_alike(policy):
    """One swap model: whole requests, all layers, out then in, before the iteration (what the
    executor does). The timing model adds exactly the estimate's swap term to a plan."""
    import dataclasses

    from neo_sim.scheduler.estimate import swap_s
    from neo_sim.simulator import Simulation
    from neo_sim.workload import synthetic

    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = SchedulerConfig(num_gpu_blocks=40, num_cpu_blocks=2000, max_batch_tokens=832)
    workload = synthetic(60, 8.0, 300, 60, seed=1)
    plans = Simulation(policy, config, cost, workload, record_plans=True).run().plans
    with_swaps = [p for p in plans if p.swap_out or p.swap_in]
    assert len(with_swaps) >= 3
    timing = TimingModel(cost, config.block_size)
    for plan in with_swaps:
        bare = dataclasses.replace(plan, swap_out=(), swap_in=())
        added = timing.run(plan).duration_s - timing.run(bare).duration_s
        charged = swap_s(cost, plan.swap_out, plan.swap_in, config.block_size)
        assert added == pytest.approx(charged, rel=1e-9)


def test_trace_driven_mode_takes_the_replayed_iteration_times():
    """`replay_s`: the k-th iteration lasts replay_s[k] (a real run's measured times); the
    rest fall back to the timing model."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = SchedulerConfig(num_gpu_blocks=10, num_cpu_blocks=10, max_batch_tokens=4096)
    workload = [RequestSpec(0, 0.0, 10, 4)]
    replayed = simulate("gpu-only", config, cost, workload, replay_s=[1.0, 2.0, 4.0])
    (record,) = replayed.metrics.requests
    assert record.first_token_s == 1.0
    plain = simulate("gpu-only", config, cost, workload)
    last = plain.metrics.iterations[-1].duration_s
    assert record.finish_s == pytest.approx(7.0 + last)


def test_a_replay_with_start_times_pairs_iterations_by_when_they_started():
    """With `replay_starts_s` an iteration takes the period of the real iteration that started
    nearest it, so an iteration the real run had and the simulation has not (here: a first
    one the simulation never runs, the request arriving at 0.5 s) shifts no later pairing:
    the prefill at 0.5 s takes the real prefill's 2.0 s, the decodes the real decodes' 4.0 s;
    paired by index they take 1.0, 2.0 and 4.0 s."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = SchedulerConfig(num_gpu_blocks=10, num_cpu_blocks=10, max_batch_tokens=4096)
    workload = [RequestSpec(0, 0.5, 10, 3)]
    periods, starts = [1.0, 2.0, 4.0, 4.0], [-0.5, 0.5, 2.5, 6.5]
    paired = simulate("gpu-only", config, cost, workload, replay_s=periods, replay_starts_s=starts)
    (record,) = paired.metrics.requests
    assert (record.first_token_s, record.finish_s) == (2.5, 10.5)
    by_index = simulate("gpu-only", config, cost, workload, replay_s=periods)
    (record,) = by_index.metrics.requests
    assert (record.first_token_s, record.finish_s) == (1.5, 7.5)
    with pytest.raises(ValueError, match="one start per period"):
        simulate("gpu-only", config, cost, workload, replay_s=periods, replay_starts_s=[0.0])


def test_layer_loop_in_locals_equals_the_task_loop():
    """The timing model's usual path (`_layers_in_locals`: no noise, no spans, separate
    lanes) runs the generic task loop (`_layers`) with its state in locals: on random sub-batch
    costs (zeros included, one or two sub-batches, swaps before the layers), both give the
    same lane free times, busy sums and per-sub-batch ready times, bit for bit."""
    import random

    from neo_sim.timing import _LANES, _SubBatchCosts

    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    timing = TimingModel(cost, 16)
    rng = random.Random(5)
    for _ in range(300):
        batches = [
            _SubBatchCosts(*(rng.choice((0.0, rng.uniform(1e-5, 1e-3))) for _ in range(7)))
            for _ in range(rng.choice((1, 2)))
        ]
        swapped = rng.choice((0.0, rng.uniform(0, 1e-2)))
        results = []
        for in_locals in (False, True):
            free = dict.fromkeys(_LANES, 0.0) | {Lane.D2H: swapped / 2, Lane.H2D: swapped}
            busy = dict.fromkeys(_LANES, 0.0) | {Lane.D2H: swapped / 2, Lane.H2D: swapped / 2}
            if in_locals:
                ready = timing._layers_in_locals(batches, swapped, free, busy)
            else:

                def run_task(lane, task, duration, ready, layer=None, b=None, free=free, busy=busy):
                    if duration <= 0:
                        return ready
                    start = max(ready, free[lane])
                    free[lane] = start + duration
                    busy[lane] += duration
                    return start + duration

                ready = timing._layers(batches, swapped, run_task, free, busy, periodic=True)
            results.append((ready, free, busy))
        assert results[0] == results[1]


def test_only_a_decode_only_plan_gets_the_fused_decode_saving():
    """The engine runs a plan of device decodes alone (one sub-batch, no prefill, no host
    decode) one layer per call, saving the cost model's `fused_decode_saving` a layer: the
    timing model charges such a plan its stages less that, the scheduler's estimate the same,
    and every other plan its stages in full."""
    from neo_sim.scheduler.estimate import SubBatchBuilder, iteration_s, sequential_layer_s
    from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, SubBatch

    class Fusing(RooflineCostModel):
        def fused_decode_saving(self, num_seqs: int) -> float:
            return 1e-4 + 1e-6 * num_seqs

    plain = RooflineCostModel(MODELS["llama-2-7b"], HW["a10g-g5.2xlarge"])
    fusing = Fusing(MODELS["llama-2-7b"], HW["a10g-g5.2xlarge"])
    layers = plain.model.num_layers
    decodes = tuple(DecodeWork(i, 300) for i in range(8))
    others = tuple(DecodeWork(10 + i, 300) for i in range(4))
    only = Plan(1, Mode.SEQUENTIAL, (SubBatch(gpu_decodes=decodes),))
    t_plain, t_fused = TimingModel(plain, 16).run(only), TimingModel(fusing, 16).run(only)
    assert t_plain.duration_s - t_fused.duration_s == pytest.approx(layers * (1e-4 + 8e-6))
    builder = SubBatchBuilder(fusing)
    builder.add_decodes(decodes, on_gpu=True)
    estimate = iteration_s(fusing, sequential_layer_s(builder), only.num_seqs)
    assert estimate == pytest.approx(t_fused.duration_s, rel=1e-12)
    for plan in (
        Plan(
            1, Mode.SEQUENTIAL, (SubBatch(prefills=(PrefillWork(20, 0, 64),), gpu_decodes=decodes),)
        ),
        Plan(1, Mode.SEQUENTIAL, (SubBatch(gpu_decodes=decodes, cpu_decodes=others),)),
        Plan(1, Mode.PIPELINED, (SubBatch(gpu_decodes=decodes), SubBatch(cpu_decodes=others))),
    ):
        assert TimingModel(fusing, 16).run(plan) == TimingModel(plain, 16).run(plan)
