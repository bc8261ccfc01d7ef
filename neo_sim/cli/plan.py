"""`neo-sim plan`: show what a policy would run, iteration by iteration, for a queue.

A queue of `--requests` prompts (lengths uniform in [0.9 L, 1.1 L]) arrives at once; the command
steps the scheduler `--steps` times, pricing each plan with the cost model as its clock, and
prints every plan: sub-batches, placements, swaps, slack and predicted time.
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from neo_sim.cli import common
from neo_sim.scheduler import Mode, Request, make_policy


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="print the plans a policy makes for a queue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_target_args(p)
    p.add_argument("--policy", type=common.policy_name, default="neo")
    p.add_argument("--requests", type=common.positive_int, default=64, help="queued requests")
    p.add_argument("--input-len", type=common.positive_int, default=400, help="mean prompt tokens")
    p.add_argument("--output-len", type=common.positive_int, default=50, help="mean output tokens")
    p.add_argument("--steps", type=common.positive_int, default=10, help="iterations to show")
    common.add_capacity_args(p)
    common.add_output_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = common.target_from_args(args)
    config = common.config_from_args(args, target)
    policy = make_policy(args.policy, config, target.cost)
    rng = random.Random(args.seed)
    policy.add(
        Request(i, _around(rng, args.input_len), _around(rng, args.output_len))
        for i in range(args.requests)
    )
    print(
        f"{args.policy} on {target.hardware.name} with {target.model.name}; "
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
        common.write_json(args.output / "plans.json", [dataclasses.asdict(p) for p in shown])
        common.write_json(args.output / "config.json", vars(args) | {"run": None})
    return 0


def _around(rng: random.Random, mean: int) -> int:
    return max(1, round(rng.uniform(0.9 * mean, 1.1 * mean)))
