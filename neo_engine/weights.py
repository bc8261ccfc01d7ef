"""Model weights: read an HF Llama checkpoint (safetensors) or make random ones.

Weights are kept per layer with the GEMMs fused the way the layer runs them: one QKV matrix
(pre-projection) and one gate+up matrix (post-projection), both as [out, in] like nn.Linear.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from neo_sim.errors import NeoError
from neo_sim.model import ModelSpec

# Rows the blocked layout is prepared for: decode batches (it serves prefills as fast).
PREPACK_ROWS_HINT = 32


@dataclass(frozen=True)
class PrepackedWeight:
    """A weight [out, in] with oneDNN's blocked copy of it, for bf16 or fp32 on a CPU device.

    F.linear hands torch's plain [out, in] bf16 weight to oneDNN, which reorders it into its
    blocked layout on every call; at decode sizes that reorder costs half to three quarters
    as much again as the multiplication itself (benchmarks/results/skinny_gemm_bfloat16.json,
    AVX512-BF16, 2026-12-07: 21 ms vs 31 ms at 32 rows, 14 vs 24 ms at 16; the same numbers;
    the file's version at fcbbdf7 read 21 vs 27 and 15 vs 24). In fp32, the prepacked
    copy beat the engine's path without it (the skinny kernel up to 32 rows, then torch's BLAS,
    MKL) on SmolLM2's weights from 3 rows up: 0.65-0.83x its time at 3-6 rows, 0.69-0.80x at
    8-32, 0.77-0.88x at 128-2,048 (AMD EPYC with AVX-512, ad hoc beside each other,
    2026-12-04; the engine 1.2x faster at batch 8-64 then, 1.3-1.4x since the fused decode
    layers, which need the prepacked copy, benchmarks/results/prepacked_weights_float32.json);
    its sums run in another order than the BLAS's, so the last bits differ. The plain weight
    stays for the skinny kernel, which reads it as fast or faster for a few rows
    (`layers.linear`): weights take twice their memory on a CPU device
    (`LoadSettings.prepack_weights=False` keeps one copy)."""

    weight: torch.Tensor  # [out, in], plain
    blocked: torch.Tensor  # oneDNN's layout of the same numbers (torch.ops.mkldnn)

    @classmethod
    def of(cls, weight: torch.Tensor) -> PrepackedWeight:
        """`weight` [out, in] with its blocked copy, laid out for PREPACK_ROWS_HINT rows."""
        return cls(weight, torch.ops.mkldnn._reorder_linear_weight(weight, PREPACK_ROWS_HINT))

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape


Linear = torch.Tensor | PrepackedWeight  # what `layers.linear` multiplies by


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: Linear  # [q_size + 2 kv_size, hidden]
    o: Linear  # [hidden, q_size]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Linear  # [2 intermediate, hidden]
    down: Linear  # [hidden, intermediate]
    qkv_bias: torch.Tensor | None = None  # [q_size + 2 kv_size] (Qwen2)


@dataclass
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: Linear  # [vocab, hidden] (may be `embed` itself)


PREPACKED_DTYPES = (torch.bfloat16, torch.float32)  # `prepack` applies to these on a CPU


def can_prepack(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `prepack` applies: PREPACKED_DTYPES on a CPU device whose oneDNN prepacks
    them (`_onednn_prepacks`)."""
    return device.type == "cpu" and dtype in PREPACKED_DTYPES and _onednn_prepacks(dtype)


@cache  # the CPU and torch do not change within a process
def _onednn_prepacks(dtype: torch.dtype) -> bool:
    """Whether torch's oneDNN reorders a `dtype` weight into its blocked layout on this CPU,
    tried on a small one: its bf16 path needs AVX512-BW/VL/DQ or AVX-NE-CONVERT and raises
    elsewhere (an AVX2-only CPU: `NEO_CPU_ISA=avx2` on an AVX-512 one shows it)."""
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    ):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


LAYER_GEMMS = ("qkv", "o", "gate_up", "down")  # the `Linear` fields of `LayerWeights`


def _gemm_slots(weights: ModelWeights) -> list[tuple[object, str]]:
    """(holder, field) of every GEMM weight: each layer's LAYER_GEMMS and the LM head."""
    slots: list[tuple[object, str]] = [(layer, f) for layer in weights.layers for f in LAYER_GEMMS]
    return [*slots, (weights, "lm_head")]


def gemm_weight_bytes(weights: ModelWeights) -> int:
    """Bytes of the GEMM weights `prepack` would copy (every layer's and the LM head)."""
    total = 0
    for holder, field_name in _gemm_slots(weights):
        w = getattr(holder, field_name)
        plain = w.weight if isinstance(w, PrepackedWeight) else w
        total += plain.numel() * plain.element_size()
    return total


def prepack(weights: ModelWeights) -> ModelWeights:
    """The same weights with every GEMM weight also in oneDNN's blocked layout (in place)."""
    for holder, field_name in _gemm_slots(weights):
        w: Linear = getattr(holder, field_name)
        if not isinstance(w, PrepackedWeight):
            setattr(holder, field_name, PrepackedWeight.of(w))
    return weights


def _fuse(spec: ModelSpec, get, dtype: torch.dtype, device: torch.device) -> ModelWeights:
    def t(name: str) -> torch.Tensor:
        # Moved first, then converted: a blocking copy to CUDA that also converts does the
        # conversion on the CPU (torch's copy_ for CUDA), on the calling thread, which on
        # CUDA must keep no OpenMP team of its own (`host_threads`).
        return get(name).to(device=device).to(dtype=dtype).contiguous()

    layers = []
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        layers.append(
            LayerWeights(
                input_norm=t(p + "input_layernorm.weight"),
                qkv=torch.cat(
                    [
                        t(p + "self_attn.q_proj.weight"),
                        t(p + "self_attn.k_proj.weight"),
                        t(p + "self_attn.v_proj.weight"),
                    ]
                ).contiguous(),
                o=t(p + "self_attn.o_proj.weight"),
                post_norm=t(p + "post_attention_layernorm.weight"),
                gate_up=torch.cat(
                    [t(p + "mlp.gate_proj.weight"), t(p + "mlp.up_proj.weight")]
                ).contiguous(),
                down=t(p + "mlp.down_proj.weight"),
                qkv_bias=torch.cat(
                    [t(p + f"self_attn.{x}_proj.bias") for x in ("q", "k", "v")]
                ).contiguous()
                if spec.qkv_bias
                else None,
            )
        )
    embed = t("model.embed_tokens.weight")
    lm_head = embed if spec.tie_word_embeddings else t("lm_head.weight")
    return ModelWeights(embed, layers, t("model.norm.weight"), lm_head)


def load_checkpoint(
    directory: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device
) -> ModelWeights:
    """Read `*.safetensors` (single file or sharded with an index) from an HF checkpoint."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise NeoError(f"{directory}: no *.safetensors files (convert the checkpoint first)")
    index: dict[str, Path] = {}
    index_file = directory / "model.safetensors.index.json"
    if index_file.exists():
        mapping = json.loads(index_file.read_text())["weight_map"]
        index = {name: directory / fname for name, fname in mapping.items()}
    else:
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                index.update({name: f for name in handle.keys()})  # noqa: SIM118
    handles: dict[Path, object] = {}

    def get(name: str) -> torch.Tensor:
        if name not in index:
            if name == "lm_head.weight" and "model.embed_tokens.weight" in index:
                return get("model.embed_tokens.weight")
            raise NeoError(f"{directory}: checkpoint has no tensor {name!r}")
        path = index[name]
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt")
        return handles[path].get_tensor(name)

    weights = _fuse(spec, get, dtype, device)
    _check_shapes(spec, weights, directory)
    return weights


def random_weights(
    spec: ModelSpec, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> ModelWeights:
    """Random weights of the right shapes (std 0.02, norms at 1), for dummy:PRESET models.
    On a CUDA device they are drawn there (an 8B model's 8e9 numbers take ~40 s on a host
    core and milliseconds on a GPU), so a CUDA model's numbers differ from a CPU one's."""
    draw_on = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=draw_on).manual_seed(seed)
    h, q, kv, inter = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size

    def rand(*shape: int) -> torch.Tensor:
        drawn = torch.randn(*shape, generator=gen, device=draw_on, dtype=torch.float32)
        return (drawn * 0.02).to(device=device, dtype=dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, device=device, dtype=dtype)

    layers = [
        LayerWeights(
            ones(h),
            rand(q + 2 * kv, h),
            rand(h, q),
            ones(h),
            rand(2 * inter, h),
            rand(h, inter),
            rand(q + 2 * kv) if spec.qkv_bias else None,
        )
        for _ in range(spec.num_layers)
    ]
    embed = rand(spec.vocab_size, h)
    lm_head = embed if spec.tie_word_embeddings else rand(spec.vocab_size, h)
    return ModelWeights(embed, layers, ones(h), lm_head)


def _check_shapes(spec: ModelSpec, w: ModelWeights, where: Path) -> None:
    expected = {
        "embed": (spec.vocab_size, spec.hidden_size),
        "qkv": (spec.q_size + 2 * spec.kv_size, spec.hidden_size),
        "down": (spec.hidden_size, spec.intermediate_size),
    }
    actual = {
        "embed": tuple(w.embed.shape),
        "qkv": tuple(w.layers[0].qkv.shape),
        "down": tuple(w.layers[0].down.shape),
    }
    for key, shape in expected.items():
        if actual[key] != shape:
            raise NeoError(f"{where}: {key} has shape {actual[key]}, config says {shape}")
