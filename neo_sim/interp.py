"""Piecewise-linear lookup tables in pure Python.

The scheduler prices hundreds of candidate sub-batches per iteration, so a lookup must cost a
microsecond, not the tens of microseconds of numpy/scipy calls on scalars. These tables are
exact on their grid points and linear between them; outside the grid they report so, and the
caller extrapolates (see `neo_sim.profiled`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def _check_axis(values: Sequence[float], what: str) -> list[float]:
    axis = [float(v) for v in values]
    if not axis:
        raise ValueError(f"{what}: empty grid")
    if any(b <= a for a, b in zip(axis, axis[1:])):
        raise ValueError(f"{what}: grid must be strictly increasing")
    return axis


def _bracket(axis: list[float], x: float) -> tuple[int, float]:
    """Index i and weight w so that x = (1-w)*axis[i] + w*axis[i+1], clamped to the grid."""
    if len(axis) == 1 or x <= axis[0]:
        return 0, 0.0
    if x >= axis[-1]:
        return len(axis) - 2, 1.0
    i = bisect_right(axis, x) - 1
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


class Table1D:
    """y(x) on a strictly increasing grid."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], what: str = "table"):
        self.xs = _check_axis(xs, what)
        self.ys = [float(y) for y in ys]
        if len(self.ys) != len(self.xs):
            raise ValueError(f"{what}: {len(self.xs)} grid points but {len(self.ys)} values")

    def contains(self, x: float) -> bool:
        return self.xs[0] <= x <= self.xs[-1]

    def clamp(self, x: float) -> float:
        return min(max(x, self.xs[0]), self.xs[-1])

    def __call__(self, x: float) -> float:
        """Linear interpolation, clamped to the end values outside the grid."""
        if len(self.xs) == 1:
            return self.ys[0]
        i, w = _bracket(self.xs, x)
        return self.ys[i] + w * (self.ys[i + 1] - self.ys[i])


class Table2D:
    """z(x, y) on a rectangular grid; `zs[i][j]` belongs to (xs[i], ys[j])."""

    def __init__(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        zs: Sequence[Sequence[float]],
        what: str = "table",
    ):
        self.xs = _check_axis(xs, f"{what} (first axis)")
        self.ys = _check_axis(ys, f"{what} (second axis)")
        if len(zs) != len(self.xs) or any(len(row) != len(self.ys) for row in zs):
            raise ValueError(f"{what}: values must be a {len(self.xs)} x {len(self.ys)} matrix")
        self.zs = [[float(z) for z in row] for row in zs]
        # x is a batch size: few values, each looked up once
        self._x_rows: dict[float, tuple[list[float], list[float], float]] = {}

    def contains(self, x: float, y: float) -> bool:
        return self.xs[0] <= x <= self.xs[-1] and self.ys[0] <= y <= self.ys[-1]

    def clamp(self, x: float, y: float) -> tuple[float, float]:
        return (min(max(x, self.xs[0]), self.xs[-1]), min(max(y, self.ys[0]), self.ys[-1]))

    def along_y(self, x: float, ys: Sequence[float]) -> list[float]:
        """`[self(x, y) for y in ys]`, fast when successive y mostly share a grid cell (a
        steady run's contexts): a cell's corners are looked up once, and the arithmetic is
        `__call__`'s, so the values are the same bit for bit."""
        row, row1, wx = self.rows_at(x)
        axis = self.ys
        values: list[float] = []
        lo = hi = span = r0 = r1 = d0 = d1 = 0.0  # the current cell [lo, hi): none yet
        for y in ys:
            if not lo <= y < hi:
                if len(axis) == 1 or y <= axis[0] or y >= axis[-1]:
                    values.append(self(x, y))  # on or beyond the grid's edge
                    lo = hi = 0.0
                    continue
                j = bisect_right(axis, y) - 1  # as `_bracket` finds it
                lo, hi = axis[j], axis[j + 1]
                span = hi - lo
                r0, r1 = row[j], row1[j]
                d0, d1 = row[j + 1] - r0, row1[j + 1] - r1
            wy = (y - lo) / span
            low = r0 + wy * d0
            high = r1 + wy * d1
            values.append(low + wx * (high - low))
        return values

    def rows_at(self, x: float) -> tuple[list[float], list[float], float]:
        """The two rows of z that bracket x, and x's weight between them (cached per x)."""
        rows = self._x_rows.get(x)
        if rows is None:
            if len(self._x_rows) > 4096:
                self._x_rows.clear()
            i, wx = _bracket(self.xs, x)
            rows = self._x_rows[x] = (self.zs[i], self.zs[min(i + 1, len(self.xs) - 1)], wx)
        return rows

    def __call__(self, x: float, y: float) -> float:
        """Bilinear interpolation, clamped to the grid's edges outside it."""
        row, row1, wx = self._x_rows.get(x) or self.rows_at(x)
        ys = self.ys
        if len(ys) == 1 or y <= ys[0]:  # _bracket(ys, y), inlined: the scheduler's hot path
            j, j1, wy = 0, min(1, len(ys) - 1), 0.0
        elif y >= ys[-1]:
            j, j1, wy = len(ys) - 2, len(ys) - 1, 1.0
        else:
            j = bisect_right(ys, y) - 1
            j1 = j + 1
            wy = (y - ys[j]) / (ys[j1] - ys[j])
        low = row[j] + wy * (row[j1] - row[j])
        high = row1[j] + wy * (row1[j1] - row1[j])
        return low + wx * (high - low)
