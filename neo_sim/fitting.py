"""Roofline-shaped fits of measured operator times, in machine terms.

Every operator's time is fitted as

    t = fixed_s + per_item_s * items + max(flops / flops_per_s, bytes / bytes_per_s)

where `flops`, `bytes` and `items` come from the model's dimensions and the operator's size
(`neo_sim.opwork.work`). The fitted parameters are properties of the machine and its kernels, not of
the model: an effective FLOP rate, an effective bandwidth, a fixed and a per-request overhead.
That is what lets a profile measured with one model predict another model of the family
(scaling by FLOPs and bytes), and what extrapolates outside the measured grid with the right
shape: flat where a kernel is bound by fixed costs, linear where it is bound by bytes or FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from neo_sim.opwork import Work, work  # noqa: F401 (re-exported)


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
        return {
            "fixed_s": self.fixed_s,
            "per_item_s": self.per_item_s,
            "flops_per_s": None if math.isinf(self.flops_per_s) else self.flops_per_s,
            "bytes_per_s": self.bytes_per_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RooflineFit:
        """A fit from its JSON; ValueError naming the parameter if it is not a usable number
        (times finite and >= 0, rates positive; a missing FLOP rate means never compute-bound)."""
        flops = data.get("flops_per_s")
        fit = cls(
            float(data["fixed_s"]),
            float(data.get("per_item_s", 0.0)),
            math.inf if flops is None else float(flops),
            float(data["bytes_per_s"]),
        )
        for name in ("fixed_s", "per_item_s"):
            value = getattr(fit, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not fit.bytes_per_s > 0 or not math.isfinite(fit.bytes_per_s):
            raise ValueError(f"bytes_per_s must be a finite number > 0, got {fit.bytes_per_s}")
        if not fit.flops_per_s > 0:  # inf allowed (written as null)
            raise ValueError(f"flops_per_s must be > 0, got {fit.flops_per_s}")
        return fit


def fit_roofline(works: Sequence[Work], seconds: Sequence[float]) -> RooflineFit:
    """Least-squares fit of relative error (every sample counts alike, small or large).

    Simpler forms are preferred when they fit as well: a FLOP term that the data cannot tell
    apart from the byte term (decode attention of an MHA model, where FLOPs and bytes are
    proportional) is dropped, so that scaling to a GQA model does not invent a compute bound.
    Parameters are fitted in log space so they stay positive. Needs scipy, imported here and
    not at module load, so that the scheduler's import stays pure Python.
    """
    import numpy as np

    t = np.asarray(seconds, dtype=float)
    flops = np.array([w.flops for w in works], dtype=float)
    nbytes = np.array([w.num_bytes for w in works], dtype=float)
    items = np.array([w.items for w in works], dtype=float)
    variants = [
        (f, i)
        for f in (False, True)
        for i in (False, True)
        if (not f or flops.any()) and (not i or items.any())
    ]
    results = [(_fit_variant(t, flops, nbytes, items, f, i), f + i) for f, i in variants]
    best_cost = min(cost for (_, cost), _ in results)
    tolerance = best_cost * 1.02 + 1e-6 * len(t)
    simplest = min((r for r in results if r[0][1] <= tolerance), key=lambda r: (r[1], r[0][1]))
    return simplest[0][0]


def _fit_variant(t, flops, nbytes, items, use_flops: bool, use_items: bool):
    """One least-squares fit with or without the FLOP and per-item terms: (fit, cost)."""
    import numpy as np
    from scipy.optimize import least_squares

    def unpack(p):
        fixed, per_item, rate, bw = np.exp(np.clip(p, -700.0, 700.0))  # the solver may try far
        return fixed, (per_item if use_items else 0.0), (rate if use_flops else np.inf), bw

    def residuals(p):
        fixed, per_item, rate, bw = unpack(p)
        compute = flops / rate if use_flops else 0.0
        return (fixed + per_item * items + np.maximum(compute, nbytes / bw) - t) / t

    guess_bw = float(np.max(nbytes / t)) if nbytes.any() else 1e9
    guess_rate = float(np.max(flops / t)) if flops.any() else 1e12
    starts = [
        np.log([max(t.min() * 0.5, 1e-9), max(t.min() * 0.01, 1e-12), guess_rate, guess_bw]),
        np.log([max(t.min() * 0.1, 1e-9), max(t.min() * 0.1, 1e-12), guess_rate * 2, guess_bw * 2]),
    ]
    best = min(
        (
            least_squares(residuals, x0, method="trf", loss="soft_l1", f_scale=0.1, max_nfev=4000)
            for x0 in starts
        ),
        key=lambda r: r.cost,
    )
    fixed, per_item, rate, bw = unpack(best.x)
    return RooflineFit(float(fixed), float(per_item), float(rate), float(bw)), float(best.cost)
