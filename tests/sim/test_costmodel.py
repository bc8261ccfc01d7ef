import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.errors import NeoError
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS
from neo_sim.profiled import Lookup, ProfiledCostModel
from tests.sim.conftest import SMALL_GRIDS

sizes = st.integers(min_value=1, max_value=200_000)


@settings(max_examples=60, deadline=None)
@given(a=sizes, b=sizes, batch=st.integers(1, 256))
def test_roofline_is_monotone_in_size(t4_llama2, a, b, batch):
    lo, hi = sorted((a, b))
    c = t4_llama2
    assert c.linear(lo) <= c.linear(hi)
    assert c.prefill_attn(lo) <= c.prefill_attn(hi)
    assert c.gpu_decode_attn(batch, lo) <= c.gpu_decode_attn(batch, hi)
    assert c.cpu_decode_attn(batch, lo) <= c.cpu_decode_attn(batch, hi)
    assert c.h2d(lo) <= c.h2d(hi) and c.d2h(lo) <= c.d2h(hi)
    assert c.lm_head(lo) <= c.lm_head(hi)


@pytest.mark.parametrize("hw", ["t4", "a10g-g5.16xlarge", "h100"])
def test_roofline_never_beats_the_datasheet(hw):
    model, spec = MODELS["llama-3-8b"], HW[hw]
    c = RooflineCostModel(model, spec)
    for n in (1, 64, 4096, 16384):
        flops = n * model.linear_flops_per_token_per_layer
        assert c.linear(n) >= flops / spec.gpu.peak_flops_per_s
        assert c.linear(n) >= model.linear_weight_bytes_per_layer / spec.gpu.hbm_bytes_per_s
    for tokens in (1024, 65536):
        kv = tokens * model.kv_bytes_per_token_per_layer
        assert c.cpu_decode_attn(8, tokens) >= kv / spec.cpu.mem_bytes_per_s
        assert c.gpu_decode_attn(8, tokens) >= kv / spec.gpu.hbm_bytes_per_s
    assert c.h2d(2**30) >= 2**30 / spec.pcie_h2d_bytes_per_s


def test_linear_is_weight_bound_small_and_compute_bound_large(t4_llama2):
    c = t4_llama2
    assert c.linear(16) == pytest.approx(c.linear(1), rel=0.05)  # flat: reading weights
    assert c.linear(16384) == pytest.approx(2 * c.linear(8192), rel=0.05)  # linear in tokens


def test_empty_work_costs_nothing(t4_llama2):
    c = t4_llama2
    assert c.linear(0) == c.prefill_attn(0) == c.gpu_decode_attn(0, 0) == 0.0
    assert c.cpu_decode_attn(0, 0) == c.h2d(0) == c.lm_head(0) == 0.0


def test_tensor_parallel_splits_gpu_work():
    one = RooflineCostModel(MODELS["llama-3-70b"], HW["h100"])
    eight = RooflineCostModel(MODELS["llama-3-70b"], HW["h100x8"])
    assert eight.linear(4096) < one.linear(4096) / 4
    assert eight.gpu_decode_attn(64, 100_000) < one.gpu_decode_attn(64, 100_000) / 4


def test_efficiencies_validated():
    with pytest.raises(NeoError):
        Efficiencies(gpu_gemm=1.5)


def test_profiled_interpolation_is_exact_on_grid(t4_profile):
    c = ProfiledCostModel(t4_profile)
    for n, t in zip(t4_profile.samples["linear"].xs, t4_profile.samples["linear"].seconds):
        assert c.explain("linear", n) == (pytest.approx(t, rel=1e-12), Lookup.INTERPOLATED)
    s = t4_profile.samples["cpu_decode_attn"]
    for i, b in enumerate(s.batch):
        for j, length in enumerate(s.context_len):
            value, how = c.explain("cpu_decode_attn", b, b * length)
            assert how == Lookup.INTERPOLATED
            assert value == pytest.approx(s.seconds[i][j], rel=1e-9)


def test_profiled_extrapolation_is_continuous_and_roofline_shaped(t4_profile, t4_llama2):
    c = ProfiledCostModel(t4_profile)
    top = SMALL_GRIDS["num_tokens"][-1]
    at_edge = c.linear(top)
    beyond, how = c.explain("linear", top * 1.0001)
    assert how == Lookup.EXTRAPOLATED
    assert beyond == pytest.approx(at_edge, rel=1e-3)
    # Far outside the grid the fit follows the roofline it was sampled from.
    assert c.linear(8 * top) == pytest.approx(t4_llama2.linear(8 * top), rel=0.02)
    assert c.cpu_decode_attn(512, 512 * 20000) == pytest.approx(
        t4_llama2.cpu_decode_attn(512, 512 * 20000), rel=0.02
    )


def test_profile_scales_to_another_model_by_flops_and_bytes(t4_profile):
    other = MODELS["llama-3-8b"]
    c = ProfiledCostModel(t4_profile, other)
    truth = RooflineCostModel(other, HW["t4"])
    assert c.explain("linear", 512)[1] == Lookup.SCALED
    for value, expected in [
        (c.linear(512), truth.linear(512)),
        (c.cpu_decode_attn(16, 16000), truth.cpu_decode_attn(16, 16000)),
        (c.gpu_decode_attn(16, 16000), truth.gpu_decode_attn(16, 16000)),
        (c.prefill_attn(2000), truth.prefill_attn(2000)),
    ]:
        assert value == pytest.approx(expected, rel=0.02)


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 300),
    first_context=st.integers(1, 40_000),
    count=st.integers(1, 400),
)
def test_a_steady_runs_attention_equals_one_lookup_per_iteration(
    t4_profile, batch, first_context, count
):
    """`gpu_decode_attn_run` walks the table instead of looking up each iteration: the
    values must be those lookups bit for bit, inside the grid, at its edges and beyond."""
    c = ProfiledCostModel(t4_profile)
    first_total = batch * first_context
    expected = [c.gpu_decode_attn(batch, first_total + k * batch) for k in range(count)]
    assert c.gpu_decode_attn_run(batch, first_total, count) == expected


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 300), contexts=st.lists(st.integers(1, 40_000), max_size=20))
def test_the_cpu_attention_pricer_equals_the_lookup(t4_profile, batch, contexts):
    """`cpu_decode_attn_at(batch)` (NEO's greedy step prices with it) binds a batch's rows and
    their per-cell differences once: its values must be `cpu_decode_attn`'s bit for bit,
    on grid points, between them, at the grid's edges and beyond."""
    c = ProfiledCostModel(t4_profile)
    table = c._tables["cpu_decode_attn"]
    on_grid = [round(y) for y in table.ys if y >= 1]
    pricer = c.cpu_decode_attn_at(batch)
    for context in [*contexts, *on_grid, 1]:
        assert pricer(batch * context) == c.cpu_decode_attn(batch, batch * context)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10.0, 300.0), min_size=1, max_size=50), st.floats(0.0, 40.0))
def test_walking_a_table_along_one_axis_equals_its_lookups(ys, x):
    from neo_sim.interp import Table2D

    table = Table2D(
        [1.0, 8.0, 32.0], [0.0, 16.0, 64.0, 256.0], [[1, 2, 4, 9], [2, 3, 7, 20], [5, 6, 9, 31]]
    )
    assert table.along_y(x, ys) == [table(x, y) for y in ys]
    assert table.along_y(x, sorted(ys)) == [table(x, y) for y in sorted(ys)]
