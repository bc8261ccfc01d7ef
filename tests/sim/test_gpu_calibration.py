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


def test_a_gpus_own_fit_beats_the_constant_roofline_on_sizes_it_did_not_see(data):
    today = cal.LinearFit(**cal.ROOFLINE_TODAY)
    for gpu in cal.GPUS:
        fit = cal.fit_gpus({gpu: data[gpu]})
        assert 0 < fit.ec <= 1 and 0 < fit.em <= 1 and fit.p > 1
        held = {}
        for label, f in (("fit", fit), ("today", today)):
            layer = cal.layer_errors(data[gpu], cal.predict(f, data[gpu], gpu))
            held[label] = layer.loc[layer["held_out"], "error"].abs().quantile(0.9)
        assert held["fit"] < 0.8 * held["today"], (gpu, held)
