"""Benchmark: the layer's fused elementwise ops vs torch's, side by side.

RMSNorm, the rotary embedding (of q and k together, a strided view of the fused QKV output, as
`layers.pre_projection` calls it) and SiLU(gate) * up, at SmolLM2-135M's shapes (hidden 576,
9 + 3 heads of 64, MLP 1536), for a decode batch (32 rows) and a prefill chunk (4,096 rows), in
bf16 and fp32. Each variant: `layers`' torch expression (what runs without the compiled
module) and `cpu_kernel`'s fused op (`csrc/fused_ops.cpp`), timed alternately, medians of
`--repeats`. Reported: milliseconds per call of each and the ratio; the fp32 ops joined the
fused path in this benchmark's commit (bf16's had been fused before).

Run: python -m benchmarks.fused_ops [--repeats N]
Writes benchmarks/results/fused_ops.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import RESULTS, write_result
from neo_engine import cpu_kernel
from neo_engine.layers import torch_rms_norm, torch_rotary, torch_silu_mul
from neo_sim.model import PRESETS

ROWS = {"decode batch": 32, "prefill chunk": 4096}


def cases(rows: int, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable]]:
    """op name -> (torch's expression, the fused op), on random inputs of `rows` rows."""
    spec = PRESETS["smollm2-135m"]
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, spec.hidden_size, generator=gen).to(dtype)
    w = torch.randn(spec.hidden_size, generator=gen).to(dtype)
    qkv = torch.randn(rows, spec.q_size + 2 * spec.kv_size, generator=gen).to(dtype)
    heads = spec.num_heads + spec.num_kv_heads
    qk = qkv[:, : spec.q_size + spec.kv_size].view(rows, heads, spec.head_dim)
    angles = torch.rand(rows, 1, spec.head_dim, generator=gen) * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    gate_up = (torch.randn(rows, 2 * spec.intermediate_size, generator=gen) * 4).to(dtype)
    k = cpu_kernel
    return {
        "rms_norm": (lambda: torch_rms_norm(x, w, 1e-5), lambda: k.fused_rms_norm(x, w, 1e-5)),
        "rotary": (lambda: torch_rotary(qk, cos, sin), lambda: k.fused_rotary(qk, cos, sin)),
        "silu_mul": (lambda: torch_silu_mul(gate_up), lambda: k.fused_silu_mul(gate_up)),
    }


def median_ms(torch_op: Callable, fused_op: Callable, repeats: int) -> tuple[float, float]:
    """Median ms per call of each, timed alternately (10 calls per sample)."""
    samples: tuple[list[float], list[float]] = ([], [])
    torch_op(), fused_op()  # warm-up: allocations, the module's first call
    for _ in range(repeats):
        for op, into in ((torch_op, samples[0]), (fused_op, samples[1])):
            started = time.perf_counter()
            for _ in range(10):
                op()
            into.append((time.perf_counter() - started) * 100)
    return statistics.median(samples[0]), statistics.median(samples[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--output", type=Path, default=RESULTS / "fused_ops.json")
    args = p.parse_args(argv)
    module = cpu_kernel.load_extension()
    if module is None:
        print("no compiled module here (no C++ toolchain): nothing to compare")
        return 1
    rows_out = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape, rows in ROWS.items():
            for op, (torch_op, fused_op) in cases(rows, dtype).items():
                if fused_op() is None:
                    print(f"{op} {dtype}: not fused in this build")
                    continue
                torch_ms, fused_ms = median_ms(torch_op, fused_op, args.repeats)
                rows_out.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "shape": shape,
                        "rows": rows,
                        "op": op,
                        "torch_ms": torch_ms,
                        "fused_ms": fused_ms,
                        "speedup": torch_ms / fused_ms,
                    }
                )
                r = rows_out[-1]
                print(
                    f"{r['dtype']:>8} {shape:<13} {op:<8}: torch {torch_ms:8.3f} ms, "
                    f"fused {fused_ms:7.3f} ms, {r['speedup']:5.1f}x"
                )
    write_result(
        args.output,
        "fused_ops",
        threads=torch.get_num_threads(),
        native_bf16=module.native_bf16(),
        repeats=args.repeats,
        runs=rows_out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
