"""Benchmark: the flash prefill attention kernel vs torch's CPU SDPA, one prompt at a time.

Causal attention of one prompt of T tokens, as `attention.prefill_attention` runs it, for
SmolLM2-135M's heads (9 query heads over 3 KV heads of 64 dims) and Llama-3-8B's (32 over 8,
128 dims), bf16 or fp32 (--dtype), every core. Side by side in one run, as the median of
alternating repeats: torch's `F.scaled_dot_product_attention` (its flash kernel for 4-D
inputs, `enable_gqa`) and ours (`csrc/prefill_attention.cpp`: native bf16 dot products with
AVX512-BF16, fp32 FMA with AVX-512; in bf16 on a CPU with AMX-BF16 also
`csrc/amx_prefill_attention.cpp` on AMX tiles, what the engine runs there); GFLOP/s counts
the causal half of the two matrix products (2 T^2 Hq D). Also the largest difference from a
float64 reference of each, at the shortest T of each shape (in bf16 both round the
probabilities to bf16 before the product with V).

Also a batch's whole prompts (--batch PROMPTSxTOKENS, 32x128 by default), rows of one fused
QKV output: one kernel call per prompt against one call over all of them (the engine's
`attention.whole_prompts_stage`), side by side.

Run: python -m benchmarks.prefill_attention [--dtype bfloat16|float32] [--repeats N]
     [--tokens 128,512,1024,2048]
Writes benchmarks/results/prefill_attention_{dtype}.json (--output elsewhere).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import RESULTS, reference_s, write_result
from neo_engine.cpu_kernel import load_extension, prefill_path

HEADS = {"smollm2-135m": (9, 3, 64), "llama-3-8b": (32, 8, 128)}  # query heads, KV heads, dim


def causal_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    group = q.shape[1] // k.shape[1]
    kd, vd = (x.double().repeat_interleave(group, 1) for x in (k, v))
    scores = torch.einsum("thd,shd->hts", q.double(), kd) * scale
    causal = torch.ones(q.shape[0], q.shape[0], dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
    return torch.einsum("hts,shd->thd", probs, vd)


def torch_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of one prompt through torch's SDPA as the engine calls it (4-D views,
    GQA): [T, Hq, D] from q [T, Hq, D], k, v [T, Hkv, D]."""
    qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    return o[0].transpose(0, 1)


def alternating_medians(variants: dict, repeats: int) -> dict[str, float]:
    """`{name}_s`: the median seconds of each callable, run once to warm up, then `repeats`
    times in turn (A B A B ...: a drift of the machine's speed falls on all alike)."""
    times: dict[str, list[float]] = {n: [] for n in variants}
    for f in variants.values():
        f()
    for _ in range(repeats):
        for name, f in variants.items():
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    return {f"{n}_s": statistics.median(t) for n, t in times.items()}


def measure(
    module, shape: tuple[int, int, int, int], dtype: torch.dtype, repeats: int, errors: bool
) -> dict:
    """Median seconds of torch's SDPA and ours for one prompt of `shape` (tokens, query heads,
    KV heads, head dim) in `dtype`, alternating; with `errors`, each one's largest difference
    from float64."""
    tokens, heads, kv_heads, dim = shape
    q = torch.randn(tokens, heads, dim).to(dtype)
    k, v = (torch.randn(tokens, kv_heads, dim).to(dtype) for _ in range(2))
    scale, threads = 1 / math.sqrt(dim), torch.get_num_threads()
    out = torch.empty_like(q)

    def ours():
        module.prefill_attention(q, k, v, out, scale, threads)
        return out

    variants = {"torch_sdpa": lambda: torch_sdpa(q, k, v, scale), "ours": ours}
    if amx_runs(module, dtype):
        whole = torch.tensor([[0, tokens]], dtype=torch.int64)
        amx_out = torch.empty_like(q)

        def ours_amx():
            module.amx_prefill_attention_ranges(q, k, v, amx_out, whole, scale, threads)
            return amx_out

        variants["ours_amx"] = ours_amx
    result = {}
    if errors:
        exact = causal_float64(q, k, v, scale)
        for name, f in variants.items():
            result[f"{name}_max_error"] = (f().double() - exact).abs().max().item()
    return alternating_medians(variants, repeats) | result


def measure_batch(
    module,
    prompts: int,
    tokens: int,
    heads: tuple[int, int, int],
    dtype: torch.dtype,
    repeats: int,
) -> dict:
    """Median seconds of a batch's whole prompts (`prompts` x `tokens`, rows of one fused QKV
    output, as a layer makes them) attended one call per prompt (torch's SDPA and ours) and in
    one call of ours over their row ranges (`prefill_attention_ranges`, as the engine runs
    them), alternating."""
    num_heads, kv_heads, dim = heads
    rows = prompts * tokens
    qkv = torch.randn(rows, (num_heads + 2 * kv_heads) * dim).to(dtype)
    q, k, v = qkv.split([num_heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
    q, k, v = (x.view(rows, -1, dim) for x in (q, k, v))
    scale, threads = 1 / math.sqrt(dim), torch.get_num_threads()
    out = torch.empty(rows, num_heads, dim, dtype=dtype)
    spans = [(i * tokens, (i + 1) * tokens) for i in range(prompts)]
    ranges = torch.tensor(spans, dtype=torch.int64)

    def torch_per_prompt():
        for a, b in spans:
            out[a:b] = torch_sdpa(q[a:b], k[a:b], v[a:b], scale)

    def per_prompt():
        for a, b in spans:
            module.prefill_attention(q[a:b], k[a:b], v[a:b], out[a:b], scale, threads)

    def one_call():
        module.prefill_attention_ranges(q, k, v, out, ranges, scale, threads)

    variants = {
        "torch_per_prompt": torch_per_prompt,
        "per_prompt": per_prompt,
        "one_call": one_call,
    }
    if amx_runs(module, dtype):
        variants["amx_one_call"] = lambda: module.amx_prefill_attention_ranges(
            q, k, v, out, ranges, scale, threads
        )
    return alternating_medians(variants, repeats)


def amx_runs(module, dtype: torch.dtype) -> bool:
    """Whether the AMX tile kernel (`csrc/amx_prefill_attention.cpp`) runs here for `dtype`."""
    return dtype == torch.bfloat16 and module.amx_prefill_available()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tokens", default="128,512,1024,2048")
    p.add_argument(
        "--batch", default="32x128", help="PROMPTSxTOKENS of the batched-call comparison"
    )
    p.add_argument("--output", type=Path, help="default: results/prefill_attention_{dtype}.json")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    output = args.output or RESULTS / f"prefill_attention_{args.dtype}.json"
    module = load_extension()
    if module is None or not module.prefill_attention_covers(args.dtype):
        raise SystemExit(
            f"prefill_attention: this build of the host kernels has no {args.dtype} kernel "
            "(bf16 needs AVX512-BF16, fp32 AVX-512)"
        )
    torch.manual_seed(0)
    runs = []
    for model, (heads, kv_heads, dim) in HEADS.items():
        for i, tokens in enumerate(int(t) for t in args.tokens.split(",")):
            shape = (tokens, heads, kv_heads, dim)
            run = measure(module, shape, dtype, args.repeats, errors=i == 0)
            flops = 2 * tokens * tokens * heads * dim
            torch_s, ours_s = run["torch_sdpa_s"], run["ours_s"]
            amx = (
                f" | on AMX tiles {run['ours_amx_s'] * 1e3:7.2f} ms "
                f"{flops / run['ours_amx_s'] / 1e9:5.0f} GFLOP/s "
                f"{torch_s / run['ours_amx_s']:.2f}x"
                if "ours_amx_s" in run
                else ""
            )
            print(
                f"{model} T={tokens:<5} torch {torch_s * 1e3:7.2f} ms "
                f"{flops / torch_s / 1e9:5.0f} GFLOP/s | ours {ours_s * 1e3:7.2f} ms "
                f"{flops / ours_s / 1e9:5.0f} GFLOP/s | {torch_s / ours_s:.2f}x{amx}",
                flush=True,
            )
            runs.append(
                {
                    "model": model,
                    "tokens": tokens,
                    "heads": heads,
                    "kv_heads": kv_heads,
                    "head_dim": dim,
                    **run,
                    "speedup": torch_s / ours_s,
                }
            )
    prompts, tokens = (int(x) for x in args.batch.split("x"))
    batched = []
    for model, heads in HEADS.items():
        run = measure_batch(module, prompts, tokens, heads, dtype, args.repeats)
        ratio = run["one_call_s"] / run["torch_per_prompt_s"]
        print(
            f"{model} {prompts} prompts x {tokens}: torch, one call per prompt "
            f"{run['torch_per_prompt_s'] * 1e3:.2f} ms | ours, one call per prompt "
            f"{run['per_prompt_s'] * 1e3:.2f} ms | ours, one call "
            f"{run['one_call_s'] * 1e3:.2f} ms ({ratio:.2f}x torch's time)"
            + (
                f" | on AMX tiles, one call {run['amx_one_call_s'] * 1e3:.2f} ms "
                f"({run['amx_one_call_s'] / run['torch_per_prompt_s']:.2f}x torch's time)"
                if "amx_one_call_s" in run
                else ""
            ),
            flush=True,
        )
        batched.append({"model": model, "prompts": prompts, "tokens": tokens, **run})
    write_result(
        output,
        "prefill_attention",
        dtype=args.dtype,
        kernel=prefill_path(dtype),
        threads=torch.get_num_threads(),
        repeats=args.repeats,
        reference_loop_s=reference_s(),
        runs=runs,
        batched=batched,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
