"""benchmarks.scheduler_cost_across_commits: rows paired across commits by what they plan,
ratios round by round, a projection refused for a file of another commit, and a whole run
of two worktrees."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from benchmarks import scheduler_cost_across_commits as across


def _row(policy: str, ms: float, *, tpot: float | None = None, ttft: float | None = None) -> dict:
    return {
        "hardware": "h100",
        "policy": policy,
        "slo_tpot_s": tpot,
        "slo_ttft_s": ttft,
        "scheduler_ms_per_step": ms,
        "scheduler_share": ms / 20.0,
        "iteration_ms_mean": 20.0,
        "iterations": 1000,
    }


def test_rows_pair_by_host_policy_and_slo_kind_not_by_the_bounds_value():
    base = [[_row("adaptive", 0.2, tpot=0.05), _row("adaptive", 0.1)]] * 2
    head = [
        [_row("adaptive", 0.1, tpot=0.06), _row("adaptive", 0.1), _row("apex", 0.1)],
        [_row("adaptive", 0.15, tpot=0.06), _row("adaptive", 0.05), _row("apex", 0.1)],
    ]
    rows = {(r["policy"], r["slo"]): r for r in across.paired_ratios(base, head)}
    assert set(rows) == {("adaptive", "tpot"), ("adaptive", None)}  # apex: not at base
    assert rows["adaptive", "tpot"]["ratio_per_round"] == pytest.approx([0.5, 0.75])
    assert rows["adaptive", "tpot"]["ratio_median"] == pytest.approx(0.625)
    assert rows["adaptive", None]["ratio_median"] == pytest.approx(0.75)


def test_projection_scales_the_files_step_time_over_heads_iteration():
    ratios = across.paired_ratios([[_row("neo", 0.2)]], [[_row("neo", 0.1)]])
    measured = {"machine": {"commit": "abc123def"}, "runs": [_row("neo", 0.4)]}
    (row,) = across.project(measured, "abc123def", ratios)
    assert row["measured_share"] == pytest.approx(0.02)
    assert row["projected_ms_per_step"] == pytest.approx(0.2)
    assert row["projected_share"] == pytest.approx(0.01)
    with pytest.raises(SystemExit, match="measured at abc123def"):
        across.project(measured, "0123456789", ratios)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_of_head_against_itself_writes_both_commits_rows(tmp_path):
    inside = subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=across.REPO, capture_output=True
    )
    if inside.returncode != 0:
        pytest.skip("not a git checkout")
    out = tmp_path / "across.json"
    argv = ["--base", "HEAD", "--hosts", "t4", "--rounds", "2", "--requests", "8"]
    assert across.main([*argv, "--repeats", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["commits"]["base"] == result["commits"]["head"]
    assert {r["policy"] for r in result["rows"]} >= {"gpu-only", "neo", "apex", "adaptive"}
    assert all(len(r["ratio_per_round"]) == 2 for r in result["rows"])
    assert all(r["base_iterations"] == r["head_iterations"] for r in result["rows"])
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=across.REPO, capture_output=True, text=True
    ).stdout
    assert "neo-across-commits-" not in worktrees  # removed after the run


def test_bad_arguments_are_refused_before_any_run(capsys):
    with pytest.raises(SystemExit):
        across.main(["--base", "no-such-commit-xyz"])
    with pytest.raises(SystemExit):
        across.main(["--base", "HEAD", "--hosts", "v100"])
    with pytest.raises(SystemExit):
        across.main(["--base", "HEAD", "--rounds", "0"])
    assert "no-such-commit-xyz" in capsys.readouterr().err
