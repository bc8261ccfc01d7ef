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
from neo_sim.machine import cpu_features

module = cpu_kernel.load_extension()
COVERED = {
    dtype: module is not None and module.prefill_attention_covers(name)
    for dtype, name in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32"))
}
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim", SHAPES)
def test_as_close_to_float64_as_torch(tokens, heads, kv_heads, dim, dtype):
    """Within torch's own error of the exact result in the same dtype (plus `SLACK`): in bf16
    both round the probabilities to bf16 before the V product."""
    gen = torch.Generator().manual_seed(tokens * 1000 + dim)
    q = (torch.randn(tokens, heads, dim, generator=gen) * 2).to(dtype)
    k = (torch.randn(tokens, kv_heads, dim, generator=gen) * 2).to(dtype)
    v = torch.randn(tokens, kv_heads, dim, generator=gen).to(dtype)
    scale = 1 / math.sqrt(dim)
    ours = cpu_kernel.flash_prefill_attention(q, k, v, scale)
    assert ours is not None and ours.dtype == dtype and ours.shape == q.shape
    exact = reference(q, k, v, scale)
    ours_error = (ours.double() - exact).abs().max().item()
    torch_error = (torch_sdpa(q, k, v, scale).double() - exact).abs().max().item()
    assert ours_error <= 1.25 * torch_error + SLACK[dtype], (ours_error, torch_error)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_views_of_a_fused_qkv(dtype):
    """q, k, v as the layer makes them: column slices of one [T, (Hq + 2 Hkv) D] output."""
    tokens, heads, kv_heads, dim = 90, 9, 3, 64
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=1)
    q, k, v = (x.view(tokens, -1, dim) for x in (q, k, v))
    assert not q.is_contiguous()
    ours = cpu_kernel.flash_prefill_attention(q, k, v, 0.125)
    dense = cpu_kernel.flash_prefill_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), 0.125
    )
    assert torch.equal(ours, dense)
    # The layer's entry point takes the kernel for a whole prompt (torch's where it wins):
    # [T, Hq * D].
    taken = torch_sdpa(q, k, v, 0.125) if cpu_kernel.torch_prefill_wins(dtype) else dense
    assert torch.equal(prefill_attention(q, k, v, 0.125), taken.reshape(tokens, -1))


@pytest.mark.parametrize("torch_wins", [False, True])
def test_the_engine_takes_torchs_kernel_exactly_where_it_wins(monkeypatch, torch_wins):
    """bf16 prompts go to torch's SDPA where `torch_prefill_wins` (a CPU with AMX-BF16), to
    our kernel elsewhere, one prompt or several at once; fp32 never counts as a torch win."""
    assert cpu_kernel.torch_prefill_wins(torch.bfloat16) == cpu_features()["amx_bf16"]
    assert not cpu_kernel.torch_prefill_wins(torch.float32)
    monkeypatch.setattr(attention, "torch_prefill_wins", lambda dtype: torch_wins)
    calls = []
    monkeypatch.setattr(attention, "flash_prefill_attention", lambda *a: calls.append(a))
    monkeypatch.setattr(
        attention, "flash_prefill_attention_ranges", lambda *a: calls.append(a) or True
    )
    q = torch.randn(12, 4, 64).bfloat16()
    out = attention.prefill_attention(q, q, q, 0.125)
    assert torch.equal(out, torch_sdpa(q, q, q, 0.125).reshape(12, -1))  # fell through
    done = attention.whole_prompts_stage(0, [], q, q, q, 0.125, torch.empty(12, 256))
    assert done == (not torch_wins)
    assert len(calls) == (0 if torch_wins else 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_attend_only_to_earlier_keys(dtype):
    """Changing the last token's K and V changes no earlier row's output (causality)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(150, 4, 64, generator=gen).to(dtype) for _ in range(3))
    before = cpu_kernel.flash_prefill_attention(q, k, v, 0.125)
    k[-1], v[-1] = k[-1] * 5, -v[-1]
    after = cpu_kernel.flash_prefill_attention(q, k, v, 0.125)
    assert torch.equal(before[:-1], after[:-1])
    assert not torch.equal(before[-1], after[-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_several_prompts_in_one_call_equal_one_call_each(dtype):
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
    assert cpu_kernel.flash_prefill_attention_ranges(q, k, v, ranges, 0.125, out)
    untouched = torch.ones(tokens, dtype=torch.bool)
    for a, b in ranges:
        alone = cpu_kernel.flash_prefill_attention(q[a:b], k[a:b], v[a:b], 0.125)
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
    kernel exactly where the build covers the dtype and the engine takes it, torch's SDPA
    elsewhere."""
    for dtype, covered in COVERED.items():
        taken = covered and not cpu_kernel.torch_prefill_wins(dtype)
        assert cpu_kernel.prefill_path(dtype).startswith("compiled") == taken
    assert cpu_kernel.prefill_path(torch.float16) == "torch SDPA"
    assert cpu_kernel.prefill_path(torch.float32, "cuda") == "torch SDPA"
