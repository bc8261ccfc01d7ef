"""`neo-sim cost`: the cost model made inspectable.

Prints the predicted seconds of one operator at several sizes as JSON:
{"op": ..., "args": [...], "units": [...], "sizes": [...], "seconds": [...], "cost_model": ...};
for a profiled cost model also how each value was obtained (interpolated / extrapolated /
scaled). The operators and their arguments are the registry's (`neo_sim.operators`): `--sizes`
varies an operator's last argument (tokens for `linear`, the prompt length for
`prefill_attn`, total cached tokens for the decode attentions, sequences for `lm_head`, bytes
for `h2d`/`d2h`); `--batch` sets the decode attentions' first argument (requests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from neo_sim.catalog import resolve_target
from neo_sim.cli import common
from neo_sim.errors import NeoError
from neo_sim.operators import OPERATORS, operator
from neo_sim.profiled import ProfiledCostModel
from neo_sim.runs import RunSpec


def add_parser(sub) -> None:
    lines = "\n".join(
        f"  {op.name}({', '.join(op.args)}): {op.covers}" for op in OPERATORS.values()
    )
    p = sub.add_parser(
        "cost",
        help="print predicted seconds of one operator (JSON)",
        description=__doc__,
        epilog=f"operators:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hardware", required=True, help=_field_help("hardware"))
    p.add_argument("--model", default=None, help=_field_help("model"))
    p.add_argument("--op", required=True, choices=tuple(OPERATORS))
    p.add_argument("--sizes", default="1,16,256,4096", help="comma-separated sizes")
    p.add_argument(
        "--batch",
        type=common.positive_int,
        default=1,
        help="requests, for the decode attentions (default 1)",
    )
    common.add_output_arg(p)
    p.set_defaults(run=run)


def _field_help(name: str) -> str:
    return next(f for f in dataclasses.fields(RunSpec) if f.name == name).metadata["help"]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise NeoError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise NeoError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def call_args(op_name: str, size: int, batch: int) -> tuple[int, ...]:
    """The operator's arguments for one printed size: `size` is its last argument."""
    op = operator(op_name)
    return {0: (), 1: (size,), 2: (batch, size)}[len(op.args)]


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args.hardware, args.model)
    sizes = parse_sizes(args.sizes)
    cost, op = target.cost, operator(args.op)
    calls = [call_args(op.name, s, args.batch) for s in sizes]
    result = {
        "op": op.name,
        "args": list(op.args),
        "units": list(op.units),
        "per": op.per,
        "sizes": sizes,
        "cost_model": cost.description,
        "seconds": [cost.evaluate(op.name, *c) for c in calls],
    }
    if len(op.args) == 2:
        result["batch"] = args.batch
    if isinstance(cost, ProfiledCostModel) and op.args:
        result["lookup"] = [cost.explain(op.name, *c)[1].value for c in calls]
    text = json.dumps(result)
    print(text)
    if args.output:
        common.write_json(args.output / "cost.json", result)
    return 0
