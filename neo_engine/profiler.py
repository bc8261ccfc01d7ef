"""`neo-profile`: measure this machine's operators into a profile, and check a profile.

    neo-profile --model dummy:small --quick            # -> profiles/local-cpu__small.json
    neo-profile --model llama-3-8b --device cuda --output profiles/h100__llama-3-8b.json
    neo-profile check profiles/local-cpu__small.json              # held-out error per operator
    neo-profile check profiles/local-cpu__small.json --model dummy:tiny   # another model

Measuring times the engine's real operators (see `neo_engine.opbench`) on grids that are
geometric in size (denser where curves bend), fits each operator's roofline-shaped curve
(`neo_sim.fitting`) and writes the profile `ProfiledCostModel` loads (`neo-sim --hardware
PROFILE.json`). `check` re-measures random points between the grid points (or on another
model, to test scaling by FLOPs and bytes) and prints the prediction error per operator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from neo_engine.config import LoadSettings
from neo_sim import __version__, settings
from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.derive import geometric_grid
from neo_sim.errors import NeoError
from neo_sim.model import ModelSpec, parse_model_arg
from neo_sim.profile import (
    Provenance,
    Samples1D,
    Samples2D,
    load_profile,
    make_profile,
    save_profile,
)
from neo_sim.profiled import ProfiledCostModel
from neo_sim.settings import check, setting


@dataclass(frozen=True)
class ProfileGrids:
    num_tokens: list[int]
    prompt_len: list[int]
    num_seqs: list[int]
    copy_bytes: list[int]
    batch: list[int]
    context_len: list[int]
    repeats: int


def dense_then_geometric(dense_to: int, step_to: int, step: int, high: int) -> list[int]:
    """Every size up to `dense_to`, every `step` up to `step_to`, then two per octave.

    GEMM time on a CPU BLAS (and tile quantisation on a GPU) jumps between neighbouring small
    sizes (multiples of 8 run much faster), so small sizes are sampled densely.
    """
    points = set(range(1, dense_to + 1)) | set(range(step, step_to + 1, step))
    points |= set(geometric_grid(step_to, high, 2))
    return sorted(points)


def grids_for(quick: bool) -> ProfileGrids:
    if quick:
        return ProfileGrids(
            dense_then_geometric(64, 256, 8, 1024),
            geometric_grid(16, 1024, 2),
            dense_then_geometric(16, 64, 8, 64),
            geometric_grid(4096, 2**26, 1),
            geometric_grid(1, 32, 1),
            geometric_grid(16, 1024, 1),
            3,
        )
    return ProfileGrids(
        dense_then_geometric(32, 512, 8, 8192),
        geometric_grid(16, 8192, 2),
        dense_then_geometric(16, 128, 8, 512),
        geometric_grid(4096, 2**30, 1),
        geometric_grid(1, 256, 1),
        geometric_grid(16, 16384, 1),
        5,
    )


def fit_memory(spec: ModelSpec, grids: ProfileGrids, budget_bytes: float) -> ProfileGrids:
    """Trim the decode grids so the largest (batch x context) KV of one layer fits the budget."""
    per_token = spec.kv_bytes_per_token_per_layer
    batch, context = list(grids.batch), list(grids.context_len)
    while len(context) > 2 and batch[-1] * context[-1] * per_token > budget_bytes:
        context.pop()
    while len(batch) > 2 and batch[-1] * context[-1] * per_token > budget_bytes:
        batch.pop()
    return ProfileGrids(
        grids.num_tokens,
        grids.prompt_len,
        grids.num_seqs,
        grids.copy_bytes,
        batch,
        context,
        grids.repeats,
    )


def machine_info(device: torch.device) -> dict:
    from neo_engine.local import cpu_name, host_memory_bytes

    info = {
        "cpu": cpu_name(),
        "cpu_count": torch.get_num_threads(),
        "platform": platform.platform(),
        "host_memory_gib": round(host_memory_bytes() / 2**30, 1),
        "torch": torch.__version__,
        "device": str(device),
        "hostname": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


# ---- measure ---------------------------------------------------------------------------------
def estimate_seconds(spec: ModelSpec, grids: ProfileGrids, hardware) -> float:
    """Up-front estimate of a run: the probed machine's roofline over every grid point."""
    eff = Efficiencies(1, 1, 1, 1, 1, 1, launch_s=1e-4)
    cost = RooflineCostModel(spec, hardware, eff)
    # In situ, every per-layer sample runs a whole small model (4 layers) and its LM head.
    layers = min(4, spec.num_layers)
    layer_ops = sum(cost.linear(n) for n in grids.num_tokens)
    layer_ops += sum(cost.prefill_attn([n]) + cost.linear(n) for n in grids.prompt_len)
    layer_ops += sum(
        cost.gpu_decode_attn(b * c, b) + cost.cpu_decode_attn(b, b * c) + 2 * cost.linear(b)
        for b in grids.batch
        for c in grids.context_len
    )
    samples = (
        len(grids.num_tokens)
        + len(grids.prompt_len)
        + 2 * len(grids.batch) * len(grids.context_len)
    )
    heads = sum(cost.lm_head(n) for n in grids.num_seqs) + samples * cost.lm_head(1)
    copies = sum(cost.h2d(n) + cost.d2h(n) for n in grids.copy_bytes)
    total = layers * layer_ops + heads + copies
    return (grids.repeats + 1) * total * 2.0  # x2: Python overhead, pool setup (per pass)


def measure(
    spec: ModelSpec,
    device: torch.device,
    grids: ProfileGrids,
    host_threads: int | None = None,
    passes: int = 3,
) -> tuple[dict, float]:
    bench = Benches(spec, device, grids.repeats, host_threads)
    jobs: list[tuple[str, tuple]] = []
    jobs += [("linear", (n,)) for n in grids.num_tokens]
    jobs += [("prefill_attn", (n,)) for n in grids.prompt_len]
    jobs += [("lm_head", (n,)) for n in grids.num_seqs]
    jobs += [("h2d", (n,)) for n in grids.copy_bytes] + [("d2h", (n,)) for n in grids.copy_bytes]
    jobs += [
        (op, (b, c))
        for op in ("gpu_decode_attn", "cpu_decode_attn")
        for b in grids.batch
        for c in grids.context_len
    ]
    # Several shuffled passes, median per point: a slow phase of a noisy machine then spreads
    # over all curves and all passes instead of bending one stretch of one curve.
    rng = random.Random(0)
    runs: dict[tuple[str, tuple], list[float]] = {}
    schedule = []
    for _ in range(passes):
        order = list(jobs)
        rng.shuffle(order)
        schedule += order
    for op, args in tqdm(schedule, unit="point", desc="profiling"):
        runs.setdefault((op, args), []).append(run_op(bench, op, args))
    results = {key: statistics.median(values) for key, values in runs.items()}
    launch = bench.time_launch()
    bench.close()
    samples = {
        op: Samples1D(tuple(float(x) for x in xs), tuple(results[(op, (x,))] for x in xs))
        for op, xs in (
            ("linear", grids.num_tokens),
            ("prefill_attn", grids.prompt_len),
            ("lm_head", grids.num_seqs),
            ("h2d", grids.copy_bytes),
            ("d2h", grids.copy_bytes),
        )
    }
    for op in ("gpu_decode_attn", "cpu_decode_attn"):
        samples[op] = Samples2D(
            tuple(float(b) for b in grids.batch),
            tuple(float(c) for c in grids.context_len),
            tuple(tuple(results[(op, (b, c))] for c in grids.context_len) for b in grids.batch),
        )
    return samples, launch


class Benches:
    """Per-layer operators timed in situ (the executor on synthetic plans); copies and the
    host hand-off timed in isolation."""

    def __init__(
        self, spec: ModelSpec, device: torch.device, repeats: int, host_threads: int | None = None
    ):
        from neo_engine.opbench import CopyBench, InSituBench

        self.in_situ = InSituBench(spec, device, repeats, host_threads=host_threads)
        self.copies = CopyBench(device, repeats)

    def time_launch(self) -> float:
        return self.copies.time_launch()

    def close(self) -> None:
        self.in_situ.close()
        self.copies.close()


def run_op(bench: Benches, op: str, args: tuple) -> float:
    if op == "h2d":
        return bench.copies.time_copy(args[0], to_device=True)
    if op == "d2h":
        return bench.copies.time_copy(args[0], to_device=False)
    return getattr(bench.in_situ, f"time_{op}")(*args)


def cmd_measure(run: ProfileSettings) -> int:
    from neo_engine.local import probe_hardware

    device = torch.device(run.load.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NeoError("--device cuda: torch sees no CUDA device")
    spec = run.load.model_spec()
    hardware = probe_hardware(device, getattr(torch, spec.dtype))
    budget = 0.25 * (
        hardware.gpu.memory_bytes if device.type == "cuda" else hardware.cpu.memory_bytes
    )
    grids = fit_memory(spec, grids_for(run.quick), budget)
    eta = estimate_seconds(spec, grids, hardware) * run.passes
    print(
        f"neo-profile: {spec.name} ({spec.dtype}, KV {spec.kv_dtype}) on {hardware.description}; "
        f"{'quick' if run.quick else 'full'} grids, {grids.repeats} repeats; "
        f"expected ~{max(1, round(eta / 60))} min"
    )
    started = time.perf_counter()
    samples, launch = measure(spec, device, grids, run.host_threads, run.passes)
    elapsed = time.perf_counter() - started
    machine = machine_info(device) | {
        "quick": run.quick,
        "repeats": grids.repeats,
        "passes": run.passes,
        "elapsed_s": round(elapsed, 1),
    }
    provenance = Provenance(
        "measured",
        datetime.date.today().isoformat(),
        f"neo-profile {__version__}",
        f"engine operators timed on {device}",
        (),
        machine,
    )
    output = Path(run.output) if run.output else None
    name = output.stem if output else f"local-{device.type}__{spec.name}"
    profile = make_profile(name, hardware, spec, provenance, samples, launch)
    path = save_profile(profile, output or Path("profiles") / f"{name}.json")
    print(f"wrote {path} in {elapsed:.0f} s; use it with: neo-sim run --hardware {path}")
    return 0


# ---- check -----------------------------------------------------------------------------------
def held_out_points(profile, op: str, count: int, rng: random.Random) -> list[tuple]:
    """Random sizes strictly between grid points (log-uniform over the measured range)."""
    s = profile.samples[op]

    def between(axis) -> float:
        lo, hi = math.log(axis[0]), math.log(axis[-1])
        while True:
            x = round(math.exp(rng.uniform(lo, hi)))
            if axis[0] < x < axis[-1] and x not in axis:
                return x

    if isinstance(s, Samples1D):
        return [(between(s.xs),) for _ in range(count)]
    return [(between(s.batch), between(s.context_len)) for _ in range(count)]


def grid_points(profile, op: str, count: int, rng: random.Random) -> list[tuple]:
    s = profile.samples[op]
    if isinstance(s, Samples1D):
        return [(x,) for x in rng.sample(list(s.xs), min(count, len(s.xs)))]
    pairs = [(b, c) for b in s.batch for c in s.context_len]
    return rng.sample(pairs, min(count, len(pairs)))


def cmd_check(args: CheckSettings) -> int:
    profile = load_profile(args.profile)
    device = torch.device(args.device)
    spec = profile.model
    if args.model:
        other = parse_model_arg(args.model).spec
        spec = other.with_dtype(profile.model.dtype, profile.model.kv_dtype)
    cost = ProfiledCostModel(profile, spec)
    bench = Benches(spec, device, args.repeats)
    rng = random.Random(args.seed)
    ops = ["linear", "prefill_attn", "gpu_decode_attn", "cpu_decode_attn", "lm_head", "h2d", "d2h"]
    jobs = [
        (op, p, "held-out") for op in ops for p in held_out_points(profile, op, args.points, rng)
    ]
    if not cost.scaled:  # the repeatability floor: grid points measured again
        jobs += [(op, p, "grid") for op in ops for p in grid_points(profile, op, args.points, rng)]
    measured_runs: dict[tuple, list[float]] = {}
    schedule = []
    for _ in range(args.passes):
        order = list(jobs)
        rng.shuffle(order)
        schedule += order
    for op, point, kind in tqdm(schedule, unit="point", desc="checking"):
        measured_runs.setdefault((op, point, kind), []).append(
            run_op(bench, op, tuple(int(v) for v in point))
        )
    errors: dict[tuple[str, str], list[float]] = {}
    for (op, point, kind), values in measured_runs.items():
        measured = statistics.median(values)
        size, batch = (point[0], 0.0) if len(point) == 1 else (point[0] * point[1], point[0])
        predicted = cost.explain(op, size, batch)[0]
        errors.setdefault((op, kind), []).append(abs(predicted - measured) / measured)
    bench.close()
    rows = []
    for op in ops:
        e = errors[(op, "held-out")]
        floor = errors.get((op, "grid"), [])
        rows.append(
            {
                "op": op,
                "points": len(e),
                "mape": sum(e) / len(e),
                "worst": max(e),
                "grid_mape": sum(floor) / len(floor) if floor else None,
            }
        )
    how = "scaled from " + profile.model.name if cost.scaled else "interpolated"
    print(
        f"neo-profile check: {profile.name} ({how}) for {spec.name} on {device}, "
        f"{args.points} held-out points per operator"
    )
    print(
        f"{'operator':17s} {'points':>6s} {'MAPE':>8s} {'worst':>8s}  "
        f"{'re-measured grid (noise floor)':>30s}"
    )
    for r in rows:
        floor = "-" if r["grid_mape"] is None else f"{100 * r['grid_mape']:.1f}%"
        print(
            f"{r['op']:17s} {r['points']:6d} {100 * r['mape']:7.1f}% {100 * r['worst']:7.1f}%  "
            f"{floor:>30s}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "profile": str(args.profile),
                    "model": spec.name,
                    "scaled": cost.scaled,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


# ---- entry -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileSettings:
    """What `neo-profile` measures, and how carefully."""

    load: LoadSettings
    quick: bool = setting(False, "small grids, 3 repeats (< 5 min with a small model on 2 cores)")
    output: str | None = setting(
        None, "profile JSON to write; unset: profiles/local-DEVICE__MODEL.json"
    )
    host_threads: int | None = setting(
        None, "threads of the host attention kernel; unset: torch's thread count", low=1
    )
    passes: int = setting(3, "shuffled passes over the grid; the median per point is kept", low=1)

    def __post_init__(self) -> None:
        check(self, "profile settings")


@dataclass(frozen=True)
class CheckSettings:
    """What `neo-profile check` re-measures."""

    profile: str = setting(help="the profile JSON to check")
    model: str | None = setting(
        None, "check another model than the profile's (scaling by FLOPs and bytes)"
    )
    device: str = setting("cpu", "device to measure on", choices=("cpu", "cuda"))
    points: int = setting(8, "held-out points per operator", low=1)
    repeats: int = setting(3, "timed repeats per point", low=1)
    passes: int = setting(3, "shuffled passes; the median per point is kept", low=1)
    seed: int = setting(0, "seed of the held-out points")
    json: str | None = setting(None, "also write the table as JSON to this file")

    def __post_init__(self) -> None:
        check(self, "check settings")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    measure_p = argparse.ArgumentParser(
        prog="neo-profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    settings.add_arguments(measure_p, ProfileSettings)
    check_p = argparse.ArgumentParser(
        prog="neo-profile check", description="re-measure held-out points of a profile"
    )
    settings.add_arguments(check_p, CheckSettings)
    return measure_p, check_p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    measure_p, check_p = build_parser()
    if argv and argv[0] == "check":  # the profile is positional, as the usage shows
        rest = argv[1:]
        if rest and not rest[0].startswith("-"):
            rest = ["--profile", *rest]
        args = check_p.parse_args(rest)
    else:
        args = measure_p.parse_args(argv)
    try:
        if argv and argv[0] == "check":
            run = settings.from_args(CheckSettings, args)
            torch.manual_seed(run.seed)
            return cmd_check(run)
        run = settings.from_args(ProfileSettings, args)
        torch.manual_seed(run.load.seed)
        return cmd_measure(run)
    except NeoError as exc:
        print(f"neo-profile: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
