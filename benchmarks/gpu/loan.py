"""What one GPU loan measures, step by step (`benchmarks/gpu/run.sh` runs the steps in order).

    python -m benchmarks.gpu.loan env    --device cuda --out DIR   # DIR/env.json
    python -m benchmarks.gpu.loan micro  --device cuda --out DIR   # DIR/micro.json
    python -m benchmarks.gpu.loan derived --device cuda --out DIR --profile DIR/profile.json
    python -m benchmarks.gpu.loan engine --device cuda --out DIR --profile DIR/profile.json
    python -m benchmarks.gpu.loan summary --out DIR                # DIR/summary.md, printed

`micro`: the engine's device decode attention, its host decode attention (all host cores),
host<->device copies and a layer's projections and MLP, each against its physical limit (the
device's and the host's measured memory read bandwidth; PCIe from its specification; the bf16
tensor peak from the datasheet). `derived`: the measured profile against
the cost model the toolkit would have used without it (on CUDA the H200's datasheet peaks
times the efficiencies calibrated on A100/A40 measurements: a GPU the calibration never saw).
`engine`: the real engine, offline, on a Llama-3-8B-shaped model with random bf16 weights and a
device KV pool small enough that KV, not compute, bounds the batch (the regime NEO is for),
one run per policy on the same requests; beside each, neo-sim's prediction of the same run on
the profile `neo-profile` measured just before (`--profile`). `--device cpu` is the rehearsal:
the same steps on a tiny model on this machine's CPU, in under a minute
(tests/engine/test_gpu_loan.py runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineRun:
    """The KV-limited offline run: one workload, every policy, engine beside simulator."""

    model: str  # dummy:PRESET: random weights of that shape
    dtype: str
    num_requests: int
    input_len: int  # tokens per prompt (the workload spreads lengths +-10% around it)
    output_len: int  # tokens generated per request (ignore_eos)
    gpu_kv_requests: int  # requests whose whole context the device KV pool holds
    block_size: int
    policies: tuple[str, ...]

    @property
    def blocks_per_request(self) -> int:
        """KV blocks of the longest request (lengths reach 10% above their means)."""
        return math.ceil(1.1 * (self.input_len + self.output_len) / self.block_size)

    @property
    def gpu_kv_blocks(self) -> int:
        return self.gpu_kv_requests * self.blocks_per_request

    @property
    def cpu_kv_blocks(self) -> int:
        """Every request at once, with room to spare: the host pool never bounds the run."""
        return self.num_requests * (self.blocks_per_request + 1) + 16


@dataclass(frozen=True)
class MicroPoints:
    """The operator points the micro-benchmarks time: (batch, context) pairs."""

    model: str
    device_attention: tuple[tuple[int, int], ...]
    host_attention: tuple[tuple[int, int], ...]
    copy_bytes: int
    linear_tokens: tuple[int, ...]  # a layer's projections and MLP at these token counts


POLICIES = ("gpu-only", "neo", "apex", "adaptive")
ENGINE_RUNS = {
    # one H200, Llama-3-8B shape: the device pool holds 16 requests' contexts (~10K tokens)
    "cuda": EngineRun("dummy:llama-3-8b", "bfloat16", 64, 512, 128, 16, 16, POLICIES),
    # the rehearsal: a tiny model on this machine's CPU standing in for the GPU
    "cpu": EngineRun("dummy:tiny", "float32", 12, 32, 12, 3, 8, POLICIES),
}
MICRO = {
    "cuda": MicroPoints(
        "dummy:llama-3-8b",
        ((16, 1024), (64, 1024), (64, 4096)),
        ((16, 1024), (64, 2048)),
        2**28,
        (16, 256, 1024, 4096, 8192),
    ),
    "cpu": MicroPoints("dummy:tiny", ((4, 256),), ((4, 256),), 2**26, (16, 256)),
}


# ---- env -------------------------------------------------------------------------------------
def step_env(device: str, out: Path) -> dict:
    """What the machine is: Python, torch, CUDA, the GPU, host cores and CPU, compilers."""
    import torch

    from neo_sim.machine import this_machine

    info: dict = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "host_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host": this_machine(),
        "compilers": {name: shutil.which(name) for name in ("g++", "c++", "nvcc", "ninja")},
        "carried_wheels": os.environ.get("NEO_CARRIED_WHEELS", "none"),
    }
    for name in ("transformers", "numpy", "pandas", "scipy", "safetensors", "pytest"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
        }
    write(out / "env.json", info)
    return info


# ---- micro -----------------------------------------------------------------------------------
READ_PROBE_BYTES = {"cuda": 2**31, "cpu": 2**28}  # several times each side's caches


def read_gbs(device: str) -> float:
    """GB/s of summing a buffer several times the caches (all host threads on a CPU)."""
    import torch

    from neo_engine.local import read_bandwidth

    return read_bandwidth(torch.device(device), READ_PROBE_BYTES[device]) / 1e9


def step_micro(device: str, out: Path) -> dict:
    """Decode attention on the device and on the host, and copies both ways, each as GB/s
    against its physical limit (per-layer times read from the engine's executor in situ)."""
    import torch

    from neo_engine.config import LoadSettings
    from neo_engine.host_threads import host_work
    from neo_engine.opbench import CopyBench, InSituBench

    points = MICRO[device]
    spec = LoadSettings(points.model, device=device, dtype=ENGINE_RUNS[device].dtype).model_spec()
    kv_bytes = spec.kv_bytes_per_token_per_layer
    # the host's probe off this thread beside a GPU: it drives the executor, whose host worker
    # must be the only OpenMP team (neo_engine/host_threads.py)
    host_gbs = host_work(lambda: read_gbs("cpu"), device == "cuda")
    limits = {"device_read_gbs": read_gbs(device), "host_read_gbs": host_gbs}
    if device == "cuda":
        from neo_sim.hardware import H200_SXM, PCIE5_X16

        limits |= {
            "pcie_datasheet_gbs": PCIE5_X16 / 1e9,
            "hbm_datasheet_gbs": H200_SXM.hbm_bytes_per_s / 1e9,
            "bf16_datasheet_tflops": H200_SXM.peak_flops_per_s / 1e12,
        }
    bench = InSituBench(spec, torch.device(device), repeats=5)
    rows = []
    for where, pairs, timer, limit in (
        ("device", points.device_attention, bench.time_gpu_decode_attn, "device_read_gbs"),
        ("host", points.host_attention, bench.time_cpu_decode_attn, "host_read_gbs"),
    ):
        for batch, context in pairs:
            seconds = timer(batch, context)
            gbs = batch * context * kv_bytes / seconds / 1e9
            rows.append(
                {
                    "op": f"{where}_decode_attention",
                    "batch": batch,
                    "context": context,
                    "ms_per_layer": 1e3 * seconds,
                    "kv_gbs": gbs,
                    "of_limit": gbs / limits[limit],
                    "limit": limit,
                }
            )
            print(f"{where} decode attention {batch}x{context}: {gbs:.1f} GB/s of KV")
    for tokens in points.linear_tokens:
        seconds = bench.time_linear(tokens)
        tflops = spec.linear_flops_per_token_per_layer * tokens / seconds / 1e12
        row = {"op": "linear", "tokens": tokens, "ms_per_layer": 1e3 * seconds, "tflops": tflops}
        if device == "cuda":  # against the dense bf16 tensor peak (datasheet)
            row |= {"of_limit": tflops / limits["bf16_datasheet_tflops"]}
            row |= {"limit": "bf16_datasheet_tflops"}
        rows.append(row)
        print(f"linear, {tokens} tokens: {tflops:.2f} TFLOP/s")
    bench.close()
    copies = CopyBench(torch.device(device), repeats=10)
    for to_device in (True, False):
        seconds = copies.time_copy(points.copy_bytes, to_device)
        gbs = points.copy_bytes / seconds / 1e9
        limit = "pcie_datasheet_gbs" if device == "cuda" else "host_read_gbs"
        rows.append(
            {
                "op": "h2d" if to_device else "d2h",
                "bytes": points.copy_bytes,
                "ms": 1e3 * seconds,
                "gbs": gbs,
                "of_limit": gbs / limits[limit],
                "limit": limit,
            }
        )
        print(f"{'h2d' if to_device else 'd2h'} {points.copy_bytes >> 20} MiB: {gbs:.1f} GB/s")
    copies.close()
    result = {"model": spec.name, "dtype": spec.dtype, "limits": limits, "rows": rows}
    write(out / "micro.json", result)
    return result


# ---- derived ---------------------------------------------------------------------------------
def step_derived(device: str, out: Path, profile_path: Path) -> dict:
    """Per operator, the derived cost model's time over the measured one at every grid point
    of the profile: on CUDA the H200's datasheet peaks times the default (calibrated)
    efficiencies, PCIe Gen5 from its specification, the host as the profile probed it; on a
    CPU device (the rehearsal) the profile's own probed roofline."""
    import statistics

    from neo_sim.costmodel import Efficiencies, RooflineCostModel
    from neo_sim.operators import SAMPLED
    from neo_sim.profile import load_profile, sample_points

    profile = load_profile(profile_path)
    hardware = profile.hardware
    if device == "cuda":
        from neo_sim.hardware import H200_SXM, PCIE5_X16

        hardware = dataclasses.replace(
            hardware, gpu=H200_SXM, pcie_h2d_bytes_per_s=PCIE5_X16, pcie_d2h_bytes_per_s=PCIE5_X16
        )
        efficiencies, what = Efficiencies(), "H200 datasheet x calibrated efficiencies"
    else:
        efficiencies, what = Efficiencies.of_probed_rates(), "this machine's probed roofline"
    derived = RooflineCostModel(profile.model, hardware, efficiencies)
    rows = []
    for op in SAMPLED:
        ratios = [
            derived.evaluate(op.name, *op.from_axes(*point)) / seconds
            for point, seconds in sample_points(profile.samples[op.name])
            if seconds > 0
        ]
        rows.append(
            {
                "op": op.name,
                "points": len(ratios),
                "median_ratio": statistics.median(ratios),
                "mape": statistics.fmean(abs(r - 1) for r in ratios),
                "lowest_ratio": min(ratios),
                "highest_ratio": max(ratios),
            }
        )
        print(f"derived/measured {op.name}: median {rows[-1]['median_ratio']:.2f}x")
    result = {"derived": what, "model": profile.model.name, "rows": rows}
    write(out / "derived.json", result)
    return result


# ---- engine ----------------------------------------------------------------------------------
def step_engine(device: str, out: Path, profile: Path | None, budget_s: float) -> dict:
    """Every policy on the same KV-limited offline workload: the engine's measured tokens/s
    beside neo-sim's prediction on `profile` (without one, the engine decides with its quick
    probe of the machine and nothing is simulated). A policy whose run would not end within
    `budget_s` (judged by the longest run so far) is skipped, and one that fails is recorded
    with its error; the others still run. engine.json is rewritten after each policy, so a
    run stopped at its time limit keeps the policies it finished."""
    import torch

    from neo_sim.scheduler import SchedulerConfig
    from neo_sim.workload import WorkloadSettings, build_workload

    run = ENGINE_RUNS[device]
    requests = WorkloadSettings(
        num_requests=run.num_requests,
        rate=math.inf,
        input_len=run.input_len,
        output_len=run.output_len,
    )
    workload = build_workload(requests)
    scheduler = SchedulerConfig(
        num_gpu_blocks=run.gpu_kv_blocks,
        num_cpu_blocks=run.cpu_kv_blocks,
        block_size=run.block_size,
    )
    started = time.perf_counter()
    rows, skipped, failed = [], [], {}
    longest = 0.0
    for policy in run.policies:
        if time.perf_counter() - started + longest > budget_s:
            skipped.append(policy)
            print(f"engine: {policy} skipped (would end past the {budget_s:.0f} s budget)")
            continue
        began = time.perf_counter()
        try:
            row = engine_and_simulator(run, policy, device, workload, requests, scheduler, profile)
        except Exception as exc:  # one policy's failure is a finding, not the end of the loan
            failed[policy] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            continue
        finally:
            longest = max(longest, time.perf_counter() - began)
            if device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        write_engine_result(out, run, profile, rows, skipped, failed)
        predicted = (
            f"neo-sim {row['sim_tok_s']:.1f}, {100 * row['sim_error']:+.1f}%"
            if row["sim_tok_s"]
            else "not simulated: no measured profile"
        )
        print(
            f"engine: {policy}: {row['engine_tok_s']:.1f} tok/s ({predicted}), mean batch "
            f"{row['mean_batch']:.1f}, {row['host_decodes']} host decodes, {row['wall_s']:.1f} s"
        )
    return write_engine_result(out, run, profile, rows, skipped, failed)


def write_engine_result(
    out: Path, run: EngineRun, profile: Path | None, rows: list, skipped: list, failed: dict
) -> dict:
    """engine.json: the rows so far, each with its tokens/s over gpu-only's."""
    gpu_only = next((r["engine_tok_s"] for r in rows if r["policy"] == "gpu-only"), None)
    for r in rows:
        r["vs_gpu_only"] = r["engine_tok_s"] / gpu_only if gpu_only else None
    result = {
        "run": dataclasses.asdict(run)
        | {"gpu_kv_blocks": run.gpu_kv_blocks, "cpu_kv_blocks": run.cpu_kv_blocks},
        "profile": str(profile) if profile else None,
        "rows": rows,
        "skipped": skipped,
        "failed": failed,
    }
    write(out / "engine.json", result)
    return result


def engine_and_simulator(
    run: EngineRun, policy: str, device: str, workload, requests, scheduler, profile: Path | None
) -> dict:
    """One policy: the engine's offline run, then neo-sim's on the same requests and pools
    (with a measured `profile`; without one, only the engine)."""
    from neo_engine.config import EngineConfig
    from neo_engine.engine import LLMEngine
    from neo_engine.fidelity import engine_metrics, warm_up
    from neo_engine.replay import replay
    from neo_sim.profile import load_profile
    from neo_sim.profiled import ProfiledCostModel
    from neo_sim.simulator import Simulation

    engine = LLMEngine(
        EngineConfig.of(
            run.model,
            device=device,
            dtype=run.dtype,
            policy=policy,
            profile=str(profile) if profile else None,
            max_model_len=2 * (run.input_len + run.output_len),
            scheduler=scheduler,
        )
    )
    try:
        warm_up(engine, requests)
        began = time.perf_counter()
        outputs = replay(engine, workload)
        wall = time.perf_counter() - began
        summary = engine_metrics(engine, workload, outputs).summary()
        plans = [it.plan for it in engine.iterations]
        config, spec = engine.scheduler_config, engine.spec
    finally:
        engine.close()
    sim_tok_s = sim_tpot_s = None
    if profile:
        cost = ProfiledCostModel(load_profile(profile), spec)
        shared = device == "cpu"  # a CPU device's lanes share its cores
        sim = Simulation(policy, config, cost, workload, lanes_share_compute=shared).run()
        sim_summary = sim.metrics.summary()
        sim_tok_s, sim_tpot_s = sim_summary["throughput_tok_s"], sim_summary["tpot_p50"]
    modes = [p.mode.value for p in plans]
    return {
        "policy": policy,
        "engine_tok_s": summary["throughput_tok_s"],
        "sim_tok_s": sim_tok_s,
        "sim_error": sim_tok_s / summary["throughput_tok_s"] - 1 if sim_tok_s else None,
        "engine_tpot_p50_s": summary["tpot_p50"],
        "sim_tpot_p50_s": sim_tpot_s,
        "completed": summary["completed"],
        "iterations": len(plans),
        "mean_batch": sum(p.num_seqs for p in plans) / max(1, len(plans)),
        "host_decodes": sum(len(p.cpu_decodes) for p in plans),
        "modes": {m: modes.count(m) for m in sorted(set(modes))},
        "wall_s": wall,
    }


# ---- summary ---------------------------------------------------------------------------------
def step_summary(out: Path) -> str:
    """summary.md from whatever the steps wrote (a missing step is said to be missing)."""

    def read(name: str) -> dict | None:
        path = out / name
        return json.loads(path.read_text()) if path.exists() else None

    lines = ["# GPU loan: summary", ""]
    env = read("env.json")
    if env:
        gpu = env.get("gpu", {}).get("name", "no GPU")
        lines += [
            f"- machine: {gpu}; {env['host_cores']} host cores ({env['host'].get('cpu')}); "
            f"torch {env['torch']} (CUDA {env['torch_cuda']}); Python {env['python']}",
            "",
        ]
    tests = out / "tests.log"
    if tests.exists():
        last = [line for line in tests.read_text().splitlines() if line.strip()][-1:]
        lines += [f"- correctness tests: {last[0] if last else 'no output'}", ""]
    micro = read("micro.json")
    if micro:
        lines += ["| operator | shape | rate | of limit | limit |", "|---|---|---:|---:|---|"]
        for r in micro["rows"]:
            if r["op"] == "linear":
                shape, rate = f"{r['tokens']} tokens", f"{r['tflops']:.2f} TFLOP/s"
            else:
                shape = (
                    f"{r['batch']}x{r['context']}" if "batch" in r else f"{r['bytes'] >> 20} MiB"
                )
                rate = f"{r.get('kv_gbs', r.get('gbs')):.1f} GB/s"
            share = f"{100 * r['of_limit']:.0f}%" if "of_limit" in r else "-"
            limit = f"{r['limit']} {micro['limits'][r['limit']]:.1f}" if "limit" in r else "-"
            lines.append(f"| {r['op']} | {shape} | {rate} | {share} | {limit} |")
        lines.append("")
    derived = read("derived.json")
    if derived:
        lines += [
            f"Measured profile against the derived one ({derived['derived']}), derived / "
            "measured time over the profile's grid points:",
            "",
            "| operator | points | median | lowest | highest | MAPE |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in derived["rows"]:
            lines.append(
                f"| {r['op']} | {r['points']} | {r['median_ratio']:.2f}x | "
                f"{r['lowest_ratio']:.2f}x | {r['highest_ratio']:.2f}x | {100 * r['mape']:.0f}% |"
            )
        lines.append("")
    engine = read("engine.json")
    if engine:
        run = engine["run"]
        lines += [
            f"Engine offline, {run['model']} ({run['dtype']}), {run['num_requests']} requests x "
            f"({run['input_len']} + {run['output_len']}) tokens, device KV {run['gpu_kv_blocks']} "
            f"blocks of {run['block_size']}:",
            "",
            "| policy | engine tok/s | vs gpu-only | neo-sim tok/s | sim error | mean batch | "
            "host decodes |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in engine["rows"]:
            vs = f"{r['vs_gpu_only']:.2f}x" if r["vs_gpu_only"] else "-"
            sim = (
                f"{r['sim_tok_s']:.1f} | {100 * r['sim_error']:+.1f}%"
                if r["sim_tok_s"]
                else "- | -"
            )
            lines.append(
                f"| {r['policy']} | {r['engine_tok_s']:.1f} | {vs} | {sim} | "
                f"{r['mean_batch']:.1f} | {r['host_decodes']} |"
            )
        for policy, error in engine.get("failed", {}).items():
            lines.append(f"\n{policy} FAILED: {error}")
        if engine["skipped"]:
            lines.append(f"\nskipped (time budget): {', '.join(engine['skipped'])}")
        lines.append("")
    lines += target_lines(tests.read_text() if tests.exists() else None, engine)
    for name in (
        "env.json",
        "tests.log",
        "micro.json",
        "profile.json",
        "derived.json",
        "engine.json",
    ):
        if not (out / name).exists():
            lines.append(f"- missing: {name} (its step failed or ran out of time; see run.log)")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return text


NEO_OVER_GPU_ONLY = 1.2  # issue 16's target: neo's tokens/s over gpu-only's, KV-limited
SIM_WITHIN = 0.10  # issue 16's target: neo-sim's throughput within this of the engine's


def target_lines(tests_log: str | None, engine: dict | None) -> list[str]:
    """Issue 16's targets, each met, missed or not measured, from what the steps wrote."""
    import re

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "MISSED")

    tests_ok = None
    if tests_log:
        counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|error)", tests_log))
        tests_ok = counts.get("passed", 0) > 0 and not (counts.get("failed") or counts.get("error"))
    rows = {r["policy"]: r for r in (engine or {}).get("rows", [])}
    neo = rows.get("neo", {}).get("vs_gpu_only")
    errors = [abs(r["sim_error"]) for r in rows.values() if r.get("sim_error") is not None]
    return [
        "Targets (issue 16):",
        "",
        f"- CUDA correctness tests all pass: {verdict(tests_ok)}",
        f"- neo >= {NEO_OVER_GPU_ONLY}x gpu-only tokens/s, KV-limited: "
        + (f"{neo:.2f}x, " if neo else "")
        + verdict(None if neo is None else neo >= NEO_OVER_GPU_ONLY),
        f"- neo-sim within {100 * SIM_WITHIN:.0f}% of the engine's throughput, every policy: "
        + (f"worst {100 * max(errors):.1f}%, " if errors else "")
        + verdict(None if not errors else max(errors) <= SIM_WITHIN),
        "",
    ]


def write(path: Path, data: dict) -> None:
    """`benchmarks.write_result`: the step's fields with the machine and commit they ran on."""
    from benchmarks import write_result

    write_result(path, f"gpu_loan_{path.stem}", **data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.loan", description=__doc__)
    p.add_argument("step", choices=("env", "micro", "derived", "engine", "summary"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--out", required=True, help="folder the step writes its file to")
    p.add_argument(
        "--profile", help="the measured profile (derived; engine: without it, no simulation)"
    )
    p.add_argument(
        "--budget-s", type=float, default=600.0, help="engine: seconds its runs may take in all"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and args.step != "summary":
        import torch

        if not torch.cuda.is_available():
            print("loan: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
    if args.step == "env":
        step_env(args.device, out)
    elif args.step == "micro":
        step_micro(args.device, out)
    elif args.step == "derived" and not args.profile:
        p.error("derived needs --profile")
    elif args.step == "derived":
        step_derived(args.device, out, Path(args.profile))
    elif args.step == "engine":
        profile = Path(args.profile) if args.profile else None
        step_engine(args.device, out, profile, args.budget_s)
    else:
        step_summary(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
