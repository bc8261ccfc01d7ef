"""What one call of each operator does: FLOPs, bytes moved, requests touched.

One definition shared by the roofline cost model (which divides by peak rates) and the profile
fits (which fit effective rates), so that the two always agree on what an operator costs.
"""

from __future__ import annotations

from dataclasses import dataclass

from neo_sim.model import ModelSpec

OPS_1D = {
    "linear": "num_tokens",
    "prefill_attn": "prompt_len",
    "lm_head": "num_seqs",
    "h2d": "bytes",
    "d2h": "bytes",
}
OPS_2D = ("gpu_decode_attn", "cpu_decode_attn")


@dataclass(frozen=True)
class Work:
    """What one call of an operator does: FLOPs, bytes moved, requests touched."""

    flops: float
    num_bytes: float
    items: float = 0.0


def work(op: str, model: ModelSpec, size: float, batch: float = 0.0) -> Work:
    """The work of `op` at `size` (tokens, prompt length, sequences or bytes).

    For the decode ops, `size` is the total cached tokens and `batch` the number of requests.
    """
    m = model
    if op == "linear":
        activations = size * (4 * m.hidden_size + 3 * m.intermediate_size) * m.dtype_bytes
        return Work(
            size * m.linear_flops_per_token_per_layer, m.linear_weight_bytes_per_layer + activations
        )
    if op == "prefill_attn":
        return Work(
            m.attn_flops_per_query_key * size * (size + 1) / 2,
            size * (2 * m.q_size + 2 * m.kv_size) * m.dtype_bytes,
        )
    if op == "lm_head":
        return Work(size * m.lm_head_flops_per_token, m.lm_head_weight_bytes)
    if op in ("h2d", "d2h"):
        return Work(0.0, size)
    if op in OPS_2D:
        return Work(
            m.attn_flops_per_query_key * size,
            size * m.kv_bytes_per_token_per_layer + batch * 2 * m.q_size * m.dtype_bytes,
            batch,
        )
    raise KeyError(op)
