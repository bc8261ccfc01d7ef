"""Roofline-shaped fits of measured operator times, in machine terms.

Every operator's time is fitted as

    t = fixed_s + per_item_s * items + max(flops / flops_per_s, bytes / bytes_per_s)

where `flops`, `bytes` and `items` come from the model's dimensions and the operator's size
(`work()` below). The fitted parameters are properties of the machine and its kernels, not of
the model: an effective FLOP rate, an effective bandwidth, a fixed and a per-request overhead.
That is what lets a profile measured with one model predict another model of the family
(scaling by FLOPs and bytes), and what extrapolates outside the measured grid with the right
shape: flat where a kernel is bound by fixed costs, linear where it is bound by bytes or FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from neo_sim.model import ModelSpec

OPS_1D = {"linear": "num_tokens", "prefill_attn": "prompt_len", "lm_head": "num_seqs",
          "h2d": "bytes", "d2h": "bytes"}
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
        return Work(size * m.linear_flops_per_token_per_layer,
                    m.linear_weight_bytes_per_layer + activations)
    if op == "prefill_attn":
        return Work(m.attn_flops_per_query_key * size * (size + 1) / 2,
                    size * (2 * m.q_size + 2 * m.kv_size) * m.dtype_bytes)
    if op == "lm_head":
        return Work(size * m.lm_head_flops_per_token, m.lm_head_weight_bytes)
    if op in ("h2d", "d2h"):
        return Work(0.0, size)
    if op in OPS_2D:
        return Work(m.attn_flops_per_query_key * size,
                    size * m.kv_bytes_per_token_per_layer + batch * 2 * m.q_size * m.dtype_bytes,
                    batch)
    raise KeyError(op)


@dataclass(frozen=True)
class RooflineFit:
    """Fitted machine parameters of one operator (see module docstring)."""

    fixed_s: float
    per_item_s: float
    flops_per_s: float  # math.inf: never compute-bound in the measured range
    bytes_per_s: float

    def predict(self, w: Work) -> float:
        compute = w.flops / self.flops_per_s if w.flops else 0.0
        memory = w.num_bytes / self.bytes_per_s if w.num_bytes else 0.0
        return self.fixed_s + self.per_item_s * w.items + max(compute, memory)

    def to_dict(self) -> dict[str, float | None]:
        return {"fixed_s": self.fixed_s, "per_item_s": self.per_item_s,
                "flops_per_s": None if math.isinf(self.flops_per_s) else self.flops_per_s,
                "bytes_per_s": self.bytes_per_s}

    @classmethod
    def from_dict(cls, data: dict) -> RooflineFit:
        flops = data.get("flops_per_s")
        return cls(float(data["fixed_s"]), float(data.get("per_item_s", 0.0)),
                   math.inf if flops is None else float(flops), float(data["bytes_per_s"]))


def fit_roofline(works: Sequence[Work], seconds: Sequence[float]) -> RooflineFit:
    """Least-squares fit of relative error (every sample counts alike, small or large).

    Parameters are fitted in log space so they stay positive. Needs scipy (imported here, not at
    module load, so that the scheduler's import stays pure Python).
    """
    import numpy as np
    from scipy.optimize import least_squares

    t = np.asarray(seconds, dtype=float)
    flops = np.array([w.flops for w in works], dtype=float)
    nbytes = np.array([w.num_bytes for w in works], dtype=float)
    items = np.array([w.items for w in works], dtype=float)
    use_flops, use_items = bool(flops.any()), bool(items.any())

    def unpack(p):
        fixed, per_item, rate, bw = np.exp(p)
        return fixed, (per_item if use_items else 0.0), (rate if use_flops else np.inf), bw

    def predict(p):
        fixed, per_item, rate, bw = unpack(p)
        compute = flops / rate if use_flops else 0.0
        return fixed + per_item * items + np.maximum(compute, nbytes / bw)

    def residuals(p):
        return (predict(p) - t) / t

    guess_bw = float(np.max(nbytes / t)) if nbytes.any() else 1e9
    guess_rate = float(np.max(flops / t)) if use_flops else 1e12
    starts = [
        np.log([max(t.min() * 0.5, 1e-9), max(t.min() * 0.01, 1e-12), guess_rate, guess_bw]),
        np.log([max(t.min() * 0.1, 1e-9), max(t.min() * 0.1, 1e-12), guess_rate * 2, guess_bw * 2]),
    ]
    best = min((least_squares(residuals, x0, method="trf", loss="soft_l1", f_scale=0.1,
                              max_nfev=4000) for x0 in starts), key=lambda r: r.cost)
    fixed, per_item, rate, bw = unpack(best.x)
    return RooflineFit(float(fixed), float(per_item), float(rate), float(bw))
