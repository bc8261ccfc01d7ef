"""`neo-sim plan`: show what a policy would run, iteration by iteration, for a queue.

The run's requests (the same workload flags as `neo-sim run`) are all queued at once; the
command steps the scheduler `--steps` times, pricing each plan with the cost model as its
clock, and prints every plan: sub-batches, placements, swaps, slack and predicted time.
"""

from __future__ import annotations

import argparse
import dataclasses

from neo_sim.catalog import resolve_target
from neo_sim.cli import common
from neo_sim.runs import scheduler_config
from neo_sim.scheduler import Mode, Request, make_policy
from neo_sim.workload import build_workload


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="print the plans a policy makes for a queue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_run_args(p, skip=_UNUSED)
    p.add_argument(
        "--steps", type=common.positive_int, default=10, help="iterations to show (default 10)"
    )
    common.add_output_arg(p)
    p.set_defaults(run=run)


# Run settings that do not shape plans: arrivals (all are queued at once) and the clock.
_UNUSED = (
    "rate",
    "burstiness",
    "noise",
    "slo_ttft_s",
    "slo_tpot_s",
    "slo_per_token_s",
    "timeline_iterations",
    "steady_runs",
)


def run(args: argparse.Namespace) -> int:
    spec = common.run_spec_from_args(args)
    target = resolve_target(spec.hardware, spec.model)
    config = scheduler_config(spec, target)
    policy = make_policy(spec.policy, config, target.cost)
    policy.add(
        Request(r.request_id, r.prompt_len, r.output_len) for r in build_workload(spec.requests)
    )
    print(
        f"{spec.policy} on {target.hardware.name} with {target.model.name}; "
        f"cost model: {target.cost.description}"
    )
    bs = config.block_size
    print(
        f"KV pools: GPU {config.num_gpu_blocks} blocks ({config.num_gpu_blocks * bs} tokens), "
        f"CPU {config.num_cpu_blocks} blocks ({config.num_cpu_blocks * bs} tokens)"
    )
    now, shown = 0.0, []
    for _ in range(args.steps):
        if not policy.has_work:
            break
        plan = policy.step(now)
        slack = ""
        if plan.mode == Mode.PIPELINED:
            slack = "  slack/layer " + ", ".join(f"{s * 1e3:.2f} ms" for s in plan.slack_s)
        print(plan.describe() + slack)
        shown.append(plan)
        now += plan.predicted_s
        policy.complete(plan)
    print(
        f"after {len(shown)} steps ({now:.3f} s predicted): waiting {len(policy.waiting)}, "
        f"GPU-resident {len(policy.gpu_running)}, CPU-resident {len(policy.cpu_running)}"
    )
    if args.output:
        common.write_json(args.output / "plans.json", [p.record() for p in shown])
        common.write_json(args.output / "config.json", dataclasses.asdict(spec))
    return 0
