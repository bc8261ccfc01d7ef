"""The fused bf16 RMSNorm and rotary embedding (`csrc/fused_ops.cpp`) against torch's ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neo_engine import cpu_kernel
from neo_engine.layers import Rotary, rms_norm
from neo_sim.model import PRESETS

pytestmark = pytest.mark.skipif(
    cpu_kernel.load_extension() is None, reason="no C++ toolchain: torch fallbacks only"
)


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`layers.rms_norm`'s torch expression (the path fp32 keeps)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


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
    assert cpu_kernel.fused_rms_norm(x.float(), weight.float(), 1e-5) is None  # fp32: torch's


def test_rotary_equals_torch_bit_for_bit_on_a_strided_view():
    """The fused rotary embedding takes q as the view of the fused q/k/v projection it is
    (rows strided by q + 2 kv) and gives torch's rotate-half result exactly."""
    spec = PRESETS["smollm2-135m"]
    rotary = Rotary(spec, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(37, spec.q_size + 2 * spec.kv_size, generator=gen).bfloat16()
    q = qkv[:, : spec.q_size].view(-1, spec.num_heads, spec.head_dim)
    positions = torch.randint(0, 2000, (37,), generator=gen)
    cos, sin = rotary._rows(positions, torch.bfloat16)
    half = spec.head_dim // 2
    expected = q * cos + torch.cat([-q[..., half:], q[..., :half]], dim=-1) * sin
    fused = cpu_kernel.fused_rotary(q, cos, sin)
    assert fused is not None and torch.equal(fused, expected)
    assert torch.equal(rotary(q, positions), expected)
    assert cpu_kernel.fused_rotary(q.float(), cos.float(), sin.float()) is None


@pytest.mark.parametrize("rows,intermediate", [(1, 1536), (7, 40), (300, 1536)])
def test_silu_mul_equals_torch_but_for_rare_rounding_steps(rows, intermediate):
    """SiLU(gate) * up in one pass rounds where torch rounds (SiLU's output, then the
    product); its e^x is a polynomial within 2e-8 of torch's, so an element may differ by one
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
    assert cpu_kernel.fused_silu_mul(gate_up.float()) is None  # fp32: torch's ops
