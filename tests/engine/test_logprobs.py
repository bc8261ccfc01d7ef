"""Log-probabilities: of generated tokens and of prompt tokens, equal to transformers'."""

from __future__ import annotations

import pytest
import torch

from neo_engine import LLM, SamplingParams


def hf_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits over `tokens`: row i predicts token i + 1."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("policy,gpu_blocks", [("gpu-only", 64), ("neo", 6), ("vllm-256", 64)])
def test_prompt_and_token_logprobs_equal_transformers(tiny_llama, policy, gpu_blocks):
    directory, model = tiny_llama
    prompt = list(range(3, 40))
    llm = LLM(
        str(directory), dtype="float32", policy=policy, gpu_kv_blocks=gpu_blocks, block_size=4
    )
    params = SamplingParams(
        max_tokens=6, temperature=0, ignore_eos=True, logprobs=3, prompt_logprobs=2
    )
    out = llm.generate([prompt], params)[0]
    expected = hf_logprobs(model, prompt + out.token_ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for q in range(1, len(prompt)):
        lp = out.prompt_logprobs[q]
        assert lp.token_id == prompt[q]
        assert lp.logprob == pytest.approx(float(expected[q - 1, prompt[q]]), abs=1e-4)
        assert len(lp.top) == 2 and lp.top[0][1] == pytest.approx(
            float(expected[q - 1].max()), abs=1e-4
        )
        # the rank: how many tokens are at least as likely (transformers' float32 row)
        at_least = int((expected[q - 1] >= expected[q - 1, prompt[q]] - 1e-6).sum())
        assert abs(lp.rank - at_least) <= 1
    for i, lp in enumerate(out.logprobs):
        row = expected[len(prompt) - 1 + i]
        assert lp.token_id == out.token_ids[i] == int(row.argmax())  # greedy: the top token
        assert lp.rank == 1
        assert lp.logprob == pytest.approx(float(row.max()), abs=1e-4)
        assert [t for t, _ in lp.top] == row.topk(3).indices.tolist()


def test_no_logprobs_unless_asked(tiny_llama):
    directory, _ = tiny_llama
    out = LLM(str(directory)).generate([[1, 2, 3]], SamplingParams(max_tokens=2))[0]
    assert out.logprobs == [] and out.prompt_logprobs is None


def test_a_position_reads_as_vllms_mapping(tiny_llama):
    """vLLM scripts read a position as {token id: Logprob(logprob, rank, decoded_token)}: the
    token first, then its alternatives ranked 1, 2, ..."""
    directory, _ = tiny_llama
    params = SamplingParams(
        max_tokens=3, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    out = LLM(str(directory)).generate([[5, 6, 7, 8]], params)[0]
    first = out.outputs[0].logprobs[0]
    token = out.token_ids[0]
    assert first[token].logprob == first.logprob and first[token].rank == 1  # greedy
    assert list(first) == [token, *(t for t, _ in first.top if t != token)]
    assert [first[t].rank for t, _ in first.top] == [1, 2]
    assert all(entry.decoded_token is None for entry in first.values())
    scored = out.prompt_logprobs[1]
    assert 6 in scored and scored[6].logprob == scored.logprob and len(scored) in (1, 2)
    with pytest.raises(KeyError):
        first[10**6]
