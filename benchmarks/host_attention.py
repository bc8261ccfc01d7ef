"""Benchmark: host decode attention (NEO's hot spot) against this machine's memory bandwidth.

fp16 KV, batch 32, context 1024, 32 query heads x 128 (Llama-2-7B's layer shape), paged with
16-token blocks scattered through a larger pool. Reported side by side in one run:
- this machine's read bandwidth (a summation over a 1 GiB buffer with all threads);
- our C++ kernel (reads each K/V byte once, in place): GB/s of KV read and % of that bandwidth;
- for context, torch SDPA over the same data already contiguous in fp32 (no paging, 2x bytes),
  and the torch fallback (gather blocks, then attend).
Target: >= 85% of the measured read bandwidth (the kernel reads each cached K/V byte once).

Run: python -m benchmarks.host_attention [--repeats N] [--threads T]
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
    k = cpu_tensor((pool_blocks, hkv, bs, d), torch.float16)  # as the engine allocates pools
    v = cpu_tensor((pool_blocks, hkv, bs, d), torch.float16)
    k.normal_()
    v.normal_()
    tables = torch.randperm(pool_blocks)[: b * blocks_per].view(b, blocks_per).int().contiguous()
    lens = torch.full((b,), L, dtype=torch.int32)
    q = torch.randn(b, hq, d)
    scale = 1 / math.sqrt(d)
    kv_bytes = 2 * b * L * hkv * d * 2
    t_kernel = best(
        lambda: decode_attention(q, k, v, tables, lens, scale, num_threads=args.threads),
        args.repeats,
    )
    kernel_gbs = kv_bytes / t_kernel / 1e9

    kc = torch.randn(b, hkv, L, d)
    vc = torch.randn(b, hkv, L, d)
    t_sdpa = best(
        lambda: F.scaled_dot_product_attention(q.unsqueeze(2), kc, vc, enable_gqa=True),
        args.repeats,
    )
    t_gather = best(lambda: reference_decode_attention(q, k, v, tables, lens, scale), 2)

    print(
        f"host decode attention, fp16 KV, batch {b}, context {L}, {hq}x{d} heads "
        f"({hkv} KV heads), {args.threads} threads; KV read per call {kv_bytes / 1e6:.0f} MB"
    )
    print(f"  machine read bandwidth (1 GiB sum)    {read_gbs:6.1f} GB/s")
    print(
        f"  neo C++ kernel (paged, in place)      {t_kernel * 1e3:7.1f} ms  {kernel_gbs:6.1f} GB/s"
        f"  = {100 * kernel_gbs / read_gbs:.0f}% of read bandwidth"
    )
    print(f"  torch SDPA, contiguous fp32 KV        {t_sdpa * 1e3:7.1f} ms  (reads 2x the bytes)")
    print(f"  torch fallback (gather, then attend)  {t_gather * 1e3:7.1f} ms")
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
