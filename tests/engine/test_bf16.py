"""bf16 compute: the engine's log-probabilities against transformers' bf16 and fp32 ones.

bf16 cannot equal fp32 token for token, so the engine in bf16 is held to what bf16 itself
allows: on a tiny random Llama whose log-probabilities spread ~0.8 nats (initializer_range
0.1: the default 0.02 makes every token nearly equally likely, where any error looks small),
- the engine's log-probs stay within TOLERANCE_NATS of transformers' bf16 ones, and
- the engine is no further from fp32 than RELATIVE_TO_HF times transformers' bf16 distance
  from fp32 (measured here: both 0.016-0.024 nats; a wrong rounding or a dropped K tail in
  the bf16 GEMM, or bf16 KV read wrongly, costs tenths of a nat).
Prompt log-probs cover prefill; the generated tokens' log-probs cover decode, on the device
pool (gpu-only) and on the host pool through the host kernel (neo with 4 device blocks).
Runs on every CPU: where bf16 is not native the engine takes the portable paths.
"""

from __future__ import annotations

import pytest
import torch

from neo_engine import LLM, SamplingParams
from tests.engine.conftest import save_tiny_llama

TOLERANCE_NATS = 0.05
RELATIVE_TO_HF = 2.0
PROMPT = [(7 * i + 3) % 300 for i in range(40)]
NEW_TOKENS = 8


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def spread_llama(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"spread-llama-kv{request.param}")
    return directory, save_tiny_llama(directory, request.param, initializer_range=0.1)


def _logprobs_of(model, tokens: list[int], dtype: torch.dtype) -> torch.Tensor:
    """Log-prob of tokens[i + 1] given tokens[: i + 1], by transformers in `dtype`."""
    copy = type(model)(model.config).eval()
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = copy.to(dtype)(torch.tensor([tokens])).logits[0].float()
    rows = torch.log_softmax(logits, dim=-1)[:-1]
    return rows.gather(1, torch.tensor(tokens[1:]).unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("policy,gpu_blocks", [("gpu-only", 64), ("neo", 4)])
def test_bf16_logprobs_are_as_close_as_transformers_bf16(spread_llama, policy, gpu_blocks):
    directory, model = spread_llama
    llm = LLM(
        str(directory), dtype="bfloat16", policy=policy, gpu_kv_blocks=gpu_blocks, block_size=4
    )
    assert llm.engine.spec.dtype == llm.engine.spec.kv_dtype == "bfloat16"
    params = SamplingParams(
        max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, logprobs=1, prompt_logprobs=1
    )
    out = llm.generate([PROMPT], params)[0]
    llm.engine.close()
    if policy == "neo":  # the decode steps really ran on the host pool
        assert out.cpu_steps > 0
    tokens = PROMPT + out.token_ids
    engine = torch.tensor(
        [lp.logprob for lp in out.prompt_logprobs[1:]] + [lp.logprob for lp in out.logprobs]
    )
    hf_bf16 = _logprobs_of(model, tokens, torch.bfloat16)
    fp32 = _logprobs_of(model, tokens, torch.float32)
    assert (engine - hf_bf16).abs().max().item() <= TOLERANCE_NATS
    hf_error = (hf_bf16 - fp32).abs().max().item()
    assert (engine - fp32).abs().max().item() <= RELATIVE_TO_HF * hf_error
