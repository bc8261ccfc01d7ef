"""Every layer of a decode-only iteration in one call of the compiled host kernels.

At decode sizes on a CPU device a layer is ~10 kernels of 5-100 us, and Python's glue between
them (checks, views, dispatch, allocation, bookkeeping) cost ~95 us a layer, ~10% of a decode
step of SmolLM2 at 32 requests, while the second core waits (csrc/decode_layers.cpp has the
numbers). `FusedDecodeLayers` hands a whole decode-only sub-batch to `DecodeLayers`, which
runs `layers.pre_projection`, `attention.device_decode_stage` and `layers.post_projection`'s
kernels in their order with their arguments: the same result bit for bit, the layers timed
one by one (one GPU-lane span per layer, `Task.LAYER`).

It applies where those kernels are the ones Python would call: a CPU device, the compiled
module, bf16 or fp32, every layer GEMM prepacked for oneDNN, the KV pool in the compute dtype.
The executor falls back to its per-stage path elsewhere, and for plans with prefills, host
decodes or several sub-batches.
"""

from __future__ import annotations

import torch

from neo_engine.cpu_kernel import FUSED_DTYPES, load_extension
from neo_engine.kv_cache import KVPool
from neo_engine.layers import EXACT_ROWS, SKINNY_ROWS_WITH_PREPACKED
from neo_engine.weights import ModelWeights, PrepackedWeight
from neo_sim.model import ModelSpec


class FusedDecodeLayers:
    """The compiled `DecodeLayers` over one model's weights and device KV pool."""

    def __init__(self, layers, pool: KVPool):
        self._layers = layers
        self._pool = pool

    @classmethod
    def build(
        cls, spec: ModelSpec, weights: ModelWeights, device: torch.device, pool: KVPool
    ) -> FusedDecodeLayers | None:
        """The fused layers, or None where they do not apply (the module docstring's list)."""
        dtype = weights.embed.dtype
        module = load_extension() if device.type == "cpu" else None
        if (
            module is None
            or dtype not in FUSED_DTYPES
            or pool.k.dtype != dtype
            or pool.device.type != "cpu"
        ):
            return None
        layers = []
        for w in weights.layers:
            gemms = (w.qkv, w.o, w.gate_up, w.down)
            if not all(isinstance(g, PrepackedWeight) and g.weight.dtype == dtype for g in gemms):
                return None
            if w.qkv_bias is not None and w.qkv_bias.dtype != dtype:
                return None
            bias = w.qkv_bias if w.qkv_bias is not None else torch.empty(0, dtype=dtype)
            layers.append(
                [
                    w.input_norm.contiguous(),
                    w.qkv.weight.contiguous(),
                    w.qkv.blocked,
                    bias,
                    w.o.weight.contiguous(),
                    w.o.blocked,
                    w.post_norm.contiguous(),
                    w.gate_up.weight.contiguous(),
                    w.gate_up.blocked,
                    w.down.weight.contiguous(),
                    w.down.blocked,
                ]
            )
        compiled = module.DecodeLayers(
            layers,
            heads=spec.num_heads,
            kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            eps=spec.rms_norm_eps,
            scale=spec.head_dim**-0.5,
            skinny_rows=SKINNY_ROWS_WITH_PREPACKED[dtype],
            exact_rows=EXACT_ROWS,  # past it, GEMMs at `layers.blocked_rows`'s row counts
        )
        return cls(compiled, pool)

    def run(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slots: tuple[torch.Tensor, torch.Tensor],
        tables: torch.Tensor,
        lens: torch.Tensor,
    ) -> tuple[torch.Tensor, list[float]]:
        """hidden [B, h] of B decodes through every layer (cos, sin [B, 1, D] at their
        positions; slots, tables, lens as the executor prepares them): the last layer's output
        and each layer's seconds."""
        blocks, offsets = slots
        return self._layers.run(
            hidden,
            cos.reshape(cos.shape[0], -1).contiguous(),
            sin.reshape(sin.shape[0], -1).contiguous(),
            self._pool.k,
            self._pool.v,
            blocks,
            offsets,
            tables,
            lens,
        )
