"""`neo-sim run`: simulate one policy on one workload and report its latency and throughput.

Prints a summary table; with --output DIR writes summary.json (flat keys), requests.csv (one row
per request), iterations.csv (one row per iteration), config.json (the full run settings) and
plots (lanes timeline of the first iterations, batch composition over time).
"""

from __future__ import annotations

import argparse

from neo_sim.cli import common
from neo_sim.runs import RunOutput, execute, resolved_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="simulate one policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  neo-sim run --hardware t4 --model llama-2-7b "
        "--policy neo --rate 2 --num-requests 500 --output runs/t4-neo",
    )
    common.add_run_args(p)
    common.add_output_arg(p)
    p.add_argument(
        "--trace-events",
        default=None,
        help="write a Chrome trace-event JSON of the lanes (open in Perfetto)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = common.run_spec_from_args(args, iteration_records=args.output is not None)
    common.announce_size(spec)
    out = execute(spec)
    s = out.summary
    print(f"{spec.policy} on {s['hardware']} with {s['model']}; cost model: {s['cost_model']}")
    print(
        f"KV pools: GPU {s['gpu_kv_blocks']} blocks, CPU {s['cpu_kv_blocks']} blocks "
        f"(block size {spec.scheduler.block_size}); {int(s['num_requests'])} requests at rate "
        f"{s['rate']}"
    )
    if s["rejected"]:
        print(f"warning: {int(s['rejected'])} requests can never fit and were rejected")
    print(common.format_table({spec.policy: s}))
    if args.trace_events:
        from neo_sim.plots import write_chrome_trace

        print(f"trace events: {write_chrome_trace(out.result.timeline, args.trace_events)}")
    if args.output:
        write_run(out, args.output)
        print(f"results in {args.output}/")
    return 0


def write_run(out: RunOutput, directory, prefix: str = "") -> None:
    from neo_sim import plots

    directory.mkdir(parents=True, exist_ok=True)
    common.write_json(directory / f"{prefix}summary.json", out.summary)
    common.write_json(directory / f"{prefix}config.json", resolved_config(out))
    out.requests.to_csv(directory / f"{prefix}requests.csv", index=False)
    out.iterations.to_csv(directory / f"{prefix}iterations.csv", index=False)
    if out.result.timeline:
        plots.save_html(
            plots.timeline_figure(
                out.result.timeline, f"{out.spec.policy}: lanes of the first iterations"
            ),
            directory / f"{prefix}timeline.html",
        )
    if len(out.iterations):
        plots.save_html(
            plots.batch_composition_figure(out.iterations, f"{out.spec.policy}: batch composition"),
            directory / f"{prefix}batch.html",
        )
