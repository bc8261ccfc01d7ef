"""Shared fixtures: tiny random Llamas built and saved by transformers, in safetensors."""

from __future__ import annotations

import pytest
import torch


def save_tiny_llama(directory, num_kv_heads: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).float().eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="session", params=[4, 2], ids=["mha", "gqa"])
def tiny_llama(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"tiny-llama-kv{request.param}")
    model = save_tiny_llama(directory, request.param)
    return directory, model


def hf_greedy(model, prompts, new_tokens: int) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = model.generate(
                torch.tensor([p]),
                max_new_tokens=new_tokens,
                do_sample=False,
                min_new_tokens=new_tokens,
            )
            out.append(ids[0, len(p) :].tolist())
    return out
