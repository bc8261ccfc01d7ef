"""The GPU loan's script (benchmarks/gpu/run.sh), rehearsed on this machine's CPU: every step
runs and writes what the loan would bring back, so the script is tested before any loan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu.loan import POLICIES, step_derived, step_engine, step_summary, target_lines
from neo_sim.operators import SAMPLED

ROOT = Path(__file__).resolve().parents[2]


def test_the_rehearsal_runs_every_step_and_reports_every_policy(tmp_path):
    env = os.environ | {"PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "--device", "cpu", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = {p.name for p in tmp_path.iterdir()}
    expected = {"env.json", "tests.log", "micro.json", "profile.json", "derived.json"}
    expected |= {"engine.json"}
    assert expected | {"summary.md", "run.log"} <= written
    assert len(written) <= 8  # what the device tool brings back from $OUT
    assert " passed" in (tmp_path / "tests.log").read_text()
    micro = json.loads((tmp_path / "micro.json").read_text())
    ops = {r["op"] for r in micro["rows"]}
    assert ops == {"device_decode_attention", "host_decode_attention", "h2d", "d2h", "linear"}
    assert all(r["of_limit"] > 0 for r in micro["rows"] if r["op"] != "linear")
    assert all(r["tflops"] > 0 for r in micro["rows"] if r["op"] == "linear")
    derived = json.loads((tmp_path / "derived.json").read_text())
    assert {r["op"] for r in derived["rows"]} == {op.name for op in SAMPLED}
    assert all(r["points"] > 0 and r["median_ratio"] > 0 for r in derived["rows"])
    engine = json.loads((tmp_path / "engine.json").read_text())
    assert not engine["failed"] and not engine["skipped"]
    rows = {r["policy"]: r for r in engine["rows"]}
    assert set(rows) == set(POLICIES)
    for r in rows.values():
        assert r["completed"] == engine["run"]["num_requests"]
        assert r["engine_tok_s"] > 0 and r["sim_tok_s"] > 0
    # the device pool is small enough that the offloading policies decode on the host
    assert rows["gpu-only"]["host_decodes"] == 0 and rows["neo"]["host_decodes"] > 0
    assert "| neo |" in (tmp_path / "summary.md").read_text()


def test_the_summary_names_the_steps_that_left_nothing(tmp_path):
    (tmp_path / "tests.log").write_text("3 passed in 1.0s\n")
    text = step_summary(tmp_path)
    assert "correctness tests: 3 passed" in text
    for name in ("env.json", "micro.json", "profile.json", "derived.json", "engine.json"):
        assert f"missing: {name}" in text


def test_on_cuda_the_profile_is_set_against_the_h200_datasheet_and_calibrated_efficiencies(
    tmp_path,
):
    """The derived side of the loan's comparison needs no GPU: any measured profile can be put
    against the H200's datasheet roofline (here the shipped CPU profile, so only the shape of
    the result is checked)."""
    profile = ROOT / "profiles" / "cpu-2core-vm__small.json"
    result = step_derived("cuda", tmp_path, profile)
    assert result["derived"] == "H200 datasheet x calibrated efficiencies"
    ratios = {r["op"]: r["median_ratio"] for r in result["rows"]}
    # an H200 computes and reads memory far faster than a 2-core VM
    assert ratios["linear"] < 0.2 and ratios["gpu_decode_attn"] < 0.5


def test_without_a_profile_the_engine_comparison_still_runs_unsimulated(tmp_path):
    """If neo-profile fails or runs out of time on the loan, the engine's policies are still
    compared (deciding with the engine's quick probe), with nothing simulated beside them."""
    result = step_engine("cpu", tmp_path, None, budget_s=600)
    assert [r["policy"] for r in result["rows"]] == list(POLICIES)
    assert all(r["engine_tok_s"] > 0 and r["sim_tok_s"] is None for r in result["rows"])
    assert json.loads((tmp_path / "engine.json").read_text())["profile"] is None
    assert "| neo |" in step_summary(tmp_path)


def test_the_summary_says_which_of_issue_16s_targets_were_met():
    engine = {
        "rows": [
            {"policy": "gpu-only", "vs_gpu_only": 1.0, "sim_error": 0.04},
            {"policy": "neo", "vs_gpu_only": 1.31, "sim_error": -0.12},
        ]
    }
    lines = target_lines("== 40 passed, 2 failed in 9.1s ==", engine)
    assert "- CUDA correctness tests all pass: MISSED" in lines
    assert "- neo >= 1.2x gpu-only tokens/s, KV-limited: 1.31x, met" in lines
    assert any("worst 12.0%, MISSED" in line for line in lines)
    nothing = target_lines(None, None)
    assert sum("not measured" in line for line in nothing) == 3
    assert "- CUDA correctness tests all pass: met" in target_lines("28 passed in 7.2s", None)
