"""Benchmark: decode-only iterations with every layer in one compiled call, or stage by stage.

neo_engine's offline LLM on the real SmolLM2-135M (vs_vllm_cpu's workloads: batch 1, 8 and 32
x (128 prompt + 64 new tokens), and 64 requests with the Azure conversation trace's lengths
where the trace is there), greedy with ignore_eos, every core. One engine, its executor's
`FusedDecodeLayers` switched on and off between runs (`neo_engine/decode_layers.py`), the two
alternating round by round, so a drift of this VM's speed falls on both alike. Reported: each
variant's median time, each round's paired speed-up (stage-by-stage time over fused time) and
their median, and whether both gave the same tokens (they should: the same kernels run).

Run: python -m benchmarks.fused_decode_layers [--dtype bfloat16] [--repeats 5]
Writes benchmarks/results/fused_decode_layers_DTYPE.json (--output elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from benchmarks import RESULTS, SMOLLM2, checkpoint_or_exit, reference_s, write_result
from benchmarks.vs_vllm_cpu import (
    TRACE,
    UNIFORM_BATCHES,
    path_facts,
    run_neo_once,
    workloads,
)

VARIANTS = ("fused", "stage_by_stage")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=SMOLLM2, help="SmolLM2-135M directory")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per workload")
    p.add_argument("--no-trace", action="store_true", help="leave the trace workload out")
    p.add_argument("--output", type=Path, help="result file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"fused_decode_layers: --repeats must be >= 1, got {args.repeats}")
    args.model = checkpoint_or_exit(args.model, "fused_decode_layers")
    output = args.output or RESULTS / f"fused_decode_layers_{args.dtype}.json"
    from neo_engine import LLM

    llm = LLM(str(args.model), dtype=args.dtype, max_model_len=args.max_model_len)
    executor = llm.engine.executor
    fused = executor.fused_layers
    if fused is None:
        raise SystemExit(
            "fused_decode_layers: the fused layers do not apply here (no compiled host "
            "kernels, or weights not prepacked for oneDNN: neo_engine/decode_layers.py)"
        )
    switch = {"fused": fused, "stage_by_stage": None}
    vocab = llm.engine.spec.vocab_size
    jobs = workloads(vocab, args.max_model_len, None if args.no_trace else TRACE)
    reference = [reference_s()]
    rows = []
    for w in jobs:
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        tokens: dict[str, list[list[int]]] = {}
        for variant in VARIANTS:  # warm-up of each
            executor.fused_layers = switch[variant]
            run_neo_once(llm, w)
        for round_ in range(args.repeats):
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                executor.fused_layers = switch[variant]
                seconds, tokens[variant] = run_neo_once(llm, w)
                times[variant].append(seconds)
        paired = [s / f for f, s in zip(times["fused"], times["stage_by_stage"])]
        row = {
            "workload": w["name"],
            "requests": len(w["prompts"]),
            "generated_tokens": sum(w["max_tokens"]),
            **{f"{v}_s": times[v] for v in VARIANTS},
            **{f"{v}_median_s": statistics.median(times[v]) for v in VARIANTS},
            "paired_speedups": paired,
            "median_paired_speedup": statistics.median(paired),
            "same_tokens": tokens["fused"] == tokens["stage_by_stage"],
        }
        rows.append(row)
        print(
            f"{w['name']:<48} fused {row['fused_median_s']:.3f} s, stage by stage "
            f"{row['stage_by_stage_median_s']:.3f} s, paired speed-up "
            f"{row['median_paired_speedup']:.2f}x, same tokens {row['same_tokens']}",
            flush=True,
        )
    executor.fused_layers = fused
    reference.append(reference_s())
    write_result(
        output,
        "fused_decode_layers",
        model=str(args.model.name),
        dtype=args.dtype,
        repeats=args.repeats,
        neo_engine_path=path_facts(llm),
        uniform_batches=list(UNIFORM_BATCHES),
        reference_loop_s=reference,
        workloads=rows,
        command=" ".join(
            [Path(sys.executable).name, "-m", "benchmarks.fused_decode_layers"]
            + (argv if argv is not None else sys.argv[1:])
        ),
    )
    llm.engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
