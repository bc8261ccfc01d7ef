"""Greedy tokens of our engine equal transformers' greedy generation, token for token,
for every policy, including runs where most decodes run on the CPU and runs with swaps."""

from __future__ import annotations

import pytest
import torch

from neo_engine import LLM, SamplingParams
from neo_sim.costmodel import RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS
from neo_sim.scheduler import Device, Mode
from tests.engine.conftest import DEVICE, hf_greedy

NEW_TOKENS = 20
CASES = [  # (policy, GPU KV blocks of 4 tokens)
    ("gpu-only", 64),  # everything fits
    ("gpu-only", 25),  # preemption by swapping to host memory
    ("vllm-256", 25),
    ("neo", 64),
    ("neo", 8),  # most decodes on the CPU
    ("neo", 4),
    ("symmetric", 8),
    ("full-offload", 0),  # every decode on the CPU
]


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, 300, (n,), generator=gen).tolist() for n in (5, 17, 33, 40, 9, 60)]


def t4_like_cost():
    """Price plans as Llama-2-7B on a T4 host, where NEO pipelines (the tiny model runs)."""
    return RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])


def generate_greedy(directory, prompts, policy: str, gpu_blocks: int, as_on_t4: bool, **extra):
    """The engine's greedy tokens for `prompts` (fp32, 4-token blocks, a 200-block host pool)
    and its plans, with plans priced as on a T4 host if `as_on_t4`: (outputs, plans, the
    engine, closed)."""
    llm = LLM(
        str(directory),
        device=DEVICE,
        dtype="float32",  # transformers' precision: equality, not closeness
        policy=policy,
        gpu_kv_blocks=gpu_blocks,
        cpu_kv_blocks=200,
        block_size=4,
        max_model_len=128,
        **extra,
    )
    if as_on_t4:
        llm.engine.policy.cost = t4_like_cost()  # decide as on a T4 host
    llm.engine.keep_iteration_log = True
    try:
        outputs = llm.generate(
            prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
        )
        return outputs, [it.plan for it in llm.engine.iterations], llm.engine
    finally:
        llm.engine.close()


@pytest.mark.parametrize("policy,gpu_blocks", CASES)
def test_greedy_tokens_equal_transformers(tiny_llama, prompts, policy, gpu_blocks):
    directory, model = tiny_llama
    expected = hf_greedy(model, prompts, NEW_TOKENS)
    outputs, plans, _ = generate_greedy(directory, prompts, policy, gpu_blocks, as_on_t4=False)
    assert [o.token_ids for o in outputs] == expected
    if gpu_blocks <= 8:
        assert sum(o.cpu_steps for o in outputs) > sum(o.gpu_steps for o in outputs) / 2
    if (policy, gpu_blocks) == ("gpu-only", 25):
        assert any(p.swap_out for p in plans) and any(p.swap_in for p in plans)


@pytest.mark.parametrize("host_overlap", ["yes", "no"])
@pytest.mark.parametrize(
    "policy,mode", [("neo", Mode.PIPELINED), ("apex", Mode.FUSED), ("adaptive", Mode.FUSED)]
)
def test_offloading_plans_give_the_same_tokens(tiny_llama, prompts, policy, mode, host_overlap):
    """Pipelined (two sub-batches) and fused (host attention beside device attention in one
    batch) plans, chosen as on a T4 host under KV pressure, give transformers' tokens, with
    the host lane on its worker thread beside the device lane (as with a GPU) or run inline
    (a CPU device's default)."""
    directory, model = tiny_llama
    expected = hf_greedy(model, prompts, NEW_TOKENS)
    outputs, plans, engine = generate_greedy(
        directory, prompts, policy, 10, as_on_t4=True, host_overlap=host_overlap
    )
    assert engine.executor.host_overlap == (host_overlap == "yes")
    assert [o.token_ids for o in outputs] == expected
    chosen = [p for p in plans if p.mode == mode]
    assert chosen and any(p.sub_batches[-1].cpu_decodes for p in chosen)
    if mode == Mode.FUSED:  # the host attention ran beside device work of the same batch
        assert any(p.sub_batches[0].gpu_decodes or p.sub_batches[0].prefills for p in chosen)


@pytest.mark.parametrize("policy", ["neo", "adaptive"])
def test_chunked_prompts_in_offloading_plans_give_the_same_tokens(tiny_llama, prompts, policy):
    """With chunked prefill, a prompt's later chunks attend over the KV its earlier chunks
    left in its pool, the host's included (copied to the device for the chunk's attention):
    still transformers' tokens, under the KV pressure that puts prompts on the host."""
    directory, model = tiny_llama
    expected = hf_greedy(model, prompts, NEW_TOKENS)
    outputs, plans, _ = generate_greedy(
        directory, prompts, policy, 10, as_on_t4=True, chunked_prefill_tokens=16
    )
    assert [o.token_ids for o in outputs] == expected
    started = {p.kv_device for plan in plans for p in plan.prefills if p.start}
    assert started == {Device.GPU, Device.CPU}
    assert all(plan.num_tokens <= 16 for plan in plans)


def test_adaptive_within_a_tpot_slo_with_chunks_gives_the_same_tokens(
    tiny_llama, prompts, monkeypatch
):
    """Adaptive under a TPOT SLO with chunked prefill, as on a T4 host under KV pressure (14
    device blocks, 0.08 s, 32-token chunks): some chunks are cut to the step's TPOT budget
    and a parked request decodes on the host from the KV it was parked with; still
    transformers' tokens."""
    from neo_sim.scheduler.adaptive import AdaptivePolicy

    seen = {"cut": 0, "taken from parked": 0}
    add_what_fits, takes_parked = AdaptivePolicy._add_what_fits, AdaptivePolicy._host_takes_parked

    def spy_fits(self, chunk, num_before, mode, chosen):
        add_what_fits(self, chunk, num_before, mode, chosen)
        b = chosen[0]
        seen["cut"] += len(b.prefills) > num_before and b.prefills[-1] != chunk

    def spy_parked(self):
        parked = len(self.swapped)
        takes_parked(self)
        seen["taken from parked"] += parked - len(self.swapped)

    monkeypatch.setattr(AdaptivePolicy, "_add_what_fits", spy_fits)
    monkeypatch.setattr(AdaptivePolicy, "_host_takes_parked", spy_parked)
    directory, model = tiny_llama
    expected = hf_greedy(model, prompts, NEW_TOKENS)
    outputs, _, _ = generate_greedy(
        directory,
        prompts,
        "adaptive",
        14,
        as_on_t4=True,
        chunked_prefill_tokens=32,
        slo_tpot_s=0.08,
    )
    assert [o.token_ids for o in outputs] == expected
    assert seen["cut"] and seen["taken from parked"]


def test_the_drains_exchanges_give_the_same_tokens(tiny_llama):
    """Adaptive's rule 7 trades GPU residents near their end for requests waiting off the GPU
    with more to go, several pairs in one plan, swaps out and in together (as on a T4 host
    with 40 device blocks, offline): the executor copies every swap out before any swap in,
    so no swap out may write the host blocks a swap in of the same plan reads. Once it did
    (a later pair's swap out took the host blocks an earlier pair's swap in had freed) and a
    request decoded over another's KV; transformers' tokens now."""
    directory, model = tiny_llama
    gen = torch.Generator().manual_seed(3)
    lengths = (43, 10, 22, 18, 19, 58, 15)
    prompts = [torch.randint(1, 300, (n,), generator=gen).tolist() for n in lengths]
    expected = hf_greedy(model, prompts, NEW_TOKENS)
    outputs, plans, _ = generate_greedy(
        directory, prompts, "adaptive-whole", 40, as_on_t4=True, chunked_prefill_tokens=64
    )
    trades = [p for p in plans if len(p.swap_out) >= 2 and len(p.swap_in) >= 2]
    assert trades, "no plan traded two pairs: the case no longer tests the exchange's copies"
    assert [o.token_ids for o in outputs] == expected
