"""The fused RMSNorm, rotary embedding and SiLU * up (`csrc/fused_ops.cpp`), bf16 and fp32,
against torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neo_engine import cpu_kernel
from neo_engine.layers import Rotary, rms_norm, torch_rms_norm
from neo_sim.model import PRESETS

pytestmark = pytest.mark.skipif(
    cpu_kernel.load_extension() is None, reason="no C++ toolchain: torch fallbacks only"
)


@pytest.mark.parametrize("rows", [1, 5, 64, 3000])
def test_rms_norm_equals_torch_to_the_sum_order(rows):
    """Fused RMSNorm rounds where torch rounds: equal to torch's ops except where the fp32
    sum of squares, summed in another order, moves a result across a bf16 rounding boundary
    (by a bf16 step of the normalised value, rounded again after the weight: within 2^-6
    relative, and rare)."""
    gen = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, 576, generator=gen) * 3).bfloat16()
    weight = torch.randn(576, generator=gen).bfloat16()
    fused = cpu_kernel.fused_rms_norm(x, weight, 1e-5)
    expected = torch_rms_norm(x, weight, 1e-5)
    assert fused is not None and fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, expected, rtol=2**-6, atol=0)
    assert (fused == expected).float().mean() > 0.999
    assert torch.equal(rms_norm(x, weight, 1e-5), fused)  # the layer uses it for bf16
    assert cpu_kernel.fused_rms_norm(x.float(), weight, 1e-5) is None  # mixed dtypes: torch's


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_equals_torch_bit_for_bit_on_a_strided_view(dtype):
    """The fused rotary embedding takes q and k as the view of the fused q/k/v projection they
    are (rows strided by q + 2 kv) and gives torch's rotate-half result exactly: in bf16 it
    rounds where torch rounds; in fp32 each product is rounded on its own (no fused
    multiply-add: where x cos and rotate_half(x) sin cancel, an FMA would move the result by
    far more than an ulp of it)."""
    spec = PRESETS["smollm2-135m"]
    rotary = Rotary(spec, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(37, spec.q_size + 2 * spec.kv_size, generator=gen).to(dtype)
    heads = spec.num_heads + spec.num_kv_heads
    qk = qkv[:, : spec.q_size + spec.kv_size].view(-1, heads, spec.head_dim)
    positions = torch.randint(0, 2000, (37,), generator=gen)
    cos, sin = rotary.rows(positions, dtype)
    half = spec.head_dim // 2
    expected = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
    fused = cpu_kernel.fused_rotary(qk, cos, sin)
    assert fused is not None and torch.equal(fused, expected)
    assert torch.equal(rotary(qk, positions), expected)
    assert cpu_kernel.fused_rotary(qk.double(), cos.double(), sin.double()) is None  # no fp64


@pytest.mark.parametrize("rows,intermediate", [(1, 1536), (7, 40), (300, 1536)])
def test_silu_mul_equals_torch_but_for_rare_rounding_steps(rows, intermediate):
    """SiLU(gate) * up in one pass rounds where torch rounds (SiLU's output, then the
    product); its e^x is within ~2 fp32 ulps of torch's, so an element may differ by one
    bf16 step where that crosses a rounding boundary: rarely, and never by more. Tails of 16
    lanes (40 columns) and strided rows (a column slice of a wider output) are covered."""
    module = cpu_kernel.load_extension()
    if not module.native_bf16():
        pytest.skip("no AVX512-BF16 in this build")
    gen = torch.Generator().manual_seed(rows)
    wide = (torch.randn(rows, 2 * intermediate + 8, generator=gen) * 4).bfloat16()
    gate_up = wide[:, : 2 * intermediate]  # rows strided by the wider output
    fused = cpu_kernel.fused_silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    assert fused is not None and fused.shape == expected.shape
    torch.testing.assert_close(fused, expected, rtol=2**-7, atol=2**-126)
    assert (fused == expected).float().mean() > 0.999


# fp32: the same expressions, vectorised by the compiler; under -ffast-math a sum of squares
# runs in another order and e^x is avx512_math.h's exp512 (exp256 on AVX2-only builds),
# so elements may differ from torch's by a few fp32 ulps. Bound: 2^-20 relative (8 ulps at
# most), far inside what the GEMMs around them change (tests/engine/test_equivalence.py pins
# the engine's greedy tokens to transformers').
FP32_RTOL = 2**-20


@pytest.mark.parametrize("rows", [1, 5, 3000])
def test_fp32_rms_norm_within_ulps_of_torch(rows):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen) * 3
    weight = torch.randn(576, generator=gen)
    fused = cpu_kernel.fused_rms_norm(x, weight, 1e-5)
    assert fused is not None and fused.dtype == torch.float32
    torch.testing.assert_close(fused, torch_rms_norm(x, weight, 1e-5), rtol=FP32_RTOL, atol=0)
    assert torch.equal(rms_norm(x, weight, 1e-5), fused)  # the layer uses it for fp32


@pytest.mark.parametrize("rows,intermediate", [(1, 1536), (7, 40), (300, 1536)])
def test_fp32_silu_mul_within_ulps_of_torch(rows, intermediate):
    """Gates within +-16 (an MLP's range; below -87 the kernel's e^-g saturates and it gives
    ~1e-37 where torch's e^-g overflows to give 0); tails of 16 lanes and strided rows
    covered."""
    gen = torch.Generator().manual_seed(rows)
    wide = (torch.rand(rows, 2 * intermediate + 8, generator=gen) - 0.5) * 32
    gate_up = wide[:, : 2 * intermediate]
    fused = cpu_kernel.fused_silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    assert fused is not None and fused.dtype == torch.float32
    torch.testing.assert_close(fused, F.silu(gate) * up, rtol=FP32_RTOL, atol=1e-30)


def test_fused_ops_benchmark_times_both_dtypes_side_by_side(tmp_path):
    """`benchmarks.fused_ops` runs end to end (one repeat) and writes a row per dtype, shape
    and op that this build fuses (bf16 SiLU * up only with AVX512-BF16)."""
    import json

    from benchmarks.fused_ops import ROWS, main

    out = tmp_path / "fused_ops.json"
    assert main(["--repeats", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "fused_ops" and result["machine"]["cpu"]
    ops = {(r["dtype"], r["shape"], r["op"]) for r in result["runs"]}
    bf16_silu = {("bfloat16", shape, "silu_mul") for shape in ROWS}
    expected = {
        (dtype, shape, op)
        for dtype in ("float32", "bfloat16")
        for shape in ROWS
        for op in ("rms_norm", "rotary", "silu_mul")
    }
    assert ops == (expected if result["native_bf16"] else expected - bf16_silu)
    for r in result["runs"]:
        assert r["speedup"] == r["torch_ms"] / r["fused_ms"] > 0
