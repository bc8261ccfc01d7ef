"""Where operators are sampled: grids keyed by the registry's axis names.

A grid maps each sample axis (`neo_sim.operators.Operator.axes`: `num_tokens`, `prompt_len`,
`num_seqs`, `bytes`, `batch`, `context_len`) to its points. Derived profiles sample a cost
model on `DERIVED`; `neo-profile` measures on `measured_grids()`; both turn the seconds into
profile samples with `samples_on`, so the two kinds of profile have the same shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

from neo_sim.operators import SAMPLED, Operator
from neo_sim.profile import Samples1D, Samples2D

Grids = Mapping[str, tuple[int, ...]]
Point = tuple[float, ...]


def geometric_grid(low: int, high: int, per_octave: int = 2) -> tuple[int, ...]:
    """Integers from low to high, `per_octave` points per doubling (denser where curves bend)."""
    points, x = {low, high}, float(low)
    step = 2 ** (1 / per_octave)
    while x < high:
        points.add(int(round(x)))
        x *= step
    return tuple(sorted(p for p in points if low <= p <= high))


def dense_then_geometric(dense_to: int, step_to: int, step: int, high: int) -> tuple[int, ...]:
    """Every size up to `dense_to`, every `step` up to `step_to`, then two per octave.

    GEMM time on a CPU BLAS (and tile quantisation on a GPU) jumps between neighbouring small
    sizes (multiples of 8 run much faster), so small sizes are sampled densely.
    """
    points = set(range(1, dense_to + 1)) | set(range(step, step_to + 1, step))
    points |= set(geometric_grid(step_to, high, 2))
    return tuple(sorted(points))


DERIVED: Grids = {
    "num_tokens": geometric_grid(1, 16384),
    "prompt_len": geometric_grid(16, 32768),
    "num_seqs": geometric_grid(1, 1024),
    "bytes": geometric_grid(4096, 2**30, 1),
    "batch": geometric_grid(1, 512, 1),
    "context_len": geometric_grid(16, 32768, 1),
}


def measured_grids(quick: bool) -> Grids:
    """The profiler's grids: dense at small sizes, smaller and shorter when `quick`."""
    if quick:
        return {
            "num_tokens": dense_then_geometric(64, 256, 8, 1024),
            "prompt_len": geometric_grid(16, 1024, 2),
            "num_seqs": dense_then_geometric(16, 64, 8, 64),
            "bytes": geometric_grid(4096, 2**26, 1),
            "batch": geometric_grid(1, 32, 1),
            "context_len": geometric_grid(16, 1024, 1),
        }
    return {
        "num_tokens": dense_then_geometric(32, 512, 8, 8192),
        "prompt_len": geometric_grid(16, 8192, 2),
        "num_seqs": dense_then_geometric(16, 128, 8, 512),
        "bytes": geometric_grid(4096, 2**30, 1),
        "batch": geometric_grid(1, 256, 1),
        "context_len": geometric_grid(16, 16384, 1),
    }


def points(grids: Grids, op: Operator) -> list[Point]:
    """Every sample point of `op` on `grids` (the product of its axes)."""
    return [tuple(float(v) for v in p) for p in itertools.product(*(grids[a] for a in op.axes))]


def samples_on(
    grids: Grids, seconds_at: Callable[[Operator, Point], float]
) -> dict[str, Samples1D | Samples2D]:
    """Profile samples of every sampled operator: `seconds_at(op, point)` on each grid point."""
    samples: dict[str, Samples1D | Samples2D] = {}
    for op in SAMPLED:
        axes = [tuple(float(v) for v in grids[a]) for a in op.axes]
        if len(axes) == 1:
            samples[op.name] = Samples1D(axes[0], tuple(seconds_at(op, (x,)) for x in axes[0]))
        else:
            rows, cols = axes
            seconds = tuple(tuple(seconds_at(op, (r, c)) for c in cols) for r in rows)
            samples[op.name] = Samples2D(rows, cols, seconds)
    return samples
