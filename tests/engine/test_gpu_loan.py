"""The GPU loan's script (benchmarks/gpu/run.sh), rehearsed on this machine's CPU: every step
runs and writes what the loan would bring back, so the script is tested before any loan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu.loan import POLICIES, step_summary

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
    expected = {"env.json", "tests.log", "micro.json", "profile.json", "engine.json"}
    assert expected | {"summary.md", "run.log"} <= written
    assert len(written) <= 8  # what the device tool brings back from $OUT
    assert " passed" in (tmp_path / "tests.log").read_text()
    micro = json.loads((tmp_path / "micro.json").read_text())
    ops = {r["op"] for r in micro["rows"]}
    assert ops == {"device_decode_attention", "host_decode_attention", "h2d", "d2h"}
    assert all(r["of_limit"] > 0 for r in micro["rows"])
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
    for name in ("env.json", "micro.json", "profile.json", "engine.json"):
        assert f"missing: {name}" in text
