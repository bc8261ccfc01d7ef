import dataclasses

import pytest

from neo_sim.errors import NeoError
from neo_sim.hardware import ALIASES, PRESETS, GPUSpec, host_bandwidth, resolve_hardware

REQUIRED = [
    "t4",
    "a10g-g5.2xlarge",
    "a10g-g5.4xlarge",
    "a10g-g5.8xlarge",
    "a10g-g5.16xlarge",
    "h100",
    "h100x8",
]


def _numeric_fields(spec):
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            yield f.name


@pytest.mark.parametrize("name", sorted(set(REQUIRED) | set(PRESETS)))
def test_preset_exists_and_every_figure_has_a_source(name):
    hw = resolve_hardware(name)
    for part in (hw, hw.gpu, hw.cpu):
        for field_name in _numeric_fields(part):
            assert part.sources.get(field_name), f"{name}: {field_name} has no source"


def test_alias_resolves():
    assert resolve_hardware("a10g") is PRESETS[ALIASES["a10g"]]


def test_unsourced_figure_is_refused():
    with pytest.raises(NeoError, match="no source"):
        GPUSpec("x", 1.0, 2.0, 3.0, sources={"memory_bytes": "a", "hbm_bytes_per_s": "b"})


def test_negative_figure_is_refused():
    with pytest.raises(NeoError, match=">= 0"):
        GPUSpec(
            "x",
            -1.0,
            2.0,
            3.0,
            sources={"memory_bytes": "a", "hbm_bytes_per_s": "b", "peak_flops_per_s": "c"},
        )


def test_unknown_preset_lists_choices():
    with pytest.raises(NeoError, match="t4"):
        resolve_hardware("v100")


def test_host_bandwidth_grows_with_g5_size_and_is_capped_by_dram():
    sizes = ["a10g-g5.2xlarge", "a10g-g5.4xlarge", "a10g-g5.8xlarge", "a10g-g5.16xlarge"]
    bandwidths = [PRESETS[s].cpu.mem_bytes_per_s for s in sizes]
    # 4, 8, 16, 32 cores on 6-core CCDs: 1, 2, 3, 6 CCD links; the largest is DRAM-bound.
    assert bandwidths == sorted(set(bandwidths))
    peak = 8 * 3200e6 * 8
    assert bandwidths[-1] == pytest.approx(0.8 * peak)


def test_host_bandwidth_takes_least_ceiling():
    """Per-core figures are sustained estimates already; only the peaks are derated."""
    assert host_bandwidth(4, 10.0, 1000.0) == pytest.approx(40)
    assert host_bandwidth(100, 10.0, 50.0) == pytest.approx(0.8 * 50)
    assert host_bandwidth(16, 10.0, 1000.0, ccd_cores=8, ccd_bytes_per_s=30.0) == pytest.approx(
        0.8 * 60
    )


def test_round_trip_dict():
    hw = PRESETS["h100x8"]
    assert type(hw).from_dict(hw.to_dict()) == hw


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_simulates_a_small_run(name):
    """A new preset works end to end without further code (docs/architecture.md)."""
    from neo_sim.runs import RunSpec, execute

    spec = RunSpec.of(hardware=name, model="llama-2-7b", num_requests=8, output_len=4)
    assert execute(spec).summary["completed"] == 8
