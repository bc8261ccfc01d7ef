"""What one call of each operator does: FLOPs, bytes moved, requests touched.

One definition shared by the roofline cost model (which divides by peak rates) and the profile
fits (which fit effective rates), so that the two always agree on what an operator costs.
Arguments are the operator's, in the registry's order (`neo_sim.operators`).
"""

from __future__ import annotations

from dataclasses import dataclass

from neo_sim.model import ModelSpec


@dataclass(frozen=True)
class Work:
    """What one call of an operator does: FLOPs, bytes moved, requests touched."""

    flops: float
    num_bytes: float
    items: float = 0.0


@dataclass(frozen=True)
class Kernel:
    """One kernel of a layer's `linear` work, on one tensor-parallel shard."""

    name: str  # the name measured GPU profiles use (e.g. "mlp_up_proj")
    flops: float
    num_bytes: float
    gemm: bool  # a GEMM (compute- or weight-bound), else an elementwise pass over activations


def linear_kernels(model: ModelSpec, num_tokens: float, tp: int = 1) -> tuple[Kernel, ...]:
    """The kernels of one layer's `linear(num_tokens)` on one of `tp` shards: four GEMMs (each
    reads its weights and input and writes its output, `dtype` operands) and five elementwise
    passes (bytes read + written). The layout of measured GPU profiles [vidur-profiling]."""
    m, n, b = model, num_tokens, model.dtype_bytes
    h, ffn = m.hidden_size, m.intermediate_size
    q, kv, ffn_shard = m.q_size / tp, m.kv_size / tp, ffn / tp

    def gemm(name: str, k: float, out: float) -> Kernel:
        return Kernel(name, 2 * n * k * out, b * (k * out + n * k + n * out), True)

    def elementwise(name: str, elements: float) -> Kernel:
        return Kernel(name, 0.0, b * elements, False)

    return (
        elementwise("input_layernorm", 2 * n * h),
        gemm("attn_pre_proj", h, q + 2 * kv),
        elementwise("attn_rope", 2 * n * (q + kv)),
        gemm("attn_post_proj", q, h),
        elementwise("post_attention_layernorm", 2 * n * h),
        gemm("mlp_up_proj", h, 2 * ffn_shard),
        elementwise("mlp_act", 3 * n * ffn_shard),
        gemm("mlp_down_proj", ffn_shard, h),
        elementwise("add", 3 * n * h),
    )


def work(op: str, model: ModelSpec, *args: float) -> Work:
    """The work of `op` called with `args` (see `neo_sim.operators.OPERATORS[op].args`)."""
    m = model
    if op == "linear":
        (num_tokens,) = args
        kernels = linear_kernels(m, num_tokens)
        return Work(sum(k.flops for k in kernels), sum(k.num_bytes for k in kernels))
    if op == "prefill_attn":
        (n,) = args
        return Work(
            m.attn_flops_per_query_key * n * (n + 1) / 2,
            n * (2 * m.q_size + 2 * m.kv_size) * m.dtype_bytes,
        )
    if op == "lm_head":
        (num_seqs,) = args
        return Work(num_seqs * m.lm_head_flops_per_token, m.lm_head_weight_bytes)
    if op in ("h2d", "d2h"):
        (num_bytes,) = args
        return Work(0.0, num_bytes)
    if op in ("gpu_decode_attn", "cpu_decode_attn"):
        batch, total_tokens = args
        return Work(
            m.attn_flops_per_query_key * total_tokens,
            total_tokens * m.kv_bytes_per_token_per_layer + batch * 2 * m.q_size * m.dtype_bytes,
            batch,
        )
    raise KeyError(op)
