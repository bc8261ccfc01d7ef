"""The neo_engine-vs-vLLM benchmark's own logic (vLLM itself is not needed here)."""

from __future__ import annotations

import sys

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


def test_a_missing_checkpoint_ends_the_run_saying_how_to_make_one(tmp_path, monkeypatch):
    """The default checkpoint is converted where it is missing (`benchmarks.SMOLLM2`, what a
    new user's first run needs); another directory that holds none ends the run, naming it."""
    import benchmarks

    converted = []
    monkeypatch.setattr(benchmarks, "smollm2_checkpoint", lambda: converted.append(1) or "made")
    assert benchmarks.checkpoint_or_exit(benchmarks.SMOLLM2, "vs_vllm_cpu") == "made"
    assert converted == [1]
    with pytest.raises(SystemExit, match=r"no checkpoint at .*neo_engine.convert --output DIR"):
        main(["--vllm-python", sys.executable, "--model", str(tmp_path / "none")])
    from benchmarks.serve_vs_vllm import main as serve_main

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").touch()  # past the venv check, before any server starts
    with pytest.raises(SystemExit, match=r"serve_vs_vllm: no checkpoint at"):
        serve_main(["--vllm-venv", str(venv), "--model", str(tmp_path / "none")])
    assert converted == [1]


def test_the_serving_comparison_skips_without_a_vllm_venv(capsys, tmp_path):
    from benchmarks.serve_vs_vllm import main as serve_main

    assert serve_main(["--vllm-venv", str(tmp_path)]) == 0
    assert "skipped: give --vllm-venv" in capsys.readouterr().out


# A stand-in for vLLM's offline API, as much of it as benchmarks/vllm_cpu_runner.py calls:
# every request generates token 7.
FAKE_VLLM = """
__version__ = "0.0+fake"


class SamplingParams:
    def __init__(self, temperature, max_tokens, ignore_eos):
        self.max_tokens = max_tokens


class _Completion:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class _RequestOutput:
    def __init__(self, token_ids):
        self.outputs = [_Completion(token_ids)]


class LLM:
    def __init__(self, **settings):
        pass

    def generate(self, prompts, params, use_tqdm):
        return [_RequestOutput([7] * p.max_tokens) for p in params]
"""


def test_interleaved_runs_alternate_and_pair_up(tmp_path, monkeypatch):
    """--interleave keeps vLLM's runner loaded (`--serve`) and alternates runs with
    neo_engine's, each after --settle-s idle: each workload gets --repeats runs of each engine
    and one paired ratio per round, the runner's outputs reach the agreement count, and
    neo_engine's runs agree."""
    import json

    from tests.engine.conftest import save_tiny_llama

    fake = tmp_path / "fake"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    save_tiny_llama(tmp_path / "model", num_kv_heads=2)
    out = tmp_path / "result.json"
    settles = []
    monkeypatch.setattr("benchmarks.vs_vllm_cpu.settle", settles.append)
    argv = ["--vllm-python", sys.executable, "--model", str(tmp_path / "model"), "--interleave"]
    argv += ["--batches", "1,2", "--no-trace", "--new-tokens", "3", "--repeats", "3"]
    argv += ["--settle-s", "0.25"]
    assert main([*argv, "--max-model-len", "256", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["interleaved"] and result["vllm"]["version"] == "0.0+fake"
    # an idle pause before every timed run of either engine: 2 workloads x 3 rounds x 2
    assert settles == [0.25] * 12 and result["settle_s"] == 0.25
    assert [w["requests"] for w in result["workloads"]] == [1, 2]
    for w in result["workloads"]:
        assert len(w["neo_engine_s"]) == len(w["vllm_s"]) == len(w["paired_ratios"]) == 3
        assert w["paired_ratios"][0] == pytest.approx(w["vllm_s"][0] / w["neo_engine_s"][0])
        assert w["neo_runs_agree"] and w["generated_tokens"] == 3 * w["requests"]
        # neo_engine's tokens come from a random model: all 7s would be a coincidence.
        assert w["identical_outputs"] == 0 and w["agreeing_share"] < 1
