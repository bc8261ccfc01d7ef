"""Benchmark: how fast neo-sim simulates, and how much of it is the scheduler.

10,000 requests, NEO policy, T4 + Llama-2-7B with the artifact's settings (54 GPU blocks,
832 tokens per iteration, 20 GB host KV), Poisson arrivals at a saturating 6 req/s (the policy
sustains ~5). Targets: <= 10 s wall on one core; scheduler time per step < 2% of the
simulated iteration it plans. Reports events/s (simpy events: arrivals + iterations) and
requests/s simulated.

Run: python -m benchmarks.sim_speed [--requests N]; writes benchmarks/results/sim_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from neo_engine.local import machine_summary
from neo_sim.runs import RunSpec, execute

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--policy", default="neo")
    p.add_argument("--output", type=Path, default=RESULTS / "sim_speed.json")
    args = p.parse_args(argv)
    spec = RunSpec.of(
        hardware="t4",
        model="llama-2-7b",
        policy=args.policy,
        rate=6.0,
        num_requests=args.requests,
        gpu_kv_blocks=54,
        max_batch_tokens=832,
        cpu_kv_gb=20,
        timeline_iterations=0,
    )
    started = time.perf_counter()
    out = execute(spec)
    wall = time.perf_counter() - started
    iterations = len(out.iterations)
    events = iterations + args.requests
    sched_per_step = out.result.scheduler_s / iterations
    mean_iteration = float(out.iterations["duration_s"].mean())
    print(f"{args.requests} requests, {args.policy}, t4 + llama-2-7b at 6 req/s")
    print(f"wall time            {wall:.2f} s   (target <= 10 s)")
    print(f"iterations simulated {iterations}")
    print(f"events/s             {events / wall:,.0f}")
    print(f"requests/s simulated {args.requests / wall:,.0f}")
    print(
        f"scheduler per step   {sched_per_step * 1e3:.3f} ms = "
        f"{100 * sched_per_step / mean_iteration:.2f}% of the mean simulated iteration "
        f"({mean_iteration * 1e3:.1f} ms; target < 2%)"
    )
    print(f"simulated throughput {out.summary['throughput_req_s']:.2f} req/s")
    result = {
        "benchmark": "sim_speed",
        "machine": machine_summary(),
        "requests": args.requests,
        "policy": args.policy,
        "wall_s": wall,
        "iterations": iterations,
        "events_per_s": events / wall,
        "requests_per_s_simulated": args.requests / wall,
        "scheduler_s_per_step": sched_per_step,
        "scheduler_fraction_of_iteration": sched_per_step / mean_iteration,
        "simulated_throughput_req_s": out.summary["throughput_req_s"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
