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
    # The header's command reruns these runs: every option that changes them, not --workers.
    assert f"by `python -m experiments.policy_map --output {tmp_path} --quick` on" in report
    assert (tmp_path / "heatmap.html").stat().st_size > 1000


def test_a_report_names_the_options_its_runs_were_made_with():
    """The command in a report's header: each option set away from its default, in the
    parser's order, flags bare; options of speed (--workers, --executor) left out."""
    from experiments import common

    p = common.parser("test")
    p.add_argument("--slo-map", action="store_true")
    p.add_argument("--policy", default="adaptive")
    p.add_argument("--executor", default="process")
    assert common.command_line("x", p, p.parse_args([])) == "python -m experiments.x"
    args = p.parse_args(["--workers", "2", "--policy", "apex", "--seed", "3", "--slo-map"])
    assert common.command_line("x", p, args) == (
        "python -m experiments.x --seed 3 --slo-map --policy apex"
    )
    args = p.parse_args(["--executor", "dask", "--quick", "--output", "out"])
    assert common.command_line("x", p, args) == "python -m experiments.x --output out --quick"


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


def test_headroom_counts_cells_where_a_five_percent_win_is_possible():
    """Per load: how far apart gpu-only, neo and apex are, and where adaptive or any other
    policy beats the best of them by 5%; cells below capacity are named as the ones the
    arrivals decide, the overloaded ones counted as room."""
    from experiments.policy_map import headroom_section

    policies = list(POLICIES)
    cells = []
    for load, apex, adaptive, other in (
        ("offline", 2.0, 2.2, 1.0),  # rivals 1.0 .. 2.0, adaptive +10%: room, won
        ("offline", 1.0, 1.0, 1.06),  # rivals agree; another policy +6%
        ("50%", 1.01, 1.0, 1.0),  # rivals within 1%: the arrivals decide
        ("150%", 1.2, 1.1, 1.0),  # rivals 20% apart under load: room, not won
    ):
        row = dict.fromkeys(policies, other)
        row.update({"gpu-only": 1.0, "neo": 1.0, "apex": apex, "adaptive": adaptive})
        cells.append({"host": "h", "workload_name": "w", "load": load, **row})
    text = headroom_section(pd.DataFrame(cells))
    assert "a quarter of the cells: 1 of 4" in text
    assert "| offline | 2 | 2.000 | 1 | 1 | 1 |" in text
    assert "| 50% | 1 | 1.010 | 0 | 0 | 0 |" in text
    assert "| 150% | 1 | 1.200 | 1 | 0 | 0 |" in text
    # Below capacity (50%) the arrivals decide; overloaded (150%) cells count as room.
    assert "In the 1 cells whose Poisson load is below capacity" in text
    assert "within 1.0% of one another there" in text and "by 5% in 0 of those" in text
    assert (
        "would need 1 of the other 3 cells (offline and overloaded), where adaptive does so in 1."
        in text
    )
