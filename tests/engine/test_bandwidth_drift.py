"""`benchmarks.bandwidth_drift` runs end to end and writes its result (a one-block smoke run on
the shipped profile; the committed result is a four-minute run on this machine's own)."""

from __future__ import annotations

import json


def test_bandwidth_drift_writes_blocks_and_correlations(tmp_path):
    from benchmarks.bandwidth_drift import main
    from neo_engine.fidelity import REPO
    from neo_engine.validate import SHIPPED_PROFILE

    out = tmp_path / "drift.json"
    argv = ["--seconds", "0.1", "--profile", str(REPO / SHIPPED_PROFILE), "--output", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "bandwidth_drift" and result["machine"]["cpu"]
    block = result["blocks"][0]
    assert block["read_gbs"] > 0 and block["reference_kernel_ms"] > 0
    assert block["measured_over_predicted"] > 0
    assert result["summary"]["blocks"] == len(result["blocks"]) >= 1
    assert result["summary"]["by_state"] == {}  # the shipped profile records no bandwidth
    if result["summary"]["blocks"] < 3:  # too few blocks for a correlation
        assert result["summary"]["correlation_with_inverse_read_gbs"] is None
