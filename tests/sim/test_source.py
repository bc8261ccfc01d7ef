"""Which code a result names: `neo_sim.source.source_commit` and the experiment reports."""

from __future__ import annotations

import subprocess

from experiments.common import write_report
from neo_sim import source
from neo_sim.source import source_commit


def test_the_checkout_names_its_commit():
    commit = source_commit()
    sha = commit.removesuffix("+dirty")
    assert commit == "unknown" or (len(sha) == 40 and int(sha, 16) >= 0)


def test_without_git_the_environment_names_the_commit(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(source.subprocess, "run", no_git)
    monkeypatch.setenv("NEO_SOURCE_COMMIT", "abc123")
    assert source_commit() == "abc123"
    monkeypatch.delenv("NEO_SOURCE_COMMIT")
    assert source_commit() == "unknown"


def test_outside_a_checkout_the_environment_names_the_commit(monkeypatch):
    def not_a_repository(*args, **kwargs):
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")

    monkeypatch.setattr(source.subprocess, "run", not_a_repository)
    monkeypatch.setenv("NEO_SOURCE_COMMIT", "abc123")
    assert source_commit() == "abc123"


def test_a_report_names_the_code_it_ran(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.common.source_commit", lambda: "f00d")
    path = tmp_path / "report.md"
    write_report(path, "A title", "body", "python -m experiments.x")
    header = path.read_text().splitlines()[2]
    assert "by `python -m experiments.x`" in header
    assert "code at commit f00d " in header
