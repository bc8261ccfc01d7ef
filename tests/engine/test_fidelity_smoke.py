"""`neo-sim validate --quick` runs end to end and writes its report (not its error bounds,
which depend on this machine's noise). It is given the shipped profile: on a machine without
one of its own, validate would first measure one (minutes; test_validate_profile.py covers
that choice)."""

from __future__ import annotations

import pandas as pd

from neo_engine.fidelity import REPO
from neo_engine.validate import SHIPPED_PROFILE
from neo_sim.cli import main


def test_validate_quick_writes_the_report(tmp_path):
    profile = str(REPO / SHIPPED_PROFILE)
    assert main(["validate", "--quick", "--profile", profile, "--output", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Summary metrics" in report and "Per iteration" in report
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["policy"]) == {"gpu-only", "neo"}
    assert {"throughput_req_s", "ttft_p50", "tpot_p50"} <= set(summary["metric"])
    assert summary["engine"].gt(0).all() and summary["neo-sim"].gt(0).all()
    iterations = pd.read_csv(tmp_path / "iterations.csv")
    assert iterations["measured_s"].gt(0).all() and iterations["timing_model_s"].gt(0).all()
    assert (tmp_path / "neo_iterations.html").exists()
