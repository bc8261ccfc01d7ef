"""Benchmark: on a CPU device, the host lane overlapped with the device lane or run inline.

On a CPU-only machine the engine's "GPU" lane and its host attention lane run on the same
cores. Overlapped (`--host-overlap yes`, as with a GPU), the host attention runs on a worker
thread (half of torch's threads) while the calling thread runs the device lane's kernels;
inline (`no`, the CPU device's default) the calling thread runs it, with every thread, where
the device lane reaches it, as the timing model's shared lanes price it. Both run the same
plans: the scheduler decides with the committed `profiles/cpu-2core-vm__small.json` and all
requests arrive at once, so nothing depends on the clock (the script checks that the plans
agree).

Workload: `neo-sim validate`'s (dummy:small, 200 requests, prompts ~64 and outputs ~24
tokens, 30 GPU KV blocks of 16 so that most decodes run on the host), offline, for `neo`
(pipelined iterations) and `apex` (fused ones). The variants alternate, `--rounds` times, and
a pure-Python reference loop is timed beside each run (this VM's speed drifts).

Run: python -m benchmarks.host_overlap [--rounds 3]
Writes benchmarks/results/host_overlap.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

from benchmarks import RESULTS, reference_s, write_result

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "cpu-2core-vm__small.json"
VARIANTS = ("yes", "no")  # --host-overlap


def run_one(policy: str, host_overlap: str) -> dict:
    """One offline run of the validate workload; wall seconds and what ran."""
    from neo_engine.fidelity import warm_up, workload_engine
    from neo_engine.replay import replay
    from neo_engine.validate import FidelitySettings
    from neo_sim.workload import build_workload

    s = FidelitySettings()
    engine = workload_engine(s, policy, PROFILE, host_overlap=host_overlap)
    warm_up(engine, s.requests)
    workload = build_workload(dataclasses.replace(s.requests, rate=math.inf))
    reference = reference_s()
    started = time.perf_counter()
    replay(engine, workload)
    wall = time.perf_counter() - started
    plans = [it.plan for it in engine.iterations]
    row = {
        "policy": policy,
        "host_overlap": host_overlap,
        "host_lane": engine.executor.host_lane,
        "wall_s": wall,
        "reference_s": reference,
        "iterations": len(plans),
        "modes": {m: sum(p.mode.value == m for p in plans) for m in {p.mode.value for p in plans}},
        "cpu_decodes": sum(len(p.cpu_decodes) for p in plans),
        "forward_s": sum(it.duration_s for it in engine.iterations),
        "plans": [(p.mode.value, p.num_seqs, len(p.cpu_decodes)) for p in plans],
    }
    engine.close()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two variants")
    p.add_argument("--policies", default="neo,apex", help="comma-separated")
    p.add_argument("--output", type=Path, default=RESULTS / "host_overlap.json")
    args = p.parse_args(argv)
    summary = []
    for policy in [x.strip() for x in args.policies.split(",") if x.strip()]:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(max(1, args.rounds)):
            for variant in VARIANTS:
                row = run_one(policy, variant)
                runs[variant].append(row)
                print(
                    f"{policy:5s} host_overlap={variant:3s} ({row['host_lane']}): "
                    f"{row['wall_s']:6.2f} s, forward passes {row['forward_s']:6.2f} s, "
                    f"{row['iterations']} iterations {row['modes']}, "
                    f"reference loop {1e3 * row['reference_s']:.0f} ms",
                    flush=True,
                )
        plans = {tuple(map(tuple, r.pop("plans"))) for rs in runs.values() for r in rs}
        pairs = [
            no["wall_s"] / yes["wall_s"] for yes, no in zip(runs["yes"], runs["no"], strict=True)
        ]
        median = {v: statistics.median(r["wall_s"] for r in runs[v]) for v in VARIANTS}
        summary.append(
            {
                "policy": policy,
                "same_plans": len(plans) == 1,
                "median_wall_s": median,
                "inline_over_overlapped": median["no"] / median["yes"],
                "inline_over_overlapped_per_round": pairs,
                "runs": runs,
            }
        )
        print(
            f"{policy}: inline / overlapped wall = {median['no'] / median['yes']:.3f} "
            f"(medians; per round {', '.join(f'{x:.3f}' for x in pairs)}); "
            f"same plans in every run: {len(plans) == 1}"
        )
    write_result(args.output, "host_overlap", rounds=args.rounds, policies=summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
