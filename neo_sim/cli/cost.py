"""`neo-sim cost`: the cost model made inspectable.

Prints the predicted per-layer seconds of one operator at several sizes as JSON:
{"op": ..., "sizes": [...], "seconds": [...], "cost_model": ...}; for a profiled cost model
also how each value was obtained (interpolated / extrapolated / scaled). Sizes are tokens for
`linear`, prompt lengths for `prefill_attn`, total cached tokens for the decode ops (with
`--batch` requests), sequences for `lm_head` and bytes for `h2d`/`d2h`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from neo_sim.catalog import resolve_target
from neo_sim.cli import common
from neo_sim.errors import NeoError
from neo_sim.profiled import ProfiledCostModel
from neo_sim.runs import RunSpec

OPS = (
    "linear",
    "prefill_attn",
    "gpu_decode_attn",
    "cpu_decode_attn",
    "lm_head",
    "h2d",
    "d2h",
    "launch",
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "cost",
        help="print predicted seconds of one operator (JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hardware", required=True, help=_field_help("hardware"))
    p.add_argument("--model", default=None, help=_field_help("model"))
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--sizes", default="1,16,256,4096", help="comma-separated sizes")
    p.add_argument(
        "--batch",
        type=common.positive_int,
        default=1,
        help="requests, for the decode ops (default 1)",
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


def run(args: argparse.Namespace) -> int:
    target = resolve_target(args.hardware, args.model)
    sizes = parse_sizes(args.sizes)
    cost, op = target.cost, args.op
    result = {"op": op, "sizes": sizes, "cost_model": target.cost.description}
    if op == "launch":
        result["seconds"] = [cost.launch for _ in sizes]
    else:
        calls = {
            "linear": lambda s: cost.linear(s),
            "prefill_attn": lambda s: cost.prefill_attn([s]),
            "gpu_decode_attn": lambda s: cost.gpu_decode_attn(s, args.batch),
            "cpu_decode_attn": lambda s: cost.cpu_decode_attn(args.batch, s),
            "lm_head": lambda s: cost.lm_head(s),
            "h2d": lambda s: cost.h2d(s),
            "d2h": lambda s: cost.d2h(s),
        }
        result["seconds"] = [calls[op](s) for s in sizes]
        if op in ("gpu_decode_attn", "cpu_decode_attn"):
            result["batch"] = args.batch
        if isinstance(cost, ProfiledCostModel):
            result["lookup"] = [cost.explain(op, s, args.batch)[1].value for s in sizes]
    text = json.dumps(result)
    print(text)
    if args.output:
        common.write_json(args.output / "cost.json", result)
    return 0
