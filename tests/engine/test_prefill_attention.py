"""The flash prefill attention (`csrc/prefill_attention.cpp`, bf16 and fp32) against a float64
reference and against torch's own attention in the same dtype, whose error it must not exceed
by more than rounding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from neo_engine import attention, cpu_kernel
from neo_engine.attention import prefill_attention

module = cpu_kernel.load_extension()
COVERED = {
    dtype: module is not None and module.prefill_attention_covers(name)
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32"))
}
AMX = module is not None and module.amx_prefill_available()
# Every kernel this machine can run: bf16 on AVX512-BF16 and, where the CPU has AMX-BF16, on
# AMX tiles (amx=True; heads that are not a multiple of 64 dims stay on the first), fp32.
KERNELS = [
    pytest.param(
        dtype,
        amx,
        marks=pytest.mark.skipif(not covered, reason=f"no {dtype} prefill kernel in this build"),
        id=str(dtype).removeprefix("torch.") + ("-amx" if amx else ""),
    )
    for dtype, covered in COVERED.items()
    for amx in ([False, True] if dtype == torch.bfloat16 and AMX else [False])
]
DTYPES = [
    pytest.param(
        dtype,
        marks=pytest.mark.skipif(not covered, reason=f"no {dtype} prefill kernel in this build"),
        id=str(dtype).removeprefix("torch."),
    )
    for dtype, covered in COVERED.items()
]
# Beyond torch's own error: one rounding of the output (bf16), or a few fp32 ulps of e^x and
# of the sums' order.
SLACK = {torch.bfloat16: 2**-8, torch.float32: 1e-5}


def reference(q, k, v, scale) -> torch.Tensor:
    """Causal attention in float64, KV heads repeated for GQA: [T, Hq, D]."""
    t, heads, _ = q.shape
    group = heads // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(group, 1), v.double()
    vd = vd.repeat_interleave(group, 1)
    scores = torch.einsum("thd,shd->hts", qd, kd) * scale
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)
    return torch.einsum("hts,shd->thd", probs, vd)


def torch_sdpa(q, k, v, scale) -> torch.Tensor:
    qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


SHAPES = [  # tokens, query heads, KV heads, head dim: tails of every tile, GQA, MHA, D 32..256
    (1, 9, 3, 64),
    (7, 9, 3, 64),
    (16, 2, 1, 64),
    (65, 9, 3, 64),
    (100, 4, 4, 32),
    (257, 8, 2, 128),
    (130, 2, 1, 256),
    (700, 9, 3, 64),
]


@pytest.mark.parametrize("dtype, amx", KERNELS)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim", SHAPES)
def test_as_close_to_float64_as_torch(tokens, heads, kv_heads, dim, dtype, amx):
    """Within torch's own error of the exact result in the same dtype (plus `SLACK`): in bf16
    both round the probabilities to bf16 before the V product."""
    gen = torch.Generator().manual_seed(tokens * 1000 + dim)
    q = (torch.randn(tokens, heads, dim, generator=gen) * 2).to(dtype)
    k = (torch.randn(tokens, kv_heads, dim, generator=gen) * 2).to(dtype)
    v = torch.randn(tokens, kv_heads, dim, generator=gen).to(dtype)
    scale = 1 / math.sqrt(dim)
    ours = cpu_kernel.flash_prefill_attention(q, k, v, scale, amx=amx)
    assert ours is not None and ours.dtype == dtype and ours.shape == q.shape
    exact = reference(q, k, v, scale)
    ours_error = (ours.double() - exact).abs().max().item()
    torch_error = (torch_sdpa(q, k, v, scale).double() - exact).abs().max().item()
    assert ours_error <= 1.25 * torch_error + SLACK[dtype], (ours_error, torch_error)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("dtype, amx", KERNELS)
def test_strided_views_of_a_fused_qkv(dtype, amx):
    """q, k, v as the layer makes them: column slices of one [T, (Hq + 2 Hkv) D] output."""
    tokens, heads, kv_heads, dim = 90, 9, 3, 64
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
    q, k, v = (x.view(tokens, -1, dim) for x in (q, k, v))
    assert not q.is_contiguous()
    ours = cpu_kernel.flash_prefill_attention(q, k, v, 0.125, amx=amx)
    dense = cpu_kernel.flash_prefill_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.125, amx=amx
    )
    assert torch.equal(ours, dense)
    # The layer's entry point takes the kernel for a whole prompt (AMX tiles where they run):
    # [T, Hq * D].
    if amx or not AMX or dtype != torch.bfloat16:
        assert torch.equal(prefill_attention(q, k, v, 0.125), dense.reshape(tokens, -1))


@pytest.mark.skipif(not AMX, reason="no AMX-BF16 here")
def test_bf16_prompts_run_on_amx_tiles_where_the_cpu_has_them():
    """With AMX-BF16 the engine's bf16 prompts go to the tile kernel (one prompt or several):
    its results differ from the AVX512-BF16 kernel's in the last bits (other summation
    orders), equal to those of `amx=True`; heads that are not a multiple of 64 dims stay on
    the AVX512-BF16 kernel; `prefill_path` says so."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(200, 4, 64, generator=gen).bfloat16() for _ in range(3))
    tiles = cpu_kernel.flash_prefill_attention(q, k, v, 0.125, amx=True)
    vectors = cpu_kernel.flash_prefill_attention(q, k, v, 0.125, amx=False)
    assert not torch.equal(tiles, vectors)
    assert torch.equal(prefill_attention(q, k, v, 0.125), tiles.reshape(200, -1))
    written = []

    class Pool:  # where whole_prompts_stage stores each prompt's new K/V
        def write(self, layer, slots, k, v):
            written.append(k.shape[0])

    out = torch.empty_like(q).reshape(200, -1)
    prompts = [(Pool(), None, (0, 120)), (Pool(), None, (120, 200))]
    assert attention.whole_prompts_stage(0, prompts, q, k, v, 0.125, out)
    assert written == [120, 80]
    first = cpu_kernel.flash_prefill_attention(q[:120], k[:120], v[:120], 0.125, amx=True)
    assert torch.equal(out[:120], first.reshape(120, -1))
    narrow = [x[:, :, :32].contiguous() for x in (q, k, v)]
    assert torch.equal(
        cpu_kernel.flash_prefill_attention(*narrow, 0.125, amx=True),
        cpu_kernel.flash_prefill_attention(*narrow, 0.125, amx=False),
    )
    assert "AMX tiles" in cpu_kernel.prefill_path(torch.bfloat16)
    assert "AMX" not in cpu_kernel.prefill_path(torch.float32)


@pytest.mark.parametrize("dtype, amx", KERNELS)
def test_rows_attend_only_to_earlier_keys(dtype, amx):
    """Changing the last token's K and V changes no earlier row's output (causality)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(150, 4, 64, generator=gen).to(dtype) for _ in range(3))
    before = cpu_kernel.flash_prefill_attention(q, k, v, 0.125, amx=amx)
    k[-1], v[-1] = k[-1] * 5, -v[-1]
    after = cpu_kernel.flash_prefill_attention(q, k, v, 0.125, amx=amx)
    assert torch.equal(before[:-1], after[:-1])
    assert not torch.equal(before[-1], after[-1])


@pytest.mark.parametrize("dtype, amx", KERNELS)
def test_several_prompts_in_one_call_equal_one_call_each(dtype, amx):
    """The batched call (row ranges of a fused QKV output, gaps between them, lengths that end
    in every K block of a tile) gives each prompt exactly its one-prompt result, and leaves
    the rows outside every range as they were."""
    lengths, gaps = [1, 16, 33, 100, 129, 64, 250], [0, 3, 0, 5, 1, 0, 2]
    tokens, heads, kv_heads, dim = sum(lengths) + sum(gaps), 9, 3, 64
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
    q, k, v = (x.view(tokens, -1, dim) for x in (q, k, v))
    ranges, row = [], 0
    for length, gap in zip(lengths, gaps):
        ranges.append((row + gap, row + gap + length))
        row += gap + length
    out = torch.full((tokens, heads, dim), 7.0, dtype=dtype)
    assert cpu_kernel.flash_prefill_attention_ranges(q, k, v, ranges, 0.125, out, amx=amx)
    untouched = torch.ones(tokens, dtype=torch.bool)
    for a, b in ranges:
        alone = cpu_kernel.flash_prefill_attention(q[a:b], k[a:b], v[a:b], 0.125, amx=amx)
        assert torch.equal(out[a:b], alone)
        untouched[a:b] = False
    assert (out[untouched] == 7.0).all()


def test_declines_what_it_does_not_cover():
    """fp16, mixed dtypes, a head size that is not a multiple of 32, or a dtype this build has
    no kernel for: None (torch's SDPA runs instead)."""
    q = torch.randn(10, 2, 64)
    half = q.half()
    assert cpu_kernel.flash_prefill_attention(half, half, half, 0.125) is None
    assert cpu_kernel.flash_prefill_attention(q, q.bfloat16(), q, 0.125) is None
    assert not cpu_kernel.flash_prefill_attention_ranges(half, half, half, [(0, 10)], 0.125, half)
    for dtype, covered in COVERED.items():
        odd = torch.randn(10, 2, 40).to(dtype)
        assert cpu_kernel.flash_prefill_attention(odd, odd, odd, 0.125) is None
        x = q.to(dtype)
        assert (cpu_kernel.flash_prefill_attention(x, x, x, 0.125) is None) == (not covered)


@pytest.mark.parametrize("dtype", DTYPES)
def test_benchmark_measures_both_side_by_side(dtype):
    """`benchmarks.prefill_attention.measure` times both and reports each one's error."""
    from benchmarks.prefill_attention import measure

    run = measure(module, (40, 4, 2, 64), dtype, repeats=1, errors=True)
    assert run["torch_sdpa_s"] > 0 and run["ours_s"] > 0
    assert run["ours_max_error"] <= 1.25 * run["torch_sdpa_max_error"] + SLACK[dtype]
    from benchmarks.prefill_attention import measure_batch

    batch = measure_batch(module, prompts=3, tokens=20, heads=(4, 2, 64), dtype=dtype, repeats=1)
    assert batch["per_prompt_s"] > 0 and batch["one_call_s"] > 0


def test_the_path_in_words_says_which_kernel_runs():
    """`prefill_path` (engine.build_info, /metrics, benchmark results) names the compiled
    kernel exactly where the build covers the dtype, torch's SDPA elsewhere."""
    for dtype, covered in COVERED.items():
        assert cpu_kernel.prefill_path(dtype).startswith("compiled") == covered
    assert cpu_kernel.prefill_path(torch.float16) == "torch SDPA"
    assert cpu_kernel.prefill_path(torch.float32, "cuda") == "torch SDPA"
