"""Benchmark: how fast neo-sim simulates, and how much of it is the scheduler.

Two workloads, each run in a fresh process (so its peak memory is its own):
- `vidur`: the workload Vidur (microsoft/vidur) was timed on beside us: Llama-2-7B on one
  H100, 10,000 requests, prompts 512 / outputs 128 tokens, Poisson 4 req/s, at most 128
  sequences per iteration; for gpu-only and for neo. Mostly steady decode iterations between
  arrivals: what steady runs (`--no-steady-runs` turns them off) are for.
- `neo-t4`: NEO on T4 + Llama-2-7B with the artifact's settings (54 GPU blocks, 832 tokens
  per iteration, 20 GB host KV), 10,000 requests at a saturating 6 req/s: every iteration
  pipelined, a full scheduler step each.
- `overloaded gpu-only`: H100 + Llama-2-7B, prompts 512 / outputs 2,048 at 2 req/s, beyond
  what the GPU pool sustains: a queue that cannot move until a request finishes, the case
  steady runs with a blocked queue are for; a fifth of `--requests`.
Reports wall time, iterations, microseconds per iteration, requests simulated per second,
the scheduler's share, the share of iterations advanced as steady runs, and peak memory.
Each workload runs `--repeat` times, each in a fresh process; the fastest is kept (this VM's
speed drifts within minutes; the fastest run is the least disturbed one).

Run: python -m benchmarks.sim_speed [--requests N] [--repeat K] [--no-steady-runs]
Writes benchmarks/results/sim_speed.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

from benchmarks import RESULTS, reference_s, write_result

WORKLOADS = {
    "vidur gpu-only": dict(
        hardware="h100",
        model="llama-2-7b",
        policy="gpu-only",
        input_len=512,
        output_len=128,
        rate=4.0,
        max_batch_size=128,
    ),
    "vidur neo": dict(
        hardware="h100",
        model="llama-2-7b",
        policy="neo",
        input_len=512,
        output_len=128,
        rate=4.0,
        max_batch_size=128,
    ),
    "neo-t4": dict(
        hardware="t4",
        model="llama-2-7b",
        policy="neo",
        rate=6.0,
        gpu_kv_blocks=54,
        max_batch_tokens=832,
        cpu_kv_gb=20,
    ),
    "overloaded gpu-only": dict(
        hardware="h100",
        model="llama-2-7b",
        policy="gpu-only",
        input_len=512,
        output_len=2048,
        rate=2.0,
    ),
}
REQUEST_SHARE = {"overloaded gpu-only": 0.2}  # of --requests: its requests are 16x longer


def run_one(name: str, requests: int, steady: bool) -> dict:
    """One workload, timed from RunSpec to summary (profile loading included)."""
    from neo_sim.runs import RunSpec, execute

    reference = reference_s()

    requests = max(1, round(requests * REQUEST_SHARE.get(name, 1.0)))
    spec = RunSpec.of(
        num_requests=requests, steady_runs=steady, timeline_iterations=0, **WORKLOADS[name]
    )
    started = time.perf_counter()
    out = execute(spec)
    wall = time.perf_counter() - started
    iterations = int(out.summary["num_iterations"])
    mean_iteration = out.summary["iteration_s_mean"]
    sched_per_step = out.result.scheduler_s / max(1, iterations - out.result.steady_iterations)
    return {
        "workload": name,
        "settings": WORKLOADS[name] | {"num_requests": requests, "steady_runs": steady},
        "wall_s": wall,
        "reference_s": reference,
        "wall_in_references": wall / reference,
        "iterations": iterations,
        "us_per_iteration": 1e6 * wall / iterations,
        "requests_per_s_simulated": requests / wall,
        "scheduler_s": out.result.scheduler_s,
        "scheduler_share_of_wall": out.result.scheduler_s / wall,
        "scheduler_s_per_step": sched_per_step,
        "scheduler_share_of_simulated_iteration": sched_per_step / mean_iteration,
        "steady_iterations": out.result.steady_iterations,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "simulated_throughput_req_s": out.summary["throughput_req_s"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--repeat", type=int, default=3, help="runs per workload; the fastest kept")
    p.add_argument("--steady-runs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--output", type=Path, default=RESULTS / "sim_speed.json")
    args = p.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        runs = []
        for _ in range(max(1, args.repeat)):
            with context.Pool(1) as pool:
                runs.append(pool.apply(run_one, (name, args.requests, args.steady_runs)))
        row = min(runs, key=lambda r: r["wall_s"])
        row["wall_s_of_each_run"] = [r["wall_s"] for r in runs]
        rows.append(row)
        print(
            f"{name:15s} {row['wall_s']:6.2f} s  {row['iterations']:7d} iterations  "
            f"{row['us_per_iteration']:6.1f} us/iteration  "
            f"{row['requests_per_s_simulated']:7.0f} requests/s  "
            f"scheduler {100 * row['scheduler_share_of_wall']:4.1f}% of wall  "
            f"steady {100 * row['steady_iterations'] / row['iterations']:4.1f}%  "
            f"peak {row['peak_rss_mib']:.0f} MiB"
        )
    write_result(args.output, "sim_speed", runs=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
