"""Benchmark: `vllm bench serve` against neo-serve and against `vllm serve`, same arguments.

The serving-side comparison users make: the same checkpoint (SmolLM2-135M), one dtype
(--dtype, float32 by default), a context
of --max-model-len, served in turn by neo-serve (its defaults: policy neo, KV pools sized
from memory) and by vLLM's CPU backend (`vllm serve`, prefix caching off, as neo-serve
caches no prefixes), each with its own per-iteration budgets unless --max-batch-tokens /
--max-batch-size set them for both (`Budgets`), each then driven by the same `vllm bench
serve` command: the random
dataset, --num-prompts prompts of --input-len tokens, --output-len tokens each (ignore_eos),
all sent at once (request rate inf), so the figure is each server's throughput under a
backlog. By default both servers stay up and their bench runs alternate (A B B A ...: this
VM's speed drifts by tens of percent within minutes, and a drift then falls on both alike);
each server's CPU use while idle is measured first and recorded (an idle server that spins
would slow the other). `--order sequential` runs one server after the other instead. Each
server gets --repeats bench runs: the summary compares medians, and the median of the ratios
of runs made side by side.
Records each run's exit status and what `vllm bench serve` reports, with its own JSON
(NAME-I.json) beside the summary.

The vLLM venv W is the one of benchmarks/vs_vllm_cpu.py (with the metadata-only `vllm`
dist-info of benchmarks/serve_clients.py, so that the `vllm` command finds itself); both
its server and its client run with VLLM_TARGET_DEVICE=cpu.

Run: python -m benchmarks.serve_vs_vllm --vllm-venv W [--dtype bfloat16]
Writes benchmarks/results/serve_vs_vllm/ (float32; serve_vs_vllm_DTYPE/ else): summary.json,
neo-serve.json, vllm-serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import RESULTS, checkpoint_or_exit, reference_s, write_result
from benchmarks.serve_clients import DEFAULT_MODEL, run_client, vllm_bench_argv
from benchmarks.serve_load import free_port, start_server, wait_healthy
from benchmarks.vs_vllm_cpu import vllm_cpu_environment


@dataclass(frozen=True)
class Budgets:
    """Per-iteration scheduling budgets, when set given to both servers: tokens (vLLM's
    --max-num-batched-tokens, neo-serve's --max-batch-tokens) and sequences (--max-num-seqs,
    --max-batch-size); unset (None), each server keeps its own default (neo-serve
    max(max_model_len, 2,048) tokens and 256 sequences; `vllm serve` on a CPU 2,048 and 128,
    vllm-cpu 0.32.0's vllm/engine/arg_utils.py). The token budget sets how many prompts an iteration
    prefills, so with a backlog it moves the TTFT."""

    tokens: int | None = None
    seqs: int | None = None

    def vllm_args(self) -> list[str]:
        return [
            *(["--max-num-batched-tokens", str(self.tokens)] if self.tokens else []),
            *(["--max-num-seqs", str(self.seqs)] if self.seqs else []),
        ]

    def neo_args(self) -> str:
        return (f" --max-batch-tokens {self.tokens}" if self.tokens else "") + (
            f" --max-batch-size {self.seqs}" if self.seqs else ""
        )


def start_vllm(
    venv: Path, model: Path, dtype: str, max_model_len: int, env: dict, budgets: Budgets
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [
        str(venv / "bin" / "vllm"),
        "serve",
        str(model),
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        str(max_model_len),
        "--no-enable-prefix-caching",
        *budgets.vllm_args(),
    ]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, "vllm serve", timeout_s=900)  # its first start compiles
    return proc, base


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and all its descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(p, 0.0) for p in tree)


def idle_cpu_share(pids: dict[str, int], seconds: float = 10.0) -> dict[str, float]:
    """Cores each idle server (and its children) keeps busy over `seconds`: nonzero means it
    spins while idle, and would slow the other one down in an interleaved run."""
    time.sleep(2.0)  # past any spin-wait after start-up
    before = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {
        name: round((tree_cpu_s(pid) - before[name]) / seconds, 3) for name, pid in pids.items()
    }


def reported(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {
        "completed": data["completed"],
        "failed": data.get("failed", 0),
        "duration_s": data["duration"],
        "requests_per_s": data["request_throughput"],
        "output_tokens_per_s": data["output_throughput"],
        "ttft_ms_p50": data["median_ttft_ms"],
        "ttft_ms_mean": data["mean_ttft_ms"],
        "tpot_ms_p50": data["median_tpot_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-venv", type=Path, help="virtual env with vllm-cpu")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SmolLM2-135M directory")
    p.add_argument("--dtype", default="float32", help="compute dtype of both servers")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument(
        "--max-batch-tokens", type=int, help="tokens per iteration, both servers (`Budgets`)"
    )
    p.add_argument(
        "--max-batch-size", type=int, help="sequences per iteration, both servers (`Budgets`)"
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="bench runs per server (median)")
    p.add_argument(
        "--order",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="both servers up, runs alternating (default), or one server after the other",
    )
    p.add_argument(
        "--output", type=Path, help="result folder; unset: serve_vs_vllm[_DTYPE] in results"
    )
    args = p.parse_args(argv)
    if args.output is None:
        suffix = "" if args.dtype in ("float32", "fp32") else f"_{args.dtype}"
        args.output = RESULTS / f"serve_vs_vllm{suffix}"
    if args.vllm_venv is None or not (args.vllm_venv / "bin" / "vllm").exists():
        print("serve_vs_vllm: skipped: give --vllm-venv, a venv with vllm-cpu (see --help)")
        return 0
    args.model = checkpoint_or_exit(args.model, "serve_vs_vllm")
    args.output.mkdir(parents=True, exist_ok=True)
    env = vllm_cpu_environment()  # NEO_CPU_ISA, if set, holds both servers to it
    runs: list[dict] = []
    budgets = Budgets(args.max_batch_tokens, args.max_batch_size)
    servers = {
        "neo-serve": lambda: start_server(
            f"--model {args.model} --dtype {args.dtype} --max-model-len {args.max_model_len}"
            + budgets.neo_args()
        ),
        "vllm-serve": lambda: start_vllm(
            args.vllm_venv, args.model, args.dtype, args.max_model_len, env, budgets
        ),
    }
    reports: dict[str, list[dict]] = {name: [] for name in servers}

    def bench(name: str, base: str, i: int) -> None:
        label = f"{name}-{i + 1}"
        argv = vllm_bench_argv(
            args.vllm_venv,
            base,
            str(args.model),
            args.model,
            args.output,
            label,
            (args.input_len, args.output_len),
            args.num_prompts,
            "inf",
            "--ignore-eos",
            "--seed",
            "0",
        )
        result = run_client(f"vllm bench serve against {name}", argv, env, 1800)
        result |= {"server": name, "repeat": i + 1, "reference_loop_s": reference_s()}
        if result["rc"] == 0:
            result["reported"] = reported(args.output / f"{label}.json")
            reports[name].append(result["reported"])
            print(f"  {label}: {result['reported']}", flush=True)
        else:
            print(f"  {label}: rc {result['rc']}\n{result['output_tail']}", flush=True)
        runs.append(result)

    idle: dict[str, float] = {}
    if args.order == "interleaved":
        # Both servers up; bench runs alternate A B B A A B ..., so that a drift of the
        # VM's speed falls on both alike. Each server's CPU use while the other one runs
        # would bias this: it is measured idle first and recorded.
        procs = {}
        try:
            for name in ("vllm-serve", "neo-serve"):  # vLLM first: its KV is a fixed size
                print(f"serve_vs_vllm: starting {name} ...", flush=True)
                procs[name] = servers[name]()
            idle = idle_cpu_share({name: proc.pid for name, (proc, _) in procs.items()})
            print(f"serve_vs_vllm: idle CPU share (cores): {idle}", flush=True)
            names = list(procs)
            for i in range(args.repeats):
                for name in names if i % 2 == 0 else names[::-1]:
                    bench(name, procs[name][1], i)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(timeout=120)
    else:
        for name, start in servers.items():
            print(f"serve_vs_vllm: starting {name} ...", flush=True)
            proc, base = start()
            try:
                for i in range(args.repeats):
                    bench(name, base, i)
            finally:
                proc.terminate()
                proc.wait(timeout=120)
    medians = {
        name: {
            key: statistics.median(r[key] for r in done)
            for key in ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_mean", "tpot_ms_p50")
        }
        for name, done in reports.items()
        if done
    }
    paired = [
        n["output_tokens_per_s"] / v["output_tokens_per_s"]
        for n, v in zip(reports["neo-serve"], reports["vllm-serve"])
    ]
    ratio = None
    if len(medians) == 2:
        ratio = (
            medians["neo-serve"]["output_tokens_per_s"]
            / medians["vllm-serve"]["output_tokens_per_s"]
        )
    write_result(
        args.output / "summary.json",
        "serve_vs_vllm",
        model=args.model.name,
        dtype=args.dtype,
        workload={
            "num_prompts": args.num_prompts,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "request_rate": "inf",
        },
        budgets=asdict(budgets),
        repeats=args.repeats,
        order=args.order,
        idle_cpu_share=idle,
        runs=runs,
        medians=medians,
        neo_over_vllm_output_tokens_per_s=ratio,
        paired_ratios=paired,
        median_paired_ratio=statistics.median(paired) if paired else None,
    )
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
