"""Benchmark: the skinny decode GEMM vs torch's BLAS, over a decode step's weights.

One decode step of the `small` preset (~100M params: 12 layers of QKV, O, gate+up, down, and
the LM head, ~400 MB of fp32 weights, ~200 MB in bf16, far more than the caches hold) at
M = 1..32 token rows, in --dtype (float32 or bfloat16). Reported side by side in one run, as
the median of alternating repeats:
- F.linear (what transformers calls), the weight-major torch.mm the engine used before, and
  our kernel (in bf16 on a CPU with AVX512-BF16: its native path and its portable path);
  where torch has oneDNN's prepacking ops, also `layers.linear` with prepacked weights as the
  engine runs it (the kernel up to `layers.SKINNY_ROWS_WITH_PREPACKED` rows, oneDNN's blocked
  weights beyond) and oneDNN's blocked GEMM at every M (where the hand-over belongs);
  GB/s of weights streamed and the kernel's speed-up over F.linear;
- this machine's read bandwidth (benchmarks.host_attention's 1 GiB sum), for reference, and
  which path the kernel took.
Its results chose `neo_engine.cpu_kernel.SKINNY_MAX_ROWS` (per dtype): the kernel is used up
to the M where it wins.

Run: python -m benchmarks.skinny_gemm [--dtype bfloat16] [--repeats N] [--rows 1,2,4,8,16,32]
Writes benchmarks/results/skinny_gemm.json (float32) or skinny_gemm_DTYPE.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import RESULTS, write_result
from benchmarks.host_attention import read_bandwidth
from neo_engine.cpu_kernel import load_extension, skinny_path
from neo_engine.layers import linear
from neo_engine.weights import PrepackedWeight, can_prepack
from neo_sim.model import PRESETS


def median_times(rows: int, weights, module, threads: int, repeats: int) -> dict[str, float]:
    """Median seconds of one pass over all weights with `rows` rows of x, per variant."""
    dtype = weights[0].dtype
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]).to(dtype) for w in weights}
    outs = {w.shape: torch.empty(rows, w.shape[0], dtype=dtype) for w in weights}

    def kernel(native: bool):
        return lambda: [
            module.skinny_linear(xs[w.shape[1]], w, outs[w.shape], threads, native) for w in weights
        ]

    variants = {
        "F.linear": lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
        "weight-major": lambda: [torch.mm(w, xs[w.shape[1]].t()).t().contiguous() for w in weights],
        "skinny": kernel(True),
    }
    if dtype == torch.bfloat16 and module.native_bf16():
        variants["skinny-portable"] = kernel(False)
    if can_prepack(dtype, torch.device("cpu")):  # what the engine runs past a few rows
        packed = [PrepackedWeight.of(w) for w in weights]
        variants["oneDNN-prepacked"] = lambda: [linear(xs[p.shape[1]], p) for p in packed]
        variants["oneDNN-alone"] = lambda: [  # the blocked GEMM at every M: where to hand over
            torch.ops.mkldnn._linear_pointwise(xs[p.shape[1]], p.blocked, None, "none", [], "")
            for p in packed
        ]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):  # alternate, so drifting machine load hits all alike
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rows", default="1,2,4,8,16,24,32")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--output", type=Path, help="unset: skinny_gemm[_DTYPE].json in results")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.output is None:
        suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
        args.output = RESULTS / f"skinny_gemm{suffix}.json"
    module = load_extension()
    if module is None:
        raise SystemExit("the host kernels could not be built here; nothing to compare")

    spec = PRESETS["small"]
    h, kv = spec.hidden_size, spec.num_kv_heads * spec.head_dim
    shapes = [(h + 2 * kv, h), (h, h), (2 * spec.intermediate_size, h), (h, spec.intermediate_size)]
    shapes = shapes * spec.num_layers + [(spec.vocab_size, h)]
    torch.manual_seed(0)
    weights = [torch.randn(n, k).to(dtype) for n, k in shapes]
    gigabytes = sum(w.numel() * w.element_size() for w in weights) / 1e9
    threads = torch.get_num_threads()
    read_gbs = read_bandwidth(5)
    path = skinny_path(dtype)
    print(
        f"decode-step weights of `small`: {len(weights)} matrices, {gigabytes * 1e3:.0f} MB "
        f"{args.dtype}, {threads} threads; read bandwidth {read_gbs:.1f} GB/s; kernel: {path}"
    )
    rows_out = []
    for rows in [int(r) for r in args.rows.split(",")]:
        med = median_times(rows, weights, module, threads, args.repeats)
        cells = " ".join(f"{n} {med[n] * 1e3:6.1f}ms {gigabytes / med[n]:5.1f}GB/s" for n in med)
        print(f"M={rows:<3} {cells}  skinny vs F.linear {med['F.linear'] / med['skinny']:.2f}x")
        rows_out.append({"rows": rows, **{f"{n}_s": t for n, t in med.items()}})
    write_result(
        args.output,
        "skinny_gemm",
        dtype=args.dtype,
        kernel_path=path,
        weights_gb=gigabytes,
        read_bandwidth_gb_s=read_gbs,
        repeats=args.repeats,
        runs=rows_out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
