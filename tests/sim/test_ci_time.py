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


def test_failure_lines_keep_each_failed_tests_header_and_what_it_asserted():
    from benchmarks.ci_time import failure_lines

    out = "\n".join(
        [
            "...F..",
            "=================================== FAILURES ===================================",
            "______________________ test_validate_quick_writes_the_report ______________________",
            "    def test_validate_quick_writes_the_report(tmp_path):",
            ">       assert abs(r['error']) < 0.01",
            "E       assert 0.02 < 0.01",
            "E        +  where 0.02 = abs(0.02)",
            "1 failed, 5 passed in 3.00s",
        ]
    )
    assert failure_lines(out) == [
        "______________________ test_validate_quick_writes_the_report ______________________",
        "E       assert 0.02 < 0.01",
        "E        +  where 0.02 = abs(0.02)",
    ]


def test_skip_reasons_keep_pytests_rs_lines_only():
    from benchmarks.ci_time import skip_reasons

    out = "\n".join(
        [
            "....s.",
            "=========================== short test summary info ============================",
            "SKIPPED [8] tests/engine/test_prefill_attention.py:77: no bf16 prefill kernel here",
            "SKIPPED [1] tests/sim/test_workload.py:14: shared traces not present",
            "5 passed, 9 skipped in 3.00s",
        ]
    )
    assert skip_reasons(out) == [
        "[8] tests/engine/test_prefill_attention.py:77: no bf16 prefill kernel here",
        "[1] tests/sim/test_workload.py:14: shared traces not present",
    ]
