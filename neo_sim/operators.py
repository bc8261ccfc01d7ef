"""The operator registry: every timed operator of a Llama layer, defined once.

An operator is what the cost model prices, the profiler measures, a profile stores and
`neo-sim cost` prints. Its entry fixes its name, its arguments (names, order, units), what it
covers, whether it is paid per layer or per iteration, and the sample axes under which a
profile stores it. Everything else is driven from here:
- `neo_sim.costmodel.CostModel` checks that every implementation has one method per operator
  with exactly these arguments, in this order;
- `neo_sim.profile` reads, writes and validates `samples.<name>` with these axes;
- `neo_sim.derive` and `neo-profile` sample every operator on grids keyed by axis name, and
  `neo-profile check` re-measures every operator;
- `neo_sim.opwork.work` gives each operator's FLOPs and bytes (the roofline and the fits).
Adding an operator: one entry here, its `work` in `neo_sim.opwork`, its method in each cost
model (roofline, profiled) and its timer in `neo_engine.opbench` (see docs/architecture.md).
Pure Python.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Operator:
    """One timed operator.

    `args`/`units`: the cost-model method's arguments, in call order, and their units.
    `axes`: the profile's sample axes (the profiler's grid names). They equal `args` except for
    the decode attentions, sampled over (batch, mean context per request) and called with
    (batch, total cached tokens): `to_axes`/`from_axes` convert.
    `per`: "layer" (seconds per layer), "iteration" (once per iteration) or "copy" (one copy).
    """

    name: str
    args: tuple[str, ...]
    units: tuple[str, ...]
    per: str
    covers: str
    axes: tuple[str, ...]

    @functools.cached_property
    def mean_context(self) -> bool:
        return self.axes == ("batch", "context_len")

    def to_axes(self, *args: float) -> tuple[float, ...]:
        """Call arguments -> the sample point they fall on."""
        if self.mean_context:
            batch, total = args
            return (batch, total / batch)
        return args

    def from_axes(self, *point: float) -> tuple[float, ...]:
        """A sample point -> call arguments."""
        if self.mean_context:
            batch, context = point
            return (batch, batch * context)
        return tuple(point)


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator(
            "linear",
            ("num_tokens",),
            ("tokens",),
            "layer",
            "pre- and post-projection of num_tokens tokens: RMSNorms, QKV and O projections, "
            "rotary embedding, MLP (with TP: the two all-reduces)",
            ("num_tokens",),
        ),
        Operator(
            "prefill_attn",
            ("prompt_len",),
            ("tokens",),
            "layer",
            "causal self-attention of one prompt of prompt_len tokens, KV store included",
            ("prompt_len",),
        ),
        Operator(
            "gpu_decode_attn",
            ("batch", "total_tokens"),
            ("requests", "tokens"),
            "layer",
            "paged decode attention on the GPU: batch queries over total_tokens cached tokens "
            "in all, KV store included",
            ("batch", "context_len"),
        ),
        Operator(
            "cpu_decode_attn",
            ("batch", "total_tokens"),
            ("requests", "tokens"),
            "layer",
            "decode attention on the host CPU: batch queries over total_tokens cached tokens "
            "in all, KV store included",
            ("batch", "context_len"),
        ),
        Operator(
            "lm_head",
            ("num_seqs",),
            ("sequences",),
            "iteration",
            "final RMSNorm, LM head GEMM and sampling of num_seqs sequences",
            ("num_seqs",),
        ),
        Operator("h2d", ("num_bytes",), ("bytes",), "copy", "one host-to-device copy", ("bytes",)),
        Operator("d2h", ("num_bytes",), ("bytes",), "copy", "one device-to-host copy", ("bytes",)),
        Operator(
            "launch",
            (),
            (),
            "layer",
            "fixed cost of issuing one sub-batch's CPU attention of one layer (hand-off to "
            "the host and back)",
            (),
        ),
    )
}

# Operators whose time depends on a size (sampled on grids); `launch` is one constant.
SAMPLED: tuple[Operator, ...] = tuple(op for op in OPERATORS.values() if op.axes)


def operator(name: str) -> Operator:
    try:
        return OPERATORS[name]
    except KeyError:
        raise KeyError(f"unknown operator {name!r}: use one of {', '.join(OPERATORS)}") from None
