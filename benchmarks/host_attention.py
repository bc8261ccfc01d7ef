"""Benchmark: host decode attention (NEO's hot spot) against this machine's memory bandwidth.

By default fp16 KV, batch 32, context 1024, 32 query heads x 128 (Llama-2-7B's layer shape),
paged with 16-token blocks scattered through a larger pool. `--layers N` gives each of N
layers its own pools and times the calls over all of them in turn, as a decode step makes
them: every layer's KV then comes from DRAM even where one layer's would fit the caches
(SmolLM2-135M's decode step: `--batch 64 --context 160 --heads 9 --kv-heads 3 --head-dim 64
--kv-dtype bfloat16 --query-dtype bfloat16 --layers 30`). Reported side by side in one run:
- this machine's read bandwidth (a summation over a 1 GiB buffer with all threads);
- our C++ kernel (reads each K/V byte once, in place): GB/s of KV read and % of that bandwidth;
- for context, torch SDPA over the same data already contiguous in fp32 (no paging, 2x bytes),
  and the torch fallback (gather blocks, then attend).
Target: >= 85% of the measured read bandwidth (the kernel reads each cached K/V byte once).

Run: python -m benchmarks.host_attention [--repeats N] [--threads T] [shape options]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import RESULTS, write_result
from neo_engine.cpu_kernel import decode_attention, load_extension, reference_decode_attention
from neo_engine.kv_cache import cpu_tensor

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_bandwidth(repeats: int) -> float:
    """GB/s of summing a 1 GiB fp32 buffer with all threads: this machine's read bandwidth."""
    buffer = torch.ones(2**28, dtype=torch.float32)
    return buffer.numel() * 4 / best(buffer.sum, repeats) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--kv-dtype", choices=tuple(DTYPES), default="float16")
    p.add_argument("--query-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--layers", type=int, default=1, help="pools read in turn, one per layer")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--output", type=Path, default=RESULTS / "host_attention.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_extension()

    read_gbs = read_bandwidth(args.repeats)

    b, L, hq, hkv, d, bs = (
        args.batch,
        args.context,
        args.heads,
        args.kv_heads,
        args.head_dim,
        args.block_size,
    )
    blocks_per = L // bs
    pool_blocks = 2 * b * blocks_per
    kv_dtype, layers = DTYPES[args.kv_dtype], args.layers
    shape = (pool_blocks, hkv, bs, d)
    k = [cpu_tensor(shape, kv_dtype) for _ in range(layers)]  # as the engine allocates pools
    v = [cpu_tensor(shape, kv_dtype) for _ in range(layers)]
    for t in (*k, *v):
        t.normal_()
    tables = torch.randperm(pool_blocks)[: b * blocks_per].view(b, blocks_per).int().contiguous()
    lens = torch.full((b,), L, dtype=torch.int32)
    q = torch.randn(b, hq, d).to(DTYPES[args.query_dtype])
    scale = 1 / math.sqrt(d)
    kv_bytes = 2 * b * L * hkv * d * k[0].element_size()  # per call (one layer)

    def every_layer() -> None:
        for i in range(layers):
            decode_attention(q, k[i], v[i], tables, lens, scale, num_threads=args.threads)

    t_kernel = best(every_layer, args.repeats) / layers
    kernel_gbs = kv_bytes / t_kernel / 1e9
    q, k, v = q.float(), k[0], v[0]

    kc = torch.randn(b, hkv, L, d)
    vc = torch.randn(b, hkv, L, d)
    t_sdpa = best(
        lambda: F.scaled_dot_product_attention(q.unsqueeze(2), kc, vc, enable_gqa=True),
        args.repeats,
    )
    t_gather = best(lambda: reference_decode_attention(q, k, v, tables, lens, scale), 2)

    print(
        f"host decode attention, {args.kv_dtype} KV, {args.query_dtype} query, batch {b}, "
        f"context {L}, {hq}x{d} heads ({hkv} KV heads), {layers} layer(s) in turn, "
        f"{args.threads} threads; KV read per call {kv_bytes / 1e6:.1f} MB"
    )
    print(f"  machine read bandwidth (1 GiB sum)    {read_gbs:6.1f} GB/s")
    print(
        f"  neo C++ kernel (paged, in place)      {t_kernel * 1e3:7.2f} ms  {kernel_gbs:6.1f} GB/s"
        f"  = {100 * kernel_gbs / read_gbs:.0f}% of read bandwidth"
    )
    print(f"  torch SDPA, contiguous fp32 KV        {t_sdpa * 1e3:7.2f} ms  (one layer)")
    print(f"  torch fallback (gather, then attend)  {t_gather * 1e3:7.2f} ms")
    print(
        f"  kernel speed-up vs SDPA {t_sdpa / t_kernel:.2f}x, vs fallback "
        f"{t_gather / t_kernel:.2f}x"
    )
    write_result(
        args.output,
        "host_attention",
        settings={k: v for k, v in vars(args).items() if k != "output"},
        kv_read_bytes=kv_bytes,
        read_bandwidth_gb_s=read_gbs,
        kernel_s=t_kernel,
        kernel_gb_s=kernel_gbs,
        kernel_share_of_read_bandwidth=kernel_gbs / read_gbs,
        sdpa_contiguous_fp32_s=t_sdpa,
        gather_then_attend_s=t_gather,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
