"""experiments/pool_headroom.py: which map cells it re-runs, how it scales the pool, what it
reports."""

from __future__ import annotations

import math

import pandas as pd

from experiments.pool_headroom import map_cells, report, scaled_spec
from neo_sim.catalog import resolve_target
from neo_sim.runs import scheduler_config
from tests.sim.test_seed_spread import _map_rows


def test_map_cells_are_the_comparable_offline_and_overloaded_ones():
    rivals = {"gpu-only": 100.0, "neo": 110.0, "apex": 105.0}
    rows = _map_rows(
        {
            ("t4", "osc", "offline"): rivals | {"adaptive": 112.0},
            ("t4", "osc", "150%"): rivals | {"adaptive": 120.0},
            ("t4", "osc", "90%"): rivals | {"adaptive": 120.0},  # arrival-set: left out
            ("h100", "osc", "offline"): rivals | {"adaptive": 99.0},  # refused
        },
        refused={("h100", "osc", "offline")},
    )
    cells = map_cells(rows)
    assert list(zip(cells.host, cells.workload_name, cells.load)) == [
        ("t4", "osc", "150%"),
        ("t4", "osc", "offline"),
    ]
    assert cells.best_rival_tok_s.tolist() == [110.0, 110.0]
    assert cells.map_tok_s.tolist() == [120.0, 112.0]
    assert cells.rate.tolist() == [2.0, math.inf]


def test_scaled_spec_multiplies_the_resolved_gpu_pool_and_keeps_chunk_and_host_pool():
    """On g5.4xlarge adaptive adopts 1,024-token chunks (they enlarge the GPU pool);
    the scaled run pins those pools and that chunk, so only the GPU pool changes."""
    base = scaled_spec("g5.4xlarge", "1000/200", math.inf, 1.0, 0)
    bigger = scaled_spec("g5.4xlarge", "1000/200", math.inf, 1.1, 0)
    target = resolve_target(base.hardware, base.model)
    one, scaled = scheduler_config(base, target), scheduler_config(bigger, target)
    assert one.chunked_prefill_tokens == scaled.chunked_prefill_tokens == 1024
    assert scaled.num_gpu_blocks == math.floor(one.num_gpu_blocks * 1.1)
    assert scaled.num_cpu_blocks == one.num_cpu_blocks
    assert base.requests == bigger.requests  # the same arrivals


def test_report_counts_cells_and_names_those_that_cross_the_line_both_ways():
    cell = {"host": "g5.4xlarge", "load": "offline", "best_rival_tok_s": 100.0}
    rows = pd.DataFrame(
        [
            cell | {"workload_name": "up", "scale": 1.0, "ratio": 1.03, "throughput_tok_s": 103.0},
            cell | {"workload_name": "up", "scale": 1.1, "ratio": 1.07, "throughput_tok_s": 107.0},
            cell
            | {"workload_name": "down", "scale": 1.0, "ratio": 1.06, "throughput_tok_s": 106.0},
            cell
            | {"workload_name": "down", "scale": 1.1, "ratio": 1.01, "throughput_tok_s": 101.0},
        ]
    )
    rows["map_tok_s"] = [103.0, 103.0, 106.0, 106.0]
    text = report(rows, [1.0, 1.1], 1.0)
    assert "| x1 | 0 / 0 of 0 | 1 / 0 of 2 | 0 / 0 of 0 | 1 / 0 of 2 |" in text
    assert "| x1.1 | 0 / 0 of 0 | 1 / 0 of 2 | 0 / 0 of 0 | 1 / 0 of 2 |" in text
    assert (
        "At x1.1, of the cells, 1 rise to >= 1.05x from below: "
        "g5.4xlarge, up, offline (1.030x to 1.070x)" in text
    )
    assert "1 fall below 1.05x: g5.4xlarge, down, offline (1.060x to 1.010x)" in text
    assert "within 0.00e+00" in text
