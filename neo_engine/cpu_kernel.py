"""Build and load the host kernels (C++, OpenMP), with torch fallbacks.

Four kernels: the host decode attention (`csrc/cpu_attention.cpp`, NEO's hot spot, with the
paged KV store `write_kv` that `KVPool.write` uses in RAM), a skinny fp32/bf16 GEMM for decode
batches on a CPU device (`csrc/skinny_gemm.cpp`), the layer's elementwise ops fused for bf16
and fp32 on a CPU device (`csrc/fused_ops.cpp`), and a bf16 (AVX512-BF16) and fp32 (AVX-512 or AVX2)
flash prefill attention (`csrc/prefill_attention.cpp`; these last two use the vector e^x of
`csrc/avx512_math.h`). The extension is compiled when an engine starts (before it accepts a
request) with the machine's own instruction set (`-march=native`), and cached by torch under a
name that hashes the CPU's flags, torch's version and the sources themselves: a cache is never
reused on a different CPU, and two checkouts with different sources never rebuild over each
other. If no compiler is available, or NEO_DISABLE_CPP_KERNEL=1, all fall back to pure torch:
the same numbers, more slowly. With NEO_CPU_ISA=avx2 (`neo_sim.machine.isa_cap`) the extension
is compiled without AVX-512 and torch's kernels are held to AVX2 (`apply_isa_cap`): an AVX-512
machine runs what an AVX2-only one would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time
from pathlib import Path

import torch

from neo_sim.errors import NeoError
from neo_sim.machine import ISA_CAP_ENV, cpu_features, export_torch_isa_environment, isa_cap
from neo_sim.profile import HOST_OVERHEAD_ACCOUNTING

log = logging.getLogger(__name__)
_SOURCES = [
    Path(__file__).with_name("csrc") / name
    for name in (
        "cpu_attention.cpp",
        "skinny_gemm.cpp",
        "fused_ops.cpp",
        "prefill_attention.cpp",
        "amx_prefill_attention.cpp",
        "greedy_rows.cpp",
        "decode_layers.cpp",
        "bindings.cpp",
    )
]
# in the cache key too
_HEADERS = [Path(__file__).with_name("csrc") / name for name in ("avx512_math.h", "kernels.h")]
_lock = threading.Lock()
_module = None
_failed = False
# torch's build lock (`FileBaton`, a `lock` file in the extension's build directory) is left
# behind by a build that was killed, and every later build then waits on it for ever. A build
# here takes 1-2.5 minutes; a lock this much older is from a dead one.
STALE_BUILD_LOCK_S = 20 * 60


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


_COMPILE_ISA_FLAGS = {"avx2": ["-mno-avx512f"]}  # also turns off every AVX-512 subset


def apply_isa_cap() -> None:
    """Hold torch's kernels to NEO_CPU_ISA's cap (no-op without one): sets the libraries'
    variables where unset and checks that ATen took its cap; NeoError if it ran a kernel
    before (the cap must then be set before Python starts, as benchmarks and tests do)."""
    cap = isa_cap()
    if cap is None:
        return
    export_torch_isa_environment()
    running = torch.backends.cpu.get_cpu_capability()
    if running.lower() not in (cap, "default"):
        raise NeoError(
            f"{ISA_CAP_ENV}={cap} but torch already runs {running} kernels (it read its "
            f"instruction set before the cap was set): set {ISA_CAP_ENV}={cap} in the "
            "environment before Python starts"
        )


apply_isa_cap()  # at import, before this process's first torch kernel as a rule


def _sources_digest(seed: str) -> str:
    """12 hex digits of `seed` and the host kernels' sources and headers."""
    key = hashlib.sha1(seed.encode())
    for path in (*_SOURCES, *_HEADERS):
        key.update(path.read_bytes())
    return key.hexdigest()[:12]


def engine_build(prepack: bool = True) -> str:
    """What decides the engine's operator times here beyond the machine: torch's version, the
    host kernels' sources (12 hex digits), what a profile's host overhead covers
    (`neo_sim.profile.HOST_OVERHEAD_ACCOUNTING`) and the dtypes whose GEMM weights the engine
    prepacks by default here (`weights.can_prepack` on a CPU device). A profile records it,
    and validate measures a new one where it differs: a profile timed with other kernels prices this
    engine wrong (the paged attention kernel's deeper prefetch alone took SmolLM2's batch-64
    decode attention from ~17.5 to ~12.8 ms a step; prepacked fp32 weights took the `small`
    preset's 32-row decode GEMMs from 51 to 35 ms,
    benchmarks/results/skinny_gemm_float32_avx512.json). `prepack=False`: an engine (or a
    profile) run with `LoadSettings.prepack_weights` off."""
    from neo_engine.weights import PREPACKED_DTYPES, can_prepack

    cpu = torch.device("cpu")
    dtypes = [d for d in PREPACKED_DTYPES if prepack and can_prepack(d, cpu)]
    prepacked = "/".join(str(d).removeprefix("torch.") for d in dtypes) or "none"
    return (
        f"torch {torch.__version__}, host kernels {_sources_digest(torch.__version__)}, "
        f"host overhead accounting {HOST_OVERHEAD_ACCOUNTING}, prepacked GEMM weights: {prepacked}"
    )


def clear_stale_build_lock(name: str) -> bool:
    """Remove the build lock of extension `name` if it is older than `STALE_BUILD_LOCK_S`
    (a build that was killed left it), with a warning; True if one was removed."""
    from torch.utils import cpp_extension

    build_directory = getattr(cpp_extension, "_get_build_directory", None)  # private in torch
    if build_directory is None:
        return False
    lock = Path(build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_BUILD_LOCK_S:
        return False
    log.warning(
        "removing %s, left %.0f min ago by a host-kernel build that did not finish", lock, age / 60
    )
    lock.unlink(missing_ok=True)
    return True


def load_extension():
    """The compiled module, or None if it cannot be built here."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is not None or _failed:
            return _module
        if os.environ.get("NEO_DISABLE_CPP_KERNEL") == "1":
            _failed = True
            return None
        apply_isa_cap()  # before the build: a wrong cap is an error, not a fallback
        try:
            from torch.utils.cpp_extension import load

            cap = isa_cap()
            tag = _sources_digest(_cpu_flags() + torch.__version__ + (cap or ""))
            name = f"neo_cpu_attention_{tag}"
            clear_stale_build_lock(name)
            _module = load(
                name=name,
                sources=[str(path) for path in _SOURCES],
                extra_cflags=[
                    "-O3",
                    "-march=native",
                    *_COMPILE_ISA_FLAGS.get(cap, []),
                    "-fopenmp",
                    "-ffast-math",
                    "-fno-finite-math-only",
                ],
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as exc:  # no compiler, no headers: fall back, loudly once
            log.warning("host kernels could not be built (%s); using the torch fallbacks", exc)
            _failed = True
    return _module


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    num_threads: int | None = None,
) -> torch.Tensor:
    """Attention of one new query per request over its paged KV, on the CPU.

    q: [B, Hq, D] fp32 or bf16 (heads contiguous; rows may be strided, as in a view of the
    fused q/k/v projection); k_cache, v_cache: [num_blocks, Hkv, block_size, D]
    (fp32/fp16/bf16); block_tables: [B, max_blocks] int32; context_lens: [B] int32. Returns
    [B, Hq, D] in q's dtype (fp32 sums either way; a bf16 output is rounded once, as torch's
    cast of the fp32 result would round it).
    """
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype)
    module = load_extension()
    if module is not None:
        module.decode_attention(
            q,
            k_cache,
            v_cache,
            block_tables,
            context_lens,
            out,
            scale,
            num_threads or torch.get_num_threads(),
        )
        return out
    return reference_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, out)


# Up to this many rows of x, per dtype, `skinny_linear` beats torch's F.linear on the CPUs
# measured (benchmarks/skinny_gemm.py): fp32 1.3-3.4x at 1..32 rows (AVX2,
# results/skinny_gemm.json); bf16 2.4x at 1 row, 1.07x at 16 (AVX512-BF16,
# results/skinny_gemm_bfloat16.json, 2026-12-07), where at 24 and 32 rows that run read
# 1.14x and 1.03x and its version at fcbbdf7 0.93x and 0.93x: 16 is kept. Above it the
# blocked GEMMs win. With AMX-BF16 oneDNN's bf16 GEMM multiplies up to 16 rows in one tile
# pass: F.linear is level with the kernel at 4 rows and 1.26x faster at 8
# (results/skinny_gemm_bfloat16_amx.json). (With prepacked weights `layers.linear` hands over
# to oneDNN far earlier: SKINNY_ROWS_WITH_PREPACKED.)
SKINNY_MAX_ROWS = {torch.float32: 32, torch.bfloat16: 4 if cpu_features()["amx_bf16"] else 16}


def skinny_linear(
    x: torch.Tensor, weight: torch.Tensor, native: bool = True, max_rows: int | None = None
) -> torch.Tensor | None:
    """x [M, K] @ weight[N, K]^T for a small M on the CPU, in fp32 or bf16 (x, weight and the
    result share the dtype; sums are fp32), or None where the kernel does not apply (another
    device or dtype, more rows than `max_rows`, by default SKINNY_MAX_ROWS's, no compiled
    extension). `native=False` forces the portable bf16 path on a CPU that has the native one
    and `max_rows` takes more rows than the engine gives it (its tests)."""
    if (
        x.device.type != "cpu"
        or x.dtype not in SKINNY_MAX_ROWS
        or weight.dtype != x.dtype
        or x.dim() != 2
        or x.shape[0] > (max_rows or SKINNY_MAX_ROWS[x.dtype])
    ):
        return None
    module = load_extension()
    if module is None:
        return None
    out = torch.empty(x.shape[0], weight.shape[0], dtype=x.dtype)
    module.skinny_linear(x.contiguous(), weight.contiguous(), out, torch.get_num_threads(), native)
    return out


def skinny_path(dtype: torch.dtype) -> str:
    """Which skinny-GEMM path decode batches of this dtype take here, in words (logs,
    /metrics, benchmark results)."""
    module = load_extension()
    if module is None:
        return "torch (no compiled host kernels)"
    if dtype == torch.float32:
        return "fp32 FMA kernel"
    if dtype == torch.bfloat16:
        if module.native_bf16():
            return "bf16 kernel, native bf16 dot products (AVX512-BF16)"
        return "bf16 kernel, portable (bf16 widened to fp32)"
    return "torch (no skinny kernel for this dtype)"


def reference_decode_attention(
    q, k_cache, v_cache, block_tables, context_lens, scale, out=None, dtype=torch.float32
) -> torch.Tensor:
    """Plain torch: gather each request's blocks and attend (the fallback and the oracle)."""
    batch, q_heads, head_dim = q.shape
    kv_heads, block_size = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    result = out if out is not None else torch.empty_like(q)
    for b in range(batch):
        length = int(context_lens[b])
        blocks = block_tables[b, : -(-length // block_size)].long()
        k = (
            k_cache[blocks]
            .to(dtype)
            .permute(1, 0, 2, 3)
            .reshape(kv_heads, -1, head_dim)[:, :length]
        )
        v = (
            v_cache[blocks]
            .to(dtype)
            .permute(1, 0, 2, 3)
            .reshape(kv_heads, -1, head_dim)[:, :length]
        )
        qb = q[b].to(dtype).view(kv_heads, group, head_dim)
        scores = torch.einsum("hgd,htd->hgt", qb, k) * scale
        probs = torch.softmax(scores, dim=-1)
        result[b] = (
            torch.einsum("hgt,htd->hgd", probs, v).reshape(q_heads, head_dim).to(result.dtype)
        )
    return result


def fused_silu_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """SiLU(gate) * up of gate_up [T, 2I] = [gate | up] in one pass (fp32; bf16 with
    AVX512-BF16), or None where it does not apply."""
    module = _fused_applies(gate_up)
    if (
        module is None
        or (gate_up.dtype == _BF16 and not module.native_bf16())
        or gate_up.dim() != 2
        or gate_up.stride(1) != 1
        or gate_up.shape[1] % 2
    ):
        return None
    out = torch.empty(gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype)
    module.fused_silu_mul(gate_up, out)
    return out


def greedy_tokens(logits: torch.Tensor, maxes: torch.Tensor) -> torch.Tensor | None:
    """torch.argmax(logits, dim=-1) on the rows whose max (`maxes`, the rows' amax) is finite,
    -1 on the others, through the compiled search for the first maximal value
    (`csrc/greedy_rows.cpp`; ~20x faster than torch's argmax on a decode batch here), or None
    where it does not apply (not float32 rows on the CPU, no compiled module)."""
    if (
        logits.device.type != "cpu"
        or logits.dtype != torch.float32
        or logits.dim() != 2
        or logits.stride(1) != 1
        or maxes.dtype != torch.float32
    ):
        return None
    module = load_extension()
    if module is None:
        return None
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    module.first_index_of_max(logits, maxes.contiguous(), out)
    return out


_BF16 = torch.bfloat16
FUSED_DTYPES = (torch.bfloat16, torch.float32)  # the fused ops' domain


def _fused_applies(*tensors: torch.Tensor):
    """The compiled module if the tensors are CPU tensors of one dtype, bf16 or fp32 (the fused
    ops' domain), else None (torch's ops then)."""
    dtype = tensors[0].dtype
    if dtype not in FUSED_DTYPES:
        return None
    for t in tensors:  # a loop, not any(genexpr): this runs several times per layer
        if t.dtype != dtype or t.device.type != "cpu":
            return None
    return load_extension()


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """`layers.rms_norm` in one pass (bf16 or fp32, x [T, H]), or None where it does not
    apply."""
    module = _fused_applies(x, weight)
    if module is None or x.dim() != 2:
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    module.fused_rms_norm(x, weight.contiguous(), out, eps)
    return out


def fused_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """The rotate-half rotary embedding of x [T, H, D] with cos, sin [T, 1, D] in one pass
    (bf16 or fp32), or None."""
    module = _fused_applies(x, cos, sin)
    if module is None or x.dim() != 3 or x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        return None
    out = torch.empty(x.shape, dtype=x.dtype)
    module.fused_rotary(
        x,
        cos.reshape(cos.shape[0], -1).contiguous(),
        sin.reshape(sin.shape[0], -1).contiguous(),
        out,
    )
    return out


_PREFILL_DTYPES = {torch.bfloat16: "bfloat16", torch.float32: "float32"}


def _prefill_covers(module, dtype: torch.dtype) -> bool:
    """Whether this build of the host kernels has the flash prefill kernel for `dtype`."""
    name = _PREFILL_DTYPES.get(dtype)
    return module is not None and name is not None and module.prefill_attention_covers(name)


def _prefill_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The compiled module if its flash prefill kernel covers q, k, v (CPU tensors [T, H, D]
    of one dtype, head dims contiguous, D a multiple of 32 up to 256; bf16 in an AVX512-BF16
    build, fp32 in an AVX-512 or AVX2 + FMA one), else None."""
    module = _fused_applies(q, k, v)
    if (
        module is None
        or q.dim() != 3
        or q.shape[2] % 32
        or q.shape[2] > 256
        or any(t.stride(2) != 1 for t in (q, k, v))
        or not _prefill_covers(module, q.dtype)
    ):
        return None
    return module


def _amx_applies(module, q: torch.Tensor) -> bool:
    """Whether the AMX tile kernel (`csrc/amx_prefill_attention.cpp`) takes these prompts: bf16,
    heads of 64-256 dims in steps of 64, a build and CPU with AMX-BF16. On an Intel Xeon VM it
    ran 1.13-1.79x torch's SDPA (whose CPU flash kernel runs at AMX speeds there too) at
    SmolLM2's heads and 1.01-1.58x at Llama-3-8B's, 128-2,048 tokens, and 2.4-4.3x our
    AVX512-BF16 kernel; 32 prompts of 128 tokens in one call took 0.63x / 0.78x torch's time
    called per prompt (benchmarks/results/prefill_attention_bfloat16_amx.json)."""
    return q.dtype == torch.bfloat16 and q.shape[2] % 64 == 0 and module.amx_prefill_available()


def prefill_path(dtype: torch.dtype, device_type: str = "cpu") -> str:
    """Which prefill attention whole prompts of this dtype take on a device of this type here,
    in words (engine.build_info, /metrics, benchmark results)."""
    module = load_extension()
    if device_type != "cpu" or not _prefill_covers(module, dtype):
        return "torch SDPA"
    if dtype == torch.bfloat16 and module.amx_prefill_available():
        return "compiled flash kernel on AMX tiles (heads not a multiple of 64: AVX512-BF16)"
    if dtype == torch.bfloat16:
        return "compiled flash kernel, native bf16 dot products (AVX512-BF16)"
    return f"compiled flash kernel, fp32 FMA ({'AVX-512' if cpu_features()['avx512f'] else 'AVX2'})"


def flash_prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, amx: bool = True
) -> torch.Tensor | None:
    """Causal attention of one whole prompt (q [T, Hq, D], k, v [T, Hkv, D], bf16 or fp32 on
    the CPU, head dims contiguous) through the compiled flash kernel
    (`csrc/prefill_attention.cpp`): [T, Hq, D], or None where it does not apply (another
    dtype or device, a head size that is not a multiple of 32, no AVX512-BF16 for bf16 or
    neither AVX-512 nor AVX2 with FMA for fp32 in this build). bf16 goes to the AMX tile kernel
    where it applies (`_amx_applies`; `amx=False`: the AVX512-BF16 one, for its tests)."""
    module = _prefill_kernel(q, k, v)
    if module is None:
        return None
    out = torch.empty(q.shape, dtype=q.dtype)
    _attend_prompts(module, q, k, v, [(0, q.shape[0])], scale, out, amx)
    return out


def flash_prefill_attention_ranges(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ranges: list[tuple[int, int]],
    scale: float,
    out: torch.Tensor,
    amx: bool = True,
) -> bool:
    """Causal attention of several whole prompts in one call: prompt i is rows ranges[i] =
    (first, end) of q [N, Hq, D] and k, v [N, Hkv, D]; its output goes to the same rows of
    `out` [N, Hq, D] (contiguous, q's dtype). False, with nothing written, where the kernel
    does not apply (as `flash_prefill_attention`); per prompt, the same result as that
    one-prompt call (the same work items, each computed alone)."""
    module = _prefill_kernel(q, k, v)
    if module is None or out.dtype != q.dtype or not out.is_contiguous():
        return False
    _attend_prompts(module, q, k, v, ranges, scale, out, amx)
    return True


def _attend_prompts(module, q, k, v, ranges, scale: float, out: torch.Tensor, amx: bool) -> None:
    """The prompts at row `ranges` through the AMX tile kernel where it applies (and `amx`),
    else the AVX-512 / AVX2 one (whose one-prompt entry is this call with one range)."""
    rows = torch.tensor(ranges, dtype=torch.int64).reshape(-1, 2)
    kernel = (
        module.amx_prefill_attention_ranges
        if amx and _amx_applies(module, q)
        else module.prefill_attention_ranges
    )
    kernel(q, k, v, out, rows, scale, torch.get_num_threads())
