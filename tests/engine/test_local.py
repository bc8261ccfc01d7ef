"""What benchmark results record about where and from which code they ran."""

from __future__ import annotations

from neo_engine.local import machine_summary


def test_results_record_the_cpu_and_the_code_they_ran():
    summary = machine_summary()
    assert {"cpu", "cpu_features", "threads", "torch", "commit"} <= set(summary)
    commit = summary["commit"]
    assert commit == "unknown" or len(commit.removesuffix("+dirty")) == 40
