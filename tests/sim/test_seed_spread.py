"""experiments/seed_spread.py: which policy-map cells it re-runs, and what it reports."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from experiments.seed_spread import edge_cells, summarise


def _map_rows(cells: dict[tuple[str, str, str], dict[str, float]], refused=()) -> pd.DataFrame:
    rows = []
    for (host, workload, load), tput in cells.items():
        for policy, value in tput.items():
            rows.append(
                {
                    "host": host,
                    "workload_name": workload,
                    "load": load,
                    "policy": policy,
                    "throughput_tok_s": value,
                    "rate": math.inf if load == "offline" else 2.0,
                    "rejected": 3 if (host, workload, load) in refused else 0,
                }
            )
    return pd.DataFrame(rows)


def test_edge_cells_are_those_below_or_well_above_the_best_rival_and_comparable():
    rivals = {"gpu-only": 100.0, "neo": 110.0, "apex": 105.0}
    rows = _map_rows(
        {
            ("t4", "osc", "offline"): rivals | {"adaptive": 108.0},  # 0.982: below
            ("t4", "osc", "50%"): rivals | {"adaptive": 110.0},  # 1.0: neither
            ("t4", "long", "offline"): rivals | {"adaptive": 116.0},  # 1.055: above
            ("h100", "osc", "offline"): rivals | {"adaptive": 90.0},  # refused: not comparable
        },
        refused={("h100", "osc", "offline")},
    )
    cells = edge_cells(rows)
    assert list(zip(cells.host, cells.workload_name, cells.load)) == [
        ("t4", "long", "offline"),
        ("t4", "osc", "offline"),
    ]
    assert cells.map_ratio.tolist() == pytest.approx([116 / 110, 108 / 110])
    assert cells.rate.tolist() == [math.inf, math.inf]


def test_summary_gives_each_seeds_ratio_and_the_ratio_of_means():
    runs = []
    for seed, (neo, adaptive) in enumerate([(100.0, 95.0), (100.0, 105.0)]):
        for policy, value in {
            "gpu-only": 90.0,
            "neo": neo,
            "apex": 80.0,
            "adaptive": adaptive,
        }.items():
            runs.append(
                {
                    "host": "t4",
                    "workload_name": "osc",
                    "load": "offline",
                    "seed": seed,
                    "policy": policy,
                    "throughput_tok_s": value,
                }
            )
    (row,) = summarise(pd.DataFrame(runs)).to_dict("records")
    assert row["seed 0"] == pytest.approx(0.95) and row["min"] == pytest.approx(0.95)
    assert row["max"] == pytest.approx(1.05) and row["of means"] == pytest.approx(1.0)
    assert row["seeds"] == 2 and row["seed changes the run"]


def test_slo_map_edge_cells_compare_goodput_carry_the_bound_and_skip_cells_nobody_serves():
    rows = _map_rows(
        {
            ("t4", "osc", "offline"): {"gpu-only": 2.0, "neo": 1.0, "apex": 1.0, "adaptive": 1.9},
            ("g5", "osc", "offline"): {"gpu-only": 0.0, "neo": 0.0, "apex": 0.0, "adaptive": 0.0},
        }
    ).rename(columns={"throughput_tok_s": "goodput_req_s"})
    rows["slo_tpot_s"] = 0.25
    cells = edge_cells(rows, "goodput_req_s")
    assert list(zip(cells.host, cells.workload_name)) == [("t4", "osc")]  # 0.95: below
    assert cells.map_ratio.tolist() == pytest.approx([0.95])
    assert cells.slo_tpot_s.tolist() == [0.25]


def test_slo_map_spread_runs_every_policy_with_the_cells_bound(tmp_path):
    """--slo-map end to end on a one-cell map: each policy runs with the cell's TPOT bound
    (goodput by it alone) over the seeds, and the report compares goodput."""
    from experiments.seed_spread import main

    rows = _map_rows(
        {("t4", "osc", "offline"): {"gpu-only": 2.0, "neo": 1.0, "apex": 1.0, "adaptive": 1.5}}
    ).rename(columns={"throughput_tok_s": "goodput_req_s"})
    rows["slo_tpot_s"] = 0.3
    source = tmp_path / "map.csv"
    rows.to_csv(source, index=False)
    out = tmp_path / "out"
    argv = ["--slo-map", "--quick", "--seeds", "2", "--policy-map", str(source)]
    assert main([*argv, "--output", str(out), "--workers", "1"]) == 0
    runs = pd.read_csv(out / "results.csv")
    assert len(runs) == 2 * 4 and (runs.slo_tpot_s == 0.3).all()
    assert runs.slo_per_token_s.isna().all()
    assert "goodput within the cell's TPOT bound" in (out / "report.md").read_text()


def test_policy_option_judges_another_policy_on_its_own_edge_cells(tmp_path):
    """--policy adaptive-whole: the edge cells are that policy's (adaptive's ratio is not
    looked at), it runs beside the three rivals, and the report names it; a rival or an
    unknown name, or a policy the map never ran, is refused."""
    from experiments.seed_spread import main

    rivals = {"gpu-only": 100.0, "neo": 110.0, "apex": 105.0}
    rows = _map_rows(
        {
            ("t4", "osc", "offline"): rivals | {"adaptive": 100.0, "adaptive-whole": 120.0},
            ("t4", "long", "offline"): rivals | {"adaptive": 120.0, "adaptive-whole": 110.0},
        }
    )
    cells = edge_cells(rows, policy="adaptive-whole")
    assert list(zip(cells.host, cells.workload_name)) == [("t4", "osc")]
    source = tmp_path / "map.csv"
    rows.to_csv(source, index=False)
    out = tmp_path / "out"
    argv = ["--quick", "--seeds", "1", "--policy-map", str(source), "--workers", "1"]
    assert main([*argv, "--policy", "adaptive-whole", "--output", str(out)]) == 0
    runs = pd.read_csv(out / "results.csv")
    assert sorted(runs.policy) == ["adaptive-whole", "apex", "gpu-only", "neo"]
    assert "where adaptive-whole is below" in (out / "report.md").read_text()
    for bad in ("neo", "nope", "symmetric"):
        assert main([*argv, "--policy", bad, "--output", str(tmp_path / bad)]) == 2
