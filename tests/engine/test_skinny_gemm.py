"""The skinny decode GEMM against a float64 reference, and where `linear` uses it.

fp32 and bf16; bf16 on both of its paths where this CPU has the native one (AVX512-BF16), the
portable path alone elsewhere."""

from __future__ import annotations

import pytest
import torch

from neo_engine import cpu_kernel
from neo_engine.cpu_kernel import SKINNY_MAX_ROWS, skinny_linear, skinny_path
from neo_engine.layers import linear, linear_add
from neo_sim.machine import cpu_features

SHAPES = [
    (1, 768, 2048),
    (3, 768, 1280),  # a partial x-row tile
    (4, 2048, 768),
    (7, 40, 9),  # K under one vector, N not a multiple of the 4-row tile
    (13, 100, 30),  # K with a scalar tail
    (32, 576, 1536),  # SmolLM2's width, the largest fp32 batch it takes
]


@pytest.mark.parametrize("rows, k, n", SHAPES)
def test_matches_float64(rows, k, n):
    gen = torch.Generator().manual_seed(rows * 1000 + k + n)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    out = skinny_linear(x.float(), w.float())
    assert out is not None and out.shape == (rows, n)
    ref = x @ w.T
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def _bf16_paths() -> list[bool]:
    """native=True runs the native path where the build has it, else the portable one."""
    module = cpu_kernel.load_extension()
    if module is None:
        pytest.skip("no compiled host kernels here")
    return [True, False] if module.native_bf16() else [False]


# bf16's native path streams weight rows while x fits 16 KB and tiles them beyond: K tails
# under 32, past a 128-wide step (200 = 128 + 64 + 8), and tiles with x-row and K tails. Up
# to 16 rows, whatever the engine gives it on this CPU (SKINNY_MAX_ROWS: 4 with AMX).
BF16_KERNEL_ROWS = 16
BF16_SHAPES = [shape for shape in SHAPES if shape[0] <= BF16_KERNEL_ROWS] + [
    (2, 33, 5),
    (4, 31, 8),
    (2, 200, 12),
    (9, 1000, 20),
    (5, 2000, 13),
    (SKINNY_MAX_ROWS[torch.bfloat16], 576, 1536),  # the largest bf16 batch it takes
]


@pytest.mark.parametrize("rows, k, n", BF16_SHAPES)
def test_bf16_matches_float64_to_its_own_rounding(rows, k, n):
    """Products of bf16 inputs are exact in fp32 and the sums are fp32: each output must be
    the exact result rounded once to bf16 (half an ulp: at most 2^-8 relative) up to fp32 summation
    error, on every path."""
    gen = torch.Generator().manual_seed(rows * 1000 + k + n)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    ref = x.double() @ w.double().T  # exact: the inputs are what the kernel reads
    bound = ref.abs() * 2.0**-8 + 1e-5 * ref.abs().max()
    for native in _bf16_paths():
        out = skinny_linear(x, w, native=native, max_rows=BF16_KERNEL_ROWS)
        assert out is not None and out.dtype == torch.bfloat16 and out.shape == (rows, n)
        excess = (out.double() - ref).abs() - bound
        assert excess.max().item() <= 0, f"native={native}: {excess.max().item()} over bound"


def test_bf16_paths_agree_with_torch():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 576, generator=gen).bfloat16()
    w = torch.randn(1536, 576, generator=gen).bfloat16()
    torch_out = torch.nn.functional.linear(x, w).double()
    for native in _bf16_paths():
        out = skinny_linear(x, w, native=native, max_rows=BF16_KERNEL_ROWS).double()
        assert (out - torch_out).abs().max().item() <= 2.0**-7 * torch_out.abs().max().item()


def test_path_names_what_runs():
    module = cpu_kernel.load_extension()
    if module is None:
        assert skinny_path(torch.bfloat16).startswith("torch")
        return
    native = module.native_bf16()
    assert ("native" in skinny_path(torch.bfloat16)) == native
    assert skinny_path(torch.float32) == "fp32 FMA kernel"


def test_declines_what_it_does_not_cover():
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    for dtype, rows in SKINNY_MAX_ROWS.items():  # prefill-sized
        assert skinny_linear(torch.randn(rows + 1, 16).to(dtype), w.to(dtype)) is None
        if cpu_kernel.load_extension() is not None:
            assert skinny_linear(torch.randn(rows, 16).to(dtype), w.to(dtype)) is not None
    assert skinny_linear(x.double(), w.double()) is None
    assert skinny_linear(x.half(), w.half()) is None
    assert skinny_linear(x.bfloat16(), w) is None  # mixed dtypes


def test_linear_gives_the_same_numbers_with_and_without_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 96, generator=gen), torch.randn(40, 96, generator=gen)
    fast = linear(x, w)
    monkeypatch.setattr(cpu_kernel, "load_extension", lambda: None)
    slow = linear(x, w)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert torch.allclose(slow, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 4, 5, 8, 9, 32, 300])
def test_prepacked_weights_give_f_linear_s_numbers(rows, dtype):
    """bf16 or fp32 on a CPU device: oneDNN with the blocked copy past a few rows, the skinny
    kernel below (how many: `SKINNY_ROWS_WITH_PREPACKED`, per dtype and vector width); both
    within the dtype's rounding of F.linear (bf16: 8 bits; fp32: sums in another order than
    the BLAS's, a few units in the last place)."""
    from neo_engine.weights import PrepackedWeight, can_prepack

    if not can_prepack(dtype, torch.device("cpu")):
        pytest.skip(f"torch has no oneDNN {dtype} prepacking here")
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(200, 96, generator=gen).to(dtype)
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    packed = PrepackedWeight.of(w)
    assert packed.shape == w.shape
    expected = torch.nn.functional.linear(x, w)
    got = linear(x, packed)
    assert got.dtype == dtype and got.shape == expected.shape
    diff = (got.double() - expected.double()).abs().max().item()
    tolerance = 2.0**-7 if dtype == torch.bfloat16 else 1e-6
    assert diff <= tolerance * expected.abs().max().item()


def test_fp32_weights_are_prepacked_on_a_cpu_device():
    """The engine prepacks fp32 as it does bf16 where torch has oneDNN's ops (fp32 BLAS took
    1.2-1.5x the prepacked GEMM's time at decode and prefill sizes), and hands a row or two to
    the skinny kernel, which streams the plain weight faster there."""
    from neo_engine.layers import SKINNY_ROWS_WITH_PREPACKED
    from neo_engine.weights import can_prepack

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    assert can_prepack(torch.float32, torch.device("cpu"))
    assert not can_prepack(torch.float16, torch.device("cpu"))
    assert 2 <= SKINNY_ROWS_WITH_PREPACKED[torch.float32] <= 8
    assert SKINNY_ROWS_WITH_PREPACKED[torch.bfloat16] == (1 if cpu_features()["amx_bf16"] else 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 4, 5, 64, 73])
@pytest.mark.parametrize("prepacked", [False, True])
def test_linear_add_is_the_residual_plus_the_product(rows, dtype, prepacked):
    """`linear_add` (the layer's residual adds; oneDNN's post-op past the skinny kernel's rows
    with a prepacked weight) gives residual + x @ w^T: within bf16 roundings of its terms'
    sizes in bf16 (the fused path rounds the sum once, the plain one the product first), to
    fp32 summation error in fp32."""
    from neo_engine.weights import PrepackedWeight, can_prepack

    if prepacked and not can_prepack(dtype, torch.device("cpu")):
        pytest.skip(f"torch has no oneDNN {dtype} prepacking here")
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 200, generator=gen).to(dtype)
    x = torch.randn(rows, 200, generator=gen).to(dtype)
    residual = torch.randn(rows, 96, generator=gen).to(dtype) * 10
    got = linear_add(x, PrepackedWeight.of(w) if prepacked else w, residual)
    exact = residual.double() + x.double() @ w.double().T
    size = residual.double().abs() + x.double().abs() @ w.double().abs().T  # of the terms
    assert got.dtype == dtype and got.shape == residual.shape
    tolerance = 2.0**-7 if dtype == torch.bfloat16 else 1e-6
    assert ((got.double() - exact).abs() <= tolerance * size).all()


def test_blocked_rows_are_few_and_waste_at_most_a_sixteenth():
    """oneDNN's GEMM runs at the rows given up to EXACT_ROWS (decode batches), then at row
    counts rounded up to 16 steps per octave, so that an engine builds at most 176 sizes up
    to 8,192 tokens and never runs more than 1/16 extra rows."""
    from neo_engine.layers import EXACT_ROWS, blocked_rows

    sizes = [blocked_rows(m) for m in range(1, 8193)]
    assert sizes[:EXACT_ROWS] == list(range(1, EXACT_ROWS + 1))
    assert all(m <= b <= m * 17 / 16 for m, b in zip(range(1, 8193), sizes))
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == 176
    assert [blocked_rows(m) for m in (65, 73, 300, 1000, 8192)] == [68, 76, 304, 1024, 8192]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [65, 73, 250, 257, 1000])
def test_padded_rows_leave_the_rows_numbers_as_unpadded(rows, dtype):
    """Past EXACT_ROWS the prepacked GEMM runs on zero-padded inputs (`blocked_rows`): the
    rows asked for come out bit for bit as oneDNN gives them unpadded (rows are independent in
    a GEMM), plain and with the residual add, as contiguous [rows, out] tensors."""
    from neo_engine.weights import PrepackedWeight, can_prepack

    if not can_prepack(dtype, torch.device("cpu")):
        pytest.skip(f"torch has no oneDNN {dtype} prepacking here")
    gen = torch.Generator().manual_seed(rows)
    packed = PrepackedWeight.of(torch.randn(200, 96, generator=gen).to(dtype))
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    residual = torch.randn(rows, 200, generator=gen).to(dtype)
    pointwise = torch.ops.mkldnn._linear_pointwise
    got = linear(x, packed)
    assert got.shape == (rows, 200) and got.is_contiguous()
    assert torch.equal(got, pointwise(x, packed.blocked, None, "none", [], ""))
    added = linear_add(x, packed, residual)
    assert added.shape == (rows, 200) and added.is_contiguous()
    assert torch.equal(added, pointwise.binary(x, residual, packed.blocked, None, "add"))


def test_a_layer_builds_its_gemms_at_every_padded_row_count():
    """`build_blocked_gemms` runs a layer's four GEMMs at each row count past EXACT_ROWS that
    an iteration of up to max_rows tokens runs them at (what `LLMEngine.warm_up` does before
    serving), smallest first within its time budget, and nothing for weights without the
    blocked copy."""
    from neo_engine.layers import EXACT_ROWS, blocked_rows, build_blocked_gemms
    from neo_engine.weights import LayerWeights, PrepackedWeight, can_prepack

    if not can_prepack(torch.float32, torch.device("cpu")):
        pytest.skip("torch has no oneDNN prepacking here")

    def layer(pack):
        w = (lambda o, i: PrepackedWeight.of(torch.randn(o, i))) if pack else torch.randn
        return LayerWeights(
            torch.ones(32), w(48, 32), w(32, 32), torch.ones(32), w(80, 32), w(32, 40)
        )

    expected = len({blocked_rows(m) for m in range(EXACT_ROWS + 1, 301)})
    assert build_blocked_gemms(layer(True), 300) == (expected, expected) == (35, 35)
    assert build_blocked_gemms(layer(True), 300, budget_s=0.0) == (1, 35)  # then out of time
    assert build_blocked_gemms(layer(True), EXACT_ROWS) == (0, 0)
    assert build_blocked_gemms(layer(False), 300) == (0, 0)
