"""The simulator and the engine run the same scheduler and make the same decisions.

Fed the same arrivals and the same cost model, with the scheduler's predicted durations as the
clock on both sides, every step must produce an equal Plan (same sub-batches, placements,
swaps, block ids, predicted time), for each policy, with a GPU KV pool small enough to force
CPU offload. The engine really executes every plan (a tiny random Llama); the plans are priced
as Llama-2-7B on a T4 so that NEO pipelines.
"""

from __future__ import annotations

import math

import pytest

from neo_engine.config import EngineConfig
from neo_engine.engine import LLMEngine
from neo_engine.replay import replay
from neo_sim.costmodel import RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS
from neo_sim.scheduler import POLICIES, Device, Mode
from neo_sim.scheduler.gpu_only import GpuOnlyPolicy
from neo_sim.simulator import Simulation
from neo_sim.workload import synthetic
from tests.engine.conftest import DEVICE

# (policy, TPOT SLO in seconds, prompt chunk in tokens): every policy, adaptive planning within
# an SLO (0.1 s keeps host decodes in its plans at this load), and NEO's and adaptive's plans
# with chunked prefill (20-token chunks of the ~48-token prompts, on the GPU and the host),
# adaptive's also within an SLO (0.09 s: a chunk cut to the step's TPOT budget and a parked
# request taken by the host happen at this load)
CASES = [
    *((policy, None, 0) for policy in POLICIES),
    ("adaptive", 0.1, 0),
    ("neo", None, 20),
    ("adaptive", None, 20),
    ("adaptive", 0.09, 20),
]


@pytest.mark.parametrize("policy,slo_tpot_s,chunk", CASES)
def test_simulator_and_engine_make_identical_plans(policy, slo_tpot_s, chunk):
    workload = synthetic(40, rate=6.0, input_len=48, output_len=14, seed=3)
    engine_plans = _identical_plans(
        policy, workload, 14, 600, slo_tpot_s=slo_tpot_s, chunked_prefill_tokens=chunk
    )
    cpu_decodes = sum(len(p.cpu_decodes) for p in engine_plans)
    offloads = not issubclass(POLICIES[policy][0], GpuOnlyPolicy)
    if offloads:
        assert cpu_decodes > 0, "KV pressure should have pushed decodes to the CPU"
    if policy == "neo":
        assert any(p.mode == Mode.PIPELINED for p in engine_plans)
    if policy in ("apex", "adaptive"):  # host attention beside GPU attention, one batch
        assert any(p.mode == Mode.FUSED for p in engine_plans)
    if policy == "gpu-only":
        assert any(p.swap_out for p in engine_plans)
    if chunk:  # prompts went in chunks, on both pools, later chunks over cached KV
        started = [p for plan in engine_plans for p in plan.prefills if p.start]
        assert {p.kv_device for p in started} == {Device.GPU, Device.CPU}
        assert all(plan.num_tokens <= chunk for plan in engine_plans)


def test_simulator_and_engine_spread_the_same_prompts(monkeypatch):
    """Adaptive with no host pool and 256-token chunks of ~180-token prompts: GPU KV alone
    gates admission and some prompts are spread over the steps until a resident ends (rule
    4), from the residents' lengths and `max_new_tokens` as each side keeps them."""
    from neo_sim.scheduler.adaptive import AdaptivePolicy

    spread = [0]
    spread_chunk = AdaptivePolicy._spread_chunk

    def spy(self, r, chunk, remaining):
        size = spread_chunk(self, r, chunk, remaining)
        spread[0] += size < chunk
        return size

    monkeypatch.setattr(AdaptivePolicy, "_spread_chunk", spy)
    workload = synthetic(40, rate=6.0, input_len=180, output_len=60, seed=3)
    _identical_plans("adaptive", workload, 250, 0, chunked_prefill_tokens=256, max_model_len=320)
    assert spread[0] >= 2 and spread[0] % 2 == 0  # the same steps on both sides


def test_simulator_and_engine_order_the_same_prompts_under_a_ttft_slo():
    """Adaptive under a 0.1 s TTFT bound (rule 6): each step reorders the waiting queue by
    the bound, from the step's start and each request's arrival on each side's clock, and
    sizes the iteration's prompts by it. The plans stay equal, and some prompt starts before
    an older one (the reordering happened)."""
    workload = synthetic(40, rate=6.0, input_len=48, output_len=14, seed=3)
    plans = _identical_plans("adaptive", workload, 14, 600, slo_ttft_s=0.1)
    started = [p.request_id for plan in plans for p in plan.prefills if p.start == 0]
    assert started != sorted(started)


@pytest.mark.parametrize("settings", [{}, {"slo_ttft_s": 0.1}])
def test_simulator_and_engine_make_the_same_drain_exchanges(settings):
    """Adaptive with every request at once (offline): once arrivals have stopped the queue
    goes longest output first (without an SLO), and in the drain GPU residents near their end
    trade places with host residents (rule 7; under a TTFT SLO too): plans that swap both
    ways, equal on both sides, and every request gets its tokens. Twelve requests beside a
    GPU pool that holds about eight: the trades come for the requests on the critical path."""
    workload = synthetic(12, rate=math.inf, input_len=48, output_len=14, seed=3)
    plans = _identical_plans("adaptive", workload, 64, 600, **settings)
    assert any(p.swap_out and p.swap_in for p in plans)
    if not settings:
        started = [p.request_id for plan in plans for p in plan.prefills if p.start == 0]
        assert started != sorted(started)


def _identical_plans(
    policy: str, workload, gpu_blocks: int, cpu_blocks: int, max_model_len: int = 256, **settings
):
    """Run `workload` through the engine (a tiny random Llama, plans priced as Llama-2-7B on
    a T4) and the simulator with the same scheduler settings; assert every request got its
    tokens and every step's plan is equal on both sides; the engine's plans."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    engine = LLMEngine(
        EngineConfig.of(
            "dummy:tiny",
            device=DEVICE,
            policy=policy,
            clock="predicted",
            gpu_kv_blocks=gpu_blocks,
            cpu_kv_blocks=cpu_blocks,
            block_size=8,
            max_batch_tokens=320,
            max_model_len=max_model_len,
            **settings,
        ),
        cost_model=cost,
    )
    engine.keep_iteration_log = True
    outputs = replay(engine, workload)
    engine_plans = [it.plan for it in engine.iterations]
    engine.close()

    sim = Simulation(
        policy, engine.scheduler_config, cost, workload, clock="predicted", record_plans=True
    )
    result = sim.run()

    assert len(outputs) == len(workload)
    assert all(len(o.token_ids) == w.output_len for o, w in zip(outputs, workload))
    assert len(engine_plans) == len(result.plans)
    for step, (a, b) in enumerate(zip(engine_plans, result.plans)):
        assert a == b, f"{policy}: plans differ at iteration {step}:\n{a}\n{b}"
    return engine_plans


def test_simulator_and_engine_pace_the_same_prompts(monkeypatch):
    """Adaptive with no host pool and 256-token chunks, a backlog of ~200-token prompts: once
    the GPU pool has filled, the GPU's prompts take the rate its residents free it (rule 5),
    from the residents' lengths, `max_new_tokens` and the pool's blocks in use as each side
    keeps them."""
    from neo_sim.scheduler.adaptive import AdaptivePolicy

    paced = [0]
    steady_admission_tokens = AdaptivePolicy._steady_admission_tokens

    def spy(self):
        tokens = steady_admission_tokens(self)
        paced[0] += tokens is not None
        return tokens

    monkeypatch.setattr(AdaptivePolicy, "_steady_admission_tokens", spy)
    workload = synthetic(60, rate=40.0, input_len=200, output_len=60, seed=3)
    _identical_plans("adaptive", workload, 1200, 0, chunked_prefill_tokens=256, max_model_len=400)
    assert paced[0] >= 10 and paced[0] % 2 == 0  # the same steps on both sides
