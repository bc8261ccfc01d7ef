"""Benchmark: what a swap costs the engine's iteration, to choose the one swap model.

The scheduler's estimate, the simulator's timing model and the executor must charge swaps
alike. This measures what the executor does: the same decode iteration of `small` (8 GPU
decodes, 256 tokens of context) is run without swaps, with K whole-request swaps out (512
tokens each), and the swap copies are timed alone, alternating, medians of repeats. If
(with swaps - without) equals the copies alone, swaps add serially to the iteration (no
overlap with compute) - the model the simulator must follow.

Run: python -m benchmarks.swap_copies [--swaps 4] [--repeats 7]
Writes benchmarks/results/swap_copies.json (with the CPU it ran on).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks import RESULTS, write_result
from neo_engine.config import LoadSettings
from neo_engine.executor import Executor
from neo_engine.kv_cache import KVPool, copy_blocks
from neo_engine.weights import random_weights
from neo_sim.scheduler.kv import KVManager
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, SubBatch, Swap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swaps", type=int, default=4, help="requests swapped out per iteration")
    p.add_argument("--context", type=int, default=512, help="tokens of each swapped request")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--output", type=Path, default=RESULTS / "swap_copies.json")
    args = p.parse_args(argv)
    spec = LoadSettings("dummy:small").model_spec()
    device = torch.device("cpu")
    weights = random_weights(spec, torch.float32, device)
    blocks = 1024
    gpu, host = (KVPool(spec, blocks, 16, torch.float32, device) for _ in range(2))
    executor = Executor(spec, weights, device, gpu, host)
    kv = KVManager(blocks, blocks, 16)
    decodes = tuple(DecodeWork(i, 256) for i in range(8))
    for d in decodes:
        kv.gpu.grow(d.request_id, d.context_len)
    swaps = []
    for rid in range(100, 100 + args.swaps):
        src = kv.gpu.grow(rid, args.context)
        dst = kv.cpu.grow(rid, args.context)
        swaps.append(Swap(rid, args.context, tuple(src), tuple(dst)))
    tokens = {d.request_id: [1] * d.context_len for d in decodes}
    bare = Plan(1, Mode.SEQUENTIAL, (SubBatch(gpu_decodes=decodes),))
    swapping = Plan(1, Mode.SEQUENTIAL, (SubBatch(gpu_decodes=decodes),), swap_out=tuple(swaps))

    def copies() -> None:
        for s in swaps:
            copy_blocks(gpu, host, s.src_blocks, s.dst_blocks)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {"bare": [], "with_swaps": [], "copies_alone": []}
    executor.run(bare, tokens, kv)  # warm-up
    for _ in range(args.repeats):
        runs["bare"].append(timed(lambda: executor.run(bare, tokens, kv)))
        runs["with_swaps"].append(timed(lambda: executor.run(swapping, tokens, kv)))
        runs["copies_alone"].append(timed(copies))
    executor.close()
    medians = {k: statistics.median(v) for k, v in runs.items()}
    added = medians["with_swaps"] - medians["bare"]
    swap_bytes = sum(len(s.src_blocks) for s in swaps) * 16 * spec.kv_bytes_per_token
    result = write_result(
        args.output,
        "swap_copies",
        model=spec.name,
        swaps=args.swaps,
        swap_bytes=swap_bytes,
        repeats=args.repeats,
        median_s=medians,
        runs_s=runs,
        added_by_swaps_s=added,
        added_over_copies_alone=added / medians["copies_alone"],
    )
    print(
        f"iteration {medians['bare'] * 1e3:.1f} ms; with {args.swaps} swaps out "
        f"({swap_bytes / 2**20:.0f} MiB) {medians['with_swaps'] * 1e3:.1f} ms: +"
        f"{added * 1e3:.1f} ms; the copies alone {medians['copies_alone'] * 1e3:.1f} ms "
        f"(added / alone = {result['added_over_copies_alone']:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
