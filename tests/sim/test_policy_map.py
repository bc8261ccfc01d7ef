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


def _requests(rows):
    columns = ["request_id", "first_token_s", "finish_s", "output_len", "cpu_steps", "status"]
    return pd.DataFrame([(*r, "finished") for r in rows], columns=columns)


def test_the_request_that_ends_a_losing_run_is_named_with_its_tail():
    from experiments.policy_map import _last_request

    neo = _requests([(0, 1.0, 10.0, 50, 0), (1, 2.0, 20.0, 300, 40)])
    gpu_only = _requests([(0, 1.0, 12.0, 50, 0), (1, 5.0, 15.0, 300, 0)])
    row, why = _last_request(neo, gpu_only)
    assert row == "1 | 300 | 40 | 2.0 / 5.0 s | 20.0 / 15.0 s | 10.0 s |"
    assert "request 1 (300 output tokens, the longest output of the run)" in why
    assert "decoding alone for 10.0 s" in why and "by 10.0 s (under gpu-only by 12.0 s)" in why
    # It never ran on the host, or it ends no later than under gpu-only: no such sentence.
    assert _last_request(neo.assign(cpu_steps=0), gpu_only)[1] == ""
    assert _last_request(neo, gpu_only.assign(finish_s=[12.0, 25.0]))[1] == ""
