"""Seeded random engine configurations give transformers' greedy tokens: policy, device and
host pools, block size, slots, chunked prefill, SLOs and the host lane's overlap drawn at
random (the combinations no hand-written case covers; such a run found rule 7's exchanges
overwriting KV, `test_equivalence.py::test_the_drains_exchanges_give_the_same_tokens`)."""

from __future__ import annotations

import random

import pytest

from neo_engine import LLM, SamplingParams
from neo_sim.scheduler import POLICIES
from tests.engine.conftest import DEVICE, hf_greedy
from tests.engine.test_equivalence import t4_like_cost

POLICY_NAMES = ("gpu-only", "neo", "apex", "adaptive", "adaptive-whole", "symmetric")


def random_case(seed: int) -> tuple[dict, list[list[int]], int, bool]:
    """(LLM settings, prompts, new tokens, whether plans are priced as on a T4 host)."""
    rng = random.Random(seed)
    policy = rng.choice(POLICY_NAMES)
    block_size = rng.choice([4, 4, 8, 16])
    settings = dict(
        policy=policy,
        block_size=block_size,
        # gpu-only holds every request on the device: a pool for the longest (80 tokens)
        gpu_kv_blocks=rng.choice([40, 64] if policy == "gpu-only" else [10, 16, 40, 64])
        * 4
        // block_size,
        cpu_kv_blocks=rng.choice([60, 200]) * 4 // block_size,
        max_model_len=128,
        host_overlap=rng.choice(["yes", "no"]),
    )
    if rng.random() < 0.3:
        settings["max_num_seqs"] = rng.choice([3, 5])
    if POLICIES[policy][0].chunks_prompts and rng.random() < 0.5:
        settings["chunked_prefill_tokens"] = rng.choice([16, 32, 64])
    if rng.random() < 0.4:
        settings["slo_tpot_s"] = rng.choice([0.02, 0.08, 0.5])
    if rng.random() < 0.3:
        settings["slo_ttft_s"] = rng.choice([0.05, 1.0])
    prompts = [
        [rng.randrange(1, 300) for _ in range(rng.randint(3, 60))] for _ in range(rng.randint(2, 7))
    ]
    return settings, prompts, rng.randint(2, 20), rng.random() < 0.7


@pytest.mark.parametrize("seed", range(12))
def test_a_random_configuration_gives_transformers_tokens(tiny_llama, seed):
    directory, model = tiny_llama
    settings, prompts, new_tokens, as_on_t4 = random_case(seed)
    llm = LLM(str(directory), device=DEVICE, dtype="float32", **settings)
    if as_on_t4:
        llm.engine.policy.cost = t4_like_cost()  # decide as on a T4 host: the host runs decodes
    try:
        outputs = llm.generate(
            prompts, SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        )
    finally:
        llm.engine.close()
    assert [o.token_ids for o in outputs] == hf_greedy(model, prompts, new_tokens), settings
