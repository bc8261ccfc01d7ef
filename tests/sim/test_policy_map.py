"""The policy map runs end to end in its quick form (the full one is a committed report)."""

from __future__ import annotations

import pandas as pd

from neo_sim.scheduler import POLICIES


def test_quick_policy_map_writes_its_report(tmp_path):
    from experiments.policy_map import QUICK, main

    assert main(["--quick", "--output", str(tmp_path), "--workers", "2"]) == 0
    cells = pd.read_csv(tmp_path / "cells.csv")
    expected_cells = len(QUICK["hosts"]) * len(QUICK["workloads"]) * (1 + len(QUICK["loads"]))
    assert len(cells) == expected_cells
    assert set(POLICIES) <= set(cells.columns) and (cells["gpu-only"] == 1).all()
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == expected_cells * len(POLICIES)
    assert {"max_token_gap_max_s", "goodput_req_s"} <= set(results.columns)
    report = (tmp_path / "report.md").read_text()
    assert "neo vs gpu-only" in report and "Every cell" in report
    assert (tmp_path / "heatmap.html").stat().st_size > 1000


def test_a_configuration_where_nothing_fits_is_a_row_not_a_crash():
    from experiments.common import run_or_error
    from neo_sim.runs import RunSpec

    spec = RunSpec.of(
        policy="gpu-only",
        hardware="t4",
        model="llama-2-7b",
        gpu_kv_blocks=2,
        input_len=1000,
        output_len=50,
        num_requests=3,
        rate=float("inf"),
    )
    row = run_or_error(spec)
    assert "can never fit" in row["error"] and row["rejected"] == 3
    assert row["policy"] == "gpu-only"
