"""The GPU calibration fit (experiments/gpu_calibration.py) on the measured A100/A40 times."""

from __future__ import annotations

import pytest

from experiments import gpu_calibration as cal

pytestmark = pytest.mark.skipif(
    not (cal.MEASUREMENTS / "a40").exists(), reason="shared GPU measurements not present"
)


@pytest.fixture(scope="module")
def data():
    return {gpu: cal.load(gpu) for gpu in cal.GPUS}


def test_work_of_a_gemm_matches_its_shape(data):
    """Llama-2-7B's gate+up GEMM at TP 1: 2 x tokens x 4096 x 22016 FLOPs."""
    d = data["a100"]
    row = d[(d["model"] == "Llama-2-7b-hf") & (d["op"] == "mlp_up_proj") & (d["tp"] == 1)]
    row = row[row["num_tokens"] == 1024].iloc[0]
    assert row["flops"] == 2 * 1024 * 4096 * 22016


def test_a_gpus_own_fit_beats_the_former_constant_roofline_on_sizes_it_did_not_see(data):
    before = cal.LinearFit(**cal.ROOFLINE_BEFORE)
    for gpu in cal.GPUS:
        fit = cal.fit_gpus({gpu: data[gpu]})
        assert 0 < fit.ec <= 1 and 0 < fit.em <= 1 and fit.p > 1
        held = {}
        for label, f in (("fit", fit), ("before", before)):
            layer = cal.layer_errors(data[gpu], cal.predict(f, data[gpu], gpu))
            held[label] = layer.loc[layer["held_out"], "error"].abs().quantile(0.9)
        assert held["fit"] < 0.8 * held["before"], (gpu, held)


def test_the_cost_models_defaults_are_the_committed_joint_fit_and_price_the_same_kernels():
    """Efficiencies' GPU defaults are experiments/results/gpu_calibration/fit.json's joint fit
    (to the 3 significant digits written there), and RooflineCostModel.linear on an A100
    prices exactly the fit's kernels with them."""
    import dataclasses
    import json

    import numpy as np
    import pandas as pd

    from neo_sim.costmodel import Efficiencies, RooflineCostModel
    from neo_sim.hardware import PRESETS, GPUSpec
    from neo_sim.model import PRESETS as MODELS
    from neo_sim.opwork import linear_kernels

    fit_path = cal.common.RESULTS / "gpu_calibration" / "fit.json"
    committed = json.loads(fit_path.read_text())
    both = committed["linear"]["both"]
    e = Efficiencies()
    pairs = {
        "ec": e.gpu_gemm,
        "em": e.gpu_memory,
        "p": e.gpu_gemm_sharpness,
        "ee": e.gpu_elementwise_memory,
        "t0": e.gpu_kernel_s,
        "t1": e.gpu_elementwise_kernel_s,
    }
    for key, default in pairs.items():
        assert default == pytest.approx(both[key], rel=5e-3), key
    nvlink = committed["all_reduce_a100_nvlink"]["2"]
    assert e.interconnect == pytest.approx(nvlink["link_efficiency"], rel=5e-3)
    assert e.collective_latency_s == pytest.approx(nvlink["latency_s"], rel=5e-3)

    spec = cal.GPUS["a100"]
    gpu = GPUSpec(
        "A100",
        80e9,
        spec["mem_bytes_per_s"],
        spec["peak_flops_per_s"],
        sources={k: "test" for k in ("memory_bytes", "hbm_bytes_per_s", "peak_flops_per_s")},
    )
    hardware = dataclasses.replace(PRESETS["h100"], gpu=gpu)
    model = MODELS["llama-2-7b"]
    cost = RooflineCostModel(model, hardware)
    fit = cal.LinearFit(**pairs)
    for n in (1, 37, 512, 4096):
        kernels = linear_kernels(model, n)
        rows = pd.DataFrame(
            {
                "gemm": [k.gemm for k in kernels],
                "flops": [k.flops for k in kernels],
                "bytes": [k.num_bytes for k in kernels],
            }
        )
        expected = float(np.sum(cal.predict(fit, rows, "a100")))
        assert cost.linear(n) == pytest.approx(expected, rel=1e-9)
