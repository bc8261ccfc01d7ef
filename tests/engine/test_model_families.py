"""Llama-family checkpoints beyond Llama: Qwen2 (q/k/v biases) and Mistral (sliding window)."""

from __future__ import annotations

import pytest
import torch

from neo_engine import LLM, SamplingParams
from neo_sim.errors import NeoError
from tests.engine.conftest import hf_greedy

NEW_TOKENS = 12


def save_tiny_qwen2(directory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=64,
    )
    model = Qwen2ForCausalLM(config).float().eval()
    with torch.no_grad():  # random biases, so that loading them is what the test checks
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.mark.parametrize("policy,gpu_blocks", [("gpu-only", 64), ("neo", 6)])
def test_qwen2_greedy_tokens_equal_transformers(tmp_path, policy, gpu_blocks):
    model = save_tiny_qwen2(tmp_path)
    prompts = [[5, 17, 33, 40], list(range(1, 30))]
    llm = LLM(str(tmp_path), dtype="float32", policy=policy, gpu_kv_blocks=gpu_blocks, block_size=4)
    assert llm.engine.spec.qkv_bias and llm.engine.spec.sliding_window is None
    out = llm.generate(
        prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    )
    assert [o.token_ids for o in out] == hf_greedy(model, prompts, NEW_TOKENS)


def test_a_sliding_window_caps_the_context_or_is_refused(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=1024,
        sliding_window=128,
    )
    MistralForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    llm = LLM(str(tmp_path))
    assert llm.engine.max_model_len == 128  # full attention equals the window's up to here
    with pytest.raises(NeoError, match="sliding-window"):
        LLM(str(tmp_path), max_model_len=256)
