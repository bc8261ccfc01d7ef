"""The neo_engine-vs-vLLM benchmark's own logic (vLLM itself is not needed here)."""

from __future__ import annotations

import pytest

from benchmarks.vs_vllm_cpu import (
    TRACE,
    UNIFORM_BATCHES,
    agreement,
    main,
    workloads,
)


def test_agreement_counts_identical_outputs_and_the_agreeing_prefix():
    same, share = agreement([[1, 2, 3, 4], [5, 6], [7]], [[1, 2, 3, 4], [5, 9], [8]])
    assert same == 1
    assert share == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_workloads_are_the_stated_shapes_and_fit_the_context():
    jobs = workloads(vocab_size=1000, max_model_len=512, trace=TRACE)
    uniform = jobs[: len(UNIFORM_BATCHES)]
    assert [len(w["prompts"]) for w in uniform] == list(UNIFORM_BATCHES)
    assert all(len(p) == 128 for w in uniform for p in w["prompts"])
    assert all(n == 64 for w in uniform for n in w["max_tokens"])
    prefill = workloads(vocab_size=1000, max_model_len=512, trace=None, batches=(4,), new_tokens=2)
    assert prefill[0]["max_tokens"] == [2] * 4 and prefill[0]["name"] == "batch 4 x (128 + 2)"
    assert all(100 <= t < 1000 for w in jobs for p in w["prompts"] for t in p)
    if TRACE.exists():
        trace = jobs[-1]
        assert len(trace["prompts"]) == 64
        assert max(len(p) + n for p, n in zip(trace["prompts"], trace["max_tokens"])) <= 511
    assert workloads(1000, 512, TRACE)[0]["prompts"] == uniform[0]["prompts"]  # fixed seed


def test_chosen_batches_without_the_trace_and_the_busy_loop_checks_its_share():
    from benchmarks.busy_loop import main as busy_main

    jobs = workloads(1000, 512, None, batches=(64,))
    assert [w["name"] for w in jobs] == ["batch 64 x (128 + 64)"] and len(jobs[0]["prompts"]) == 64
    with pytest.raises(SystemExit, match="share"):
        busy_main(["--share", "1.5"])


def test_the_isa_cap_reaches_vllm_s_choice_of_kernels():
    """With NEO_CPU_ISA=avx2, benchmarks/isa_cap_site (on vLLM's PYTHONPATH) makes torch.cpu's
    CPUID checks, by which vLLM picks its kernel library, answer as an AVX2-only CPU's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = os.environ | {
        "NEO_CPU_ISA": "avx2",
        "PYTHONPATH": os.pathsep.join([str(root / "benchmarks" / "isa_cap_site"), str(root)]),
    }
    code = "from benchmarks.vllm_cpu_runner import kernels; print(kernels())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "_C_AVX2"


def test_without_a_vllm_python_it_skips_with_a_clear_message(capsys):
    assert main([]) == 0
    assert "skipped: give --vllm-python" in capsys.readouterr().out


def test_the_serving_comparison_skips_without_a_vllm_venv(capsys, tmp_path):
    from benchmarks.serve_vs_vllm import main as serve_main

    assert serve_main(["--vllm-venv", str(tmp_path)]) == 0
    assert "skipped: give --vllm-venv" in capsys.readouterr().out
