"""experiments/slo_map.py: goodput ratios per cell, and which cells count."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.slo_map import cell_ratios, summary_table


def _rows(cells: dict[tuple[str, str, str], dict[str, float]], refused=()) -> pd.DataFrame:
    rows = []
    for key, goodput in cells.items():
        for policy, value in goodput.items():
            rows.append(
                {
                    "host": key[0],
                    "workload_name": key[1],
                    "load": key[2],
                    "policy": policy,
                    "goodput_req_s": value,
                    "slo_tpot_s": 0.2,
                    "rejected": 5 if key in refused and policy == "gpu-only" else 0,
                }
            )
    return pd.DataFrame(rows)


def test_ratios_leave_out_cells_no_rival_serves_and_cells_gpu_only_refused():
    rows = _rows(
        {
            ("t4", "osc", "offline"): {"gpu-only": 1.0, "neo": 2.0, "apex": 1.5, "adaptive": 2.2},
            ("t4", "osc", "50%"): {"gpu-only": 0.0, "neo": 0.0, "apex": 0.0, "adaptive": 0.3},
            ("t4", "long", "offline"): {"gpu-only": 1.0, "neo": 1.0, "apex": 1.0, "adaptive": 0.5},
        },
        refused={("t4", "long", "offline")},
    )
    table = cell_ratios(rows).set_index(["host", "workload_name", "load"])
    assert table.loc[("t4", "osc", "offline"), "adaptive / best rival"] == pytest.approx(1.1)
    assert table["adaptive / best rival"].isna().sum() == 2
    assert table.loc[("t4", "long", "offline"), "gpu_only_refused"] == 5
    summary = summary_table(table.reset_index()).set_index("load")
    assert summary.loc["all", "comparable"] == 1
    assert summary.loc["all", ">= 1.05"] == 1 and summary.loc["all", "worst"] == pytest.approx(1.1)
