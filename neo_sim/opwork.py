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


def work(op: str, model: ModelSpec, *args: float) -> Work:
    """The work of `op` called with `args` (see `neo_sim.operators.OPERATORS[op].args`)."""
    m = model
    if op == "linear":
        (num_tokens,) = args
        activations = num_tokens * (4 * m.hidden_size + 3 * m.intermediate_size) * m.dtype_bytes
        return Work(
            num_tokens * m.linear_flops_per_token_per_layer,
            m.linear_weight_bytes_per_layer + activations,
        )
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
