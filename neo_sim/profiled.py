"""ProfiledCostModel: operator costs from a profile's measured grid and its fits.

Inside the grid a lookup interpolates the measured samples (exact on grid points). Outside it,
the roofline-shaped fit gives the shape and the nearest grid value the level:
`t(x) = table(edge) * fit(x) / fit(edge)`, so the curve stays continuous at the grid's edge and
grows like the physics says (flat when overhead-bound, linear when bound by bytes or FLOPs).

Given a model other than the profile's, every lookup uses the fit with that model's FLOPs and
bytes (the fit's parameters are machine rates, see `neo_sim.fitting`). How well that predicts
is measured by `neo-profile check`, not assumed.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from enum import StrEnum

from neo_sim.costmodel import CostModel
from neo_sim.interp import Table1D, Table2D
from neo_sim.machine import mismatches
from neo_sim.model import ModelSpec
from neo_sim.operators import operator
from neo_sim.opwork import work
from neo_sim.profile import Profile, Samples1D

MEMO_LIMIT = 1 << 16  # entries per operator before its memo is cleared


class Lookup(StrEnum):
    """How a prediction was made."""

    INTERPOLATED = "interpolated"
    EXTRAPOLATED = "extrapolated"
    SCALED = "scaled"  # another model: the fit with that model's FLOPs and bytes


def same_dimensions(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two specs have the same layer shapes and dtypes (names may differ)."""
    keys = (
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "dtype",
        "kv_dtype",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)


class ProfiledCostModel(CostModel):
    def __init__(self, profile: Profile, model: ModelSpec | None = None):
        self.profile = profile
        self.hardware = profile.hardware
        self.model = model or profile.model
        self.scaled = not same_dimensions(self.model, profile.model)
        self._tables: dict[str, Table1D | Table2D] = {}
        for op, s in profile.samples.items():
            if isinstance(s, Samples1D):
                self._tables[op] = Table1D(s.xs, s.seconds, op)
            else:
                self._tables[op] = Table2D(s.batch, s.context_len, s.seconds, op)
        self._fits = profile.fits
        self._operators = {name: operator(name) for name in profile.samples}
        self._memos: dict[str, dict] = {name: {} for name in profile.samples}  # op -> args -> s
        self._attn_at: dict[int, Callable[[int], float]] = {}  # cpu_decode_attn_at, per batch
        # Per 2-D operator, its grid's (batch low, batch high, context low, context high);
        # an empty range when the profile is of another model (every lookup is then scaled).
        self._grid_bounds = {
            op: (t.xs[0], t.xs[-1], t.ys[0], t.ys[-1]) if not self.scaled else (1.0, 0.0, 1.0, 0.0)
            for op, t in self._tables.items()
            if isinstance(t, Table2D)
        }
        how = (
            f"scaled from {profile.model.name} by FLOPs and bytes"
            if self.scaled
            else "interpolated, roofline-extrapolated"
        )
        self.description = (
            f"profile {profile.name} ({profile.provenance.kind}"
            f"{', ' + profile.provenance.date if profile.provenance.date else ''}): "
            f"{self.model.name}, {how}"
        )
        if profile.provenance.kind == "measured":
            differs = mismatches(profile.provenance.machine)
            if differs:  # fine for a what-if on that machine, wrong for this one
                self.description += "; measured on another machine: " + "; ".join(differs)

    # the lookups --------------------------------------------------------------------------
    def explain(self, op: str, *args: float) -> tuple[float, Lookup]:
        """Seconds of one call of `op` with `args` (the registry's order) and how it was
        obtained: interpolated in the grid, extrapolated from its edge, or scaled."""
        fit = self._fits[op]
        if self.scaled:
            return fit.predict(work(op, self.model, *args)), Lookup.SCALED
        point = self._operators[op].to_axes(*args)
        table = self._tables[op]
        if table.contains(*point):
            return table(*point), Lookup.INTERPOLATED
        edge = table.clamp(*point)
        edge = edge if isinstance(edge, tuple) else (edge,)
        at_edge = fit.predict(work(op, self.model, *self._operators[op].from_axes(*edge)))
        here = fit.predict(work(op, self.model, *args))
        return table(*edge) * here / at_edge, Lookup.EXTRAPOLATED

    # CostModel ----------------------------------------------------------------------------
    # Lookups are memoised per operator: the scheduler asks the same few sizes over and over
    # (a candidate sub-batch's linear width, q/k/v copy bytes), and a table lookup costs ~100x
    # a dict hit. Each memo is cleared when it grows past MEMO_LIMIT entries.
    def _memo(self, op: str, x: float) -> float:
        """`explain(op, x)`'s seconds for a one-argument operator, memoised (keyed by x
        itself: no argument tuple to build on the hot path)."""
        memo = self._memos[op]
        value = memo.get(x)
        if value is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            value = memo[x] = self.explain(op, x)[0]
        return value

    def _decode_attn(self, op: str, batch: int, total_tokens: int) -> float:
        """A decode attention, memoised: the table when inside the grid (the common case,
        the same value `explain` gives), else `explain`. The grid's bounds are looked up once
        (`_grid_bounds`), not through `contains`. Within a step the scheduler and the timing
        model price the same decode sets several times; NEO's greedy step prices each CPU
        decode candidate through `cpu_decode_attn_at` instead (keys that rarely repeat)."""
        memo = self._memos[op]
        key = (batch, total_tokens)
        value = memo.get(key)
        if value is None:
            if len(memo) >= MEMO_LIMIT:
                memo.clear()
            context = total_tokens / batch
            low_x, high_x, low_y, high_y = self._grid_bounds[op]
            if low_x <= batch <= high_x and low_y <= context <= high_y:
                value = memo[key] = self._tables[op](batch, context)
            else:
                value = memo[key] = self.explain(op, batch, total_tokens)[0]
        return value

    def linear(self, num_tokens: int) -> float:
        return self._memo("linear", num_tokens) if num_tokens > 0 else 0.0

    def prefill_attn(self, prompt_len: int) -> float:
        return self._memo("prefill_attn", prompt_len) if prompt_len > 0 else 0.0

    def gpu_decode_attn(self, batch: int, total_tokens: int) -> float:
        if batch <= 0:
            return 0.0
        return self._decode_attn(
            "gpu_decode_attn", batch, total_tokens if total_tokens > batch else batch
        )

    def gpu_decode_attn_run(self, batch: int, first_total: int, count: int) -> list[float]:
        """As `CostModel`'s, with the table walked along the context axis (`Table2D.along_y`)
        when every context of the run is inside the grid: what `_decode_attn` computes,
        without a bisection or a memo entry per iteration."""
        op = "gpu_decode_attn"
        low_x, high_x, low_y, high_y = self._grid_bounds[op]
        # Contexts grow with k: the run is inside the grid if its first and last ones are.
        first, last = first_total / batch, (first_total + (count - 1) * batch) / batch
        if count < 1 or first_total < batch or not low_x <= batch <= high_x:
            return super().gpu_decode_attn_run(batch, first_total, count)
        if first < low_y or last > high_y:
            return super().gpu_decode_attn_run(batch, first_total, count)
        contexts = [(first_total + k * batch) / batch for k in range(count)]
        return self._tables[op].along_y(batch, contexts)

    def cpu_decode_attn(self, batch: int, total_tokens: int) -> float:
        if batch <= 0:
            return 0.0
        return self._decode_attn(
            "cpu_decode_attn", batch, total_tokens if total_tokens > batch else batch
        )

    def cpu_decode_attn_at(self, batch: int) -> Callable[[int], float]:
        """`cpu_decode_attn(batch, ·)` with the grid's row for `batch` bound once (the
        common case, inside the grid); what `_decode_attn` computes, bit for bit. Memoised
        per batch: NEO's greedy step asks for each batch size it grows through."""
        pricers = self._attn_at
        pricer = pricers.get(batch)
        if pricer is None:
            if len(pricers) >= MEMO_LIMIT:
                pricers.clear()
            pricer = pricers[batch] = self._cpu_decode_attn_at(batch)
        return pricer

    def _cpu_decode_attn_at(self, batch: int) -> Callable[[int], float]:
        op = "cpu_decode_attn"
        low_x, high_x, low_y, high_y = self._grid_bounds[op]
        if batch <= 0 or not low_x <= batch <= high_x:
            return super().cpu_decode_attn_at(batch)
        table = self._tables[op]
        row, row1, wx = table.rows_at(batch)  # type: ignore[union-attr]
        ys = table.ys
        first, last, last_index = ys[0], ys[-1], len(ys) - 1
        # Each grid cell's width and both rows' rise across it, computed once: the same
        # floats `Table2D.__call__` computes per call, so the results are bit for bit its.
        spans = [b - a for a, b in zip(ys, ys[1:])] or [1.0]
        rise = [b - a for a, b in zip(row, row[1:])] or [0.0]
        rise1 = [b - a for a, b in zip(row1, row1[1:])] or [0.0]

        def seconds(total_tokens: int) -> float:
            """`Table2D.__call__(batch, context)`'s arithmetic, bit for bit, with the batch's
            rows and their per-cell differences bound once; repeated on purpose: NEO's greedy
            step calls this for every CPU decode it prices, and each operation it saves
            shows in the benchmark."""
            total = total_tokens if total_tokens > batch else batch
            y = total / batch
            if not low_y <= y <= high_y:
                return self._decode_attn(op, batch, total)
            if not last_index or y <= first:
                j, wy = 0, 0.0
            elif y >= last:
                j, wy = last_index - 1, 1.0
            else:
                j = bisect_right(ys, y) - 1
                wy = (y - ys[j]) / spans[j]
            low = row[j] + wy * rise[j]
            high = row1[j] + wy * rise1[j]
            return low + wx * (high - low)

        return seconds

    def h2d(self, num_bytes: float) -> float:
        return self._memo("h2d", num_bytes) if num_bytes > 0 else 0.0

    def d2h(self, num_bytes: float) -> float:
        return self._memo("d2h", num_bytes) if num_bytes > 0 else 0.0

    @property
    def launch(self) -> float:
        return self.profile.launch_s

    def lm_head(self, num_seqs: int) -> float:
        return self._memo("lm_head", num_seqs) if num_seqs > 0 else 0.0

    def host_overhead(self, num_seqs: int) -> float:
        measured = self.profile.host_overhead
        return measured.seconds(num_seqs) if measured is not None and num_seqs > 0 else 0.0

    def fused_decode_saving(self, num_seqs: int) -> float:
        measured = self.profile.fused_decode_saving
        return measured.seconds(num_seqs) if measured is not None and num_seqs > 0 else 0.0
