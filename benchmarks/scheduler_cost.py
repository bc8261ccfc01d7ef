"""Benchmark: what a scheduler step costs next to the iteration it plans.

The scheduler runs on the serving host between iterations (the engine overlaps nothing with
it), so its Python time per step adds to every iteration. For every shipped host preset and
its model (the policy map's), each offloading policy and gpu-only schedule the same workload
(input ~1000, output ~200 tokens, Poisson at 90% of gpu-only's offline throughput, which
keeps both GPU and host pools busy), and adaptive and adaptive-whole again under a TPOT SLO
(twice gpu-only's TPOT p90 there, as on the SLO map), and adaptive under a TTFT SLO (twice
gpu-only's TTFT p90 at 50% load, as on the TTFT SLO map: it reorders the waiting queue each
step); this times `step()` (the plan) and
`complete()` (the books after the iteration: tokens, retirements) on this machine, both run
on the serving host between iterations, and divides their sum by the simulated iteration
time on the target hardware. Target (issue 13): below 1%.
This VM's speed drifts (up to 2x within an hour), so each host's rows record `reference_s`, a
fixed pure-Python loop timed just before them (`benchmarks.reference_s`), and each row is the
fastest of `--repeats` identical runs (the schedule is deterministic: only the timing differs;
the least time is the one least disturbed, as `timeit` reports), the repeats taken in turns
over a host's rows so that a drift reaches them alike. On one H100 a run is ~1,300
steps, ~0.2 s of scheduler time: one run read 0.11 to 0.18 ms a step for gpu-only within an
hour (2026-12-06, ad hoc: those single runs are not committed).

Run: python -m benchmarks.scheduler_cost [--requests N] [--repeats N]
Writes benchmarks/results/scheduler_cost.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks import RESULTS, reference_s, write_result
from experiments.slo_map import BOUNDS, SLO_OVER_GPU_ONLY

HOSTS = {
    "t4": "llama-2-7b",
    "a10g-g5.2xlarge": "llama-3-8b",
    "a10g-g5.16xlarge": "llama-3-8b",
    "h100": "llama-3-8b",
    "h100x2": "llama-3.1-70b",
}
POLICIES = ("gpu-only", "neo", "apex", "adaptive", "adaptive-whole")
# Under a TPOT SLO adaptive plans within it (its own admission and plan choice): timed too,
# with the SLO map's bound (`SLO_OVER_GPU_ONLY` x gpu-only's TPOT p90 at the same load).
SLO_POLICIES = ("adaptive", "adaptive-whole")
# Under a TTFT SLO adaptive reorders its queue each step (`_order_for_the_ttft_bound`): timed too,
# with the TTFT SLO map's bound (`SLO_OVER_GPU_ONLY` x gpu-only's TTFT p90 at 50% load).
TTFT_SLO_POLICIES = ("adaptive",)
TARGET_SHARE = 0.01


def measure(hardware: str, model: str, requests: int, repeats: int) -> list[dict]:
    from neo_sim.runs import RunOutput, RunSpec, execute

    base = RunSpec.of(
        hardware=hardware,
        model=model,
        input_len=1000,
        output_len=200,
        num_requests=requests,
        max_batch_tokens=8192,
        timeline_iterations=0,
        steady_runs=False,  # every iteration a full scheduler step
    )
    capacity = execute(base.with_(policy="gpu-only", rate=math.inf)).summary["throughput_req_s"]
    reference = reference_s()
    loaded = base.with_(rate=0.9 * capacity)
    # The SLO maps' bounds: TPOT from gpu-only's run at this load, TTFT from its run at the
    # TTFT map's reference load.
    tpot_bound = (
        SLO_OVER_GPU_ONLY
        * execute(loaded.with_(policy="gpu-only")).summary[BOUNDS["tpot"].reference]
    )
    ttft = BOUNDS["ttft"]
    light = execute(base.with_(policy="gpu-only", rate=ttft.reference_load * capacity)).summary
    ttft_bound = SLO_OVER_GPU_ONLY * light[ttft.reference]
    cases = [(p, None, None) for p in POLICIES]
    cases += [(p, tpot_bound, None) for p in SLO_POLICIES]
    cases += [(p, None, ttft_bound) for p in TTFT_SLO_POLICIES]
    specs = [loaded.with_(policy=p, slo_tpot_s=t, slo_ttft_s=f) for p, t, f in cases]
    # (scheduler seconds, wall seconds, result) of each case's runs. The repeats go round the
    # cases, so that a drift in this VM's speed reaches every row alike (a row's runs spread
    # over the host's whole measurement, not bunched in a minute of it).
    runs: list[list[tuple[float, float, RunOutput]]] = [[] for _ in specs]
    for _ in range(repeats):
        for spec, of_case in zip(specs, runs):
            started = time.perf_counter()
            out = execute(spec)
            wall = time.perf_counter() - started
            of_case.append((out.result.scheduler_s + out.result.complete_s, wall, out))
    rows = []
    for (policy, slo_tpot_s, slo_ttft_s), spec, of_case in zip(cases, specs, runs):
        _, wall, out = min(of_case, key=lambda run: run[0])
        steps = int(out.summary["num_iterations"])
        plan_s = out.result.scheduler_s / max(1, steps)
        books_s = out.result.complete_s / max(1, steps)
        per_step = plan_s + books_s
        every_ms = [1e3 * total / max(1, steps) for total, _, _ in of_case]
        rows.append(
            {
                "hardware": hardware,
                "model": model,
                "policy": policy,
                "slo_tpot_s": slo_tpot_s,
                "slo_ttft_s": slo_ttft_s,
                "rate": spec.requests.rate,
                "iterations": steps,
                "wall_s": wall,
                "step_ms": 1e3 * plan_s,
                "complete_ms": 1e3 * books_s,
                "scheduler_ms_per_step": 1e3 * per_step,
                "scheduler_ms_per_step_repeats": every_ms,
                "iteration_ms_mean": 1e3 * out.summary["iteration_s_mean"],
                "scheduler_share": per_step / out.summary["iteration_s_mean"],
                "reference_s": reference,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest is kept")
    p.add_argument("--output", type=Path, default=RESULTS / "scheduler_cost.json")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    rows = []
    for hardware, model in tqdm(HOSTS.items(), unit="host"):
        rows += measure(hardware, model, args.requests, args.repeats)
    header = f"{'hardware':18s} {'policy':22s} {'step ms':>8s} {'compl. ms':>9s} {'iter ms':>8s}"
    print(f"{header} {'share':>7s} {'reference s':>11s}")
    for r in rows:
        policy = r["policy"] + _slo_label(r)
        print(
            f"{r['hardware']:18s} {policy:22s} {r['step_ms']:8.3f} {r['complete_ms']:9.3f} "
            f"{r['iteration_ms_mean']:8.1f} {100 * r['scheduler_share']:6.2f}% "
            f"{r['reference_s']:11.3f}"
        )
    worst = max(rows, key=lambda r: r["scheduler_share"])
    print(
        f"worst: {worst['policy']}{_slo_label(worst)} on {worst['hardware']}, "
        f"{100 * worst['scheduler_share']:.2f}% (target < {100 * TARGET_SHARE:.0f}%)"
    )
    write_result(
        args.output,
        "scheduler_cost",
        settings={
            "requests": args.requests,
            "repeats": args.repeats,
            "load": "90% of gpu-only offline throughput",
        },
        target_share=TARGET_SHARE,
        runs=rows,
    )
    return 0


def _slo_label(row: dict) -> str:
    if row["slo_ttft_s"]:
        return " + TTFT SLO"
    return " + SLO" if row["slo_tpot_s"] else ""


if __name__ == "__main__":
    raise SystemExit(main())
