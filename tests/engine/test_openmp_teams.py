"""`benchmarks.openmp_teams` runs end to end and writes its result (a short smoke run of the
kernels' case; the committed result, with the engine's case, took ~2.5 minutes)."""

from __future__ import annotations

import json


def test_openmp_teams_writes_both_cases_side_by_side(tmp_path):
    from benchmarks.openmp_teams import main

    out = tmp_path / "teams.json"
    argv = ["--pairs", "1", "--kinds", "kernels", "--iterations", "50", "--output", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "openmp_teams" and result["machine"]["cpu"]
    (row,) = result["rows"]
    assert row["case"] == "kernels" and row["metric"] == "us_per_iteration"
    assert row["one_team"] > 0 and row["two_teams"] > 0
    assert row["ratio"] == row["two_teams"] / row["one_team"]
    assert [len(row["runs"][case]) for case in ("one team", "two teams")] == [1, 1]
