"""benchmarks/ci_time.py reads pytest's summary line as pytest writes it."""

from __future__ import annotations

from benchmarks.ci_time import pytest_summary


def test_the_quiet_summary_line_is_read():
    """The project's addopts run pytest with -q: a bare summary line."""
    output = "..........\n[100%]\n465 passed, 6 skipped in 312.40s (0:05:12)\n"
    assert pytest_summary(output) == {
        "counts": {"passed": 465, "skipped": 6},
        "pytest_s": 312.4,
    }


def test_counts_and_seconds_come_from_the_last_summary_line():
    output = (
        "tests/sim/test_a.py ....\n"
        "==== 2 failed, 465 passed, 6 skipped, 1 warning in 312.40s (0:05:12) ====\n"
    )
    assert pytest_summary(output) == {
        "counts": {"failed": 2, "passed": 465, "skipped": 6, "warning": 1},
        "pytest_s": 312.4,
    }


def test_an_output_without_a_summary_gives_nothing():
    assert pytest_summary("pip: error\n") == {}
