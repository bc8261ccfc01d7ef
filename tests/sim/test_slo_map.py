"""experiments/slo_map.py: goodput ratios per cell, and which cells count."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.slo_map import cell_ratios, headroom_table, long_prompts_table, summary_table


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


def test_headroom_counts_the_requests_the_best_rival_serves_within_the_bound():
    """Per load: the best rival's share of all requests within the bound (goodput x run /
    requests), its run over the cell's shortest, and the judged policies' cells at >= 1.05x."""
    rows = _rows(
        {
            ("t4", "osc", "offline"): {"gpu-only": 1.0, "neo": 2.0, "apex": 1.5, "adaptive": 2.2},
            ("t4", "long", "offline"): {"gpu-only": 1.0, "neo": 0.5, "apex": 0.5, "adaptive": 1.0},
            ("t4", "osc", "50%"): {"gpu-only": 0.9, "neo": 0.9, "apex": 0.9, "adaptive": 0.9},
        }
    )
    rows["num_requests"] = 100
    # runs (s): neo 45 in the first cell, gpu-only 80 in the second, 100 in the third
    run = {("osc", "offline"): 45.0, ("long", "offline"): 80.0, ("osc", "50%"): 100.0}
    rows["duration_s"] = [run[(w, load)] for w, load in zip(rows.workload_name, rows.load)]
    rows.loc[(rows.workload_name == "long") & (rows.policy == "adaptive"), "duration_s"] = 64.0
    table = headroom_table(rows, cell_ratios(rows)).set_index("load")
    assert list(table.index) == ["offline", "50%"]  # the map's order
    offline = table.loc["offline"]
    assert offline["cells"] == 2
    # neo serves 2.0 x 45 = 90 of 100 in the first cell, gpu-only 1.0 x 80 = 80 in the second
    assert offline["best rival's requests within the bound: lowest share"] == pytest.approx(0.8)
    assert offline["cells where it serves >= 0.952 of them"] == 0
    assert offline["its run over the cell's shortest: longest"] == pytest.approx(80 / 64)
    assert offline["adaptive >= 1.05x"] == 1  # 2.2 / 2.0 in the first cell, 1.0 in the second
    assert table.loc["50%", "cells where it serves >= 0.952 of them"] == 0  # 0.9 x 100 / 100


def test_long_prompts_table_sets_adaptive_against_the_cells_best_rival():
    """Per load: the share of the longest-prompt quarter within the bound, adaptive against
    the rival with the best goodput in that cell (neo in the first, gpu-only in the second),
    and the cells where adaptive is more than 5 points below it."""
    rows = _rows(
        {
            ("t4", "osc", "offline"): {"gpu-only": 1.0, "neo": 2.0, "apex": 1.5, "adaptive": 2.2},
            ("t4", "long", "offline"): {"gpu-only": 1.0, "neo": 0.5, "apex": 0.5, "adaptive": 1.0},
        }
    )
    share = {
        ("osc", "neo"): 0.9,
        ("osc", "adaptive"): 0.5,
        ("long", "gpu-only"): 0.4,
        ("long", "adaptive"): 0.42,
    }
    rows["slo_met_share_long_prompts"] = [
        share.get((w, p), 0.0) for w, p in zip(rows.workload_name, rows.policy)
    ]
    table = long_prompts_table(rows, cell_ratios(rows)).set_index("load")
    assert table.loc["offline", "cells"] == 2
    assert table.loc["offline", "adaptive: median share"] == pytest.approx(0.46)
    assert table.loc["offline", "best rival: median share"] == pytest.approx(0.65)
    assert table.loc["offline", "cells 5+ points below the rival"] == 1
    assert table.loc["offline", "largest gap"] == pytest.approx(-0.4)
    assert table.loc["offline", "its cell"] == "t4, osc"
