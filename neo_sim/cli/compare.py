"""`neo-sim compare`: several policies on the very same arrivals, side by side.

Prints one column per policy and the ratio of each to the first. With --output DIR writes
compare.csv (one row per policy, every summary metric), each policy's run files under
DIR/POLICY/, and compare.html (throughput and latency bars).
"""

from __future__ import annotations

import argparse

import pandas as pd

from neo_sim.cli import common
from neo_sim.cli.run import write_run
from neo_sim.runs import execute
from neo_sim.workload import build_workload


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare policies on the same workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  neo-sim compare --hardware t4 --model llama-2-7b "
        "--policies gpu-only,neo --output runs/t4",
    )
    p.add_argument(
        "--policies",
        default="gpu-only,neo",
        help="comma-separated policies; the first is the baseline for ratios",
    )
    common.add_run_args(p, skip=("policy",))
    common.add_output_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = common.parse_policies(args.policies)
    base = common.run_spec_from_args(args, iteration_records=args.output is not None)
    common.announce_size(base, runs=len(names))
    workload = build_workload(base.requests)
    outputs = {name: execute(base.with_(policy=name), workload) for name in names}
    first = next(iter(outputs.values())).summary
    print(
        f"{len(workload)} requests at rate {first['rate']} on {first['hardware']} with "
        f"{first['model']}; cost model: {first['cost_model']}"
    )
    gpu = f"GPU {first['gpu_kv_blocks']} blocks"
    others = [  # chunked prefill keeps less memory for activations, so more for KV
        f"{n}: {o.summary['gpu_kv_blocks']}"
        for n, o in outputs.items()
        if o.summary["gpu_kv_blocks"] != first["gpu_kv_blocks"]
    ]
    if others:
        gpu += f" ({', '.join(others)})"
    print(f"KV pools: {gpu}, CPU {first['cpu_kv_blocks']} blocks")
    print(common.format_table({n: o.summary for n, o in outputs.items()}, ratio_to=names[0]))
    if args.output:
        from neo_sim import plots

        frame = pd.DataFrame([o.summary for o in outputs.values()])
        for metric in ("throughput_req_s", "throughput_tok_s"):
            frame[f"{metric}_ratio"] = frame[metric] / frame[metric].iloc[0]
        args.output.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.output / "compare.csv", index=False)
        for name, out in outputs.items():
            write_run(out, args.output / name)
        fig = plots.comparison_figure(
            frame,
            ["throughput_tok_s", "ttft_p50", "tpot_p50", "e2e_p50", "max_token_gap_max_s"],
            title=f"{first['model']} on {first['hardware']}, rate {first['rate']}: "
            f"ratios to {names[0]}",
        )
        plots.save_html(fig, args.output / "compare.html")
        print(f"results in {args.output}/ (compare.csv, compare.html, one folder per policy)")
    return 0
