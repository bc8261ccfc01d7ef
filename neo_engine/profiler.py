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

from neo_engine.bandwidth import BandwidthTrace, ReadProbe
from neo_engine.config import HOST_OVERLAP, LoadSettings
from neo_engine.host_threads import host_work
from neo_sim import __version__, settings
from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.errors import NeoError
from neo_sim.files import ensure_writable_dir
from neo_sim.grids import Grids, measured_grids, points, samples_on
from neo_sim.model import ModelSpec, parse_model_arg
from neo_sim.operators import SAMPLED, Operator
from neo_sim.profile import (
    FusedDecodeSaving,
    Provenance,
    Samples1D,
    load_profile,
    make_profile,
    sample_points,
    save_profile,
)
from neo_sim.profiled import ProfiledCostModel
from neo_sim.settings import check, setting
from neo_sim.source import source_commit

REPEATS = {True: 3, False: 5}  # timed repeats per point: quick, full
PROFILE_BANDWIDTH_EVERY_S = 2.0  # ~15 ms per sample: under 1% of the profiling time


def fit_memory(spec: ModelSpec, grids: Grids, budget_bytes: float) -> Grids:
    """Trim the decode grids so the largest (batch x context) KV of one layer fits the budget."""
    per_token = spec.kv_bytes_per_token_per_layer
    batch, context = list(grids["batch"]), list(grids["context_len"])
    while len(context) > 2 and batch[-1] * context[-1] * per_token > budget_bytes:
        context.pop()
    while len(batch) > 2 and batch[-1] * context[-1] * per_token > budget_bytes:
        batch.pop()
    return {**grids, "batch": tuple(batch), "context_len": tuple(context)}


def machine_info(device: torch.device) -> dict:
    """What the profile's times depend on: `neo_sim.machine.this_machine()` (CPU model,
    extensions, cores), the GPU's name on CUDA, and the rest for the record."""
    from neo_engine.local import host_memory_bytes
    from neo_sim.machine import this_machine

    info = this_machine() | {
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
def estimate_seconds(spec: ModelSpec, grids: Grids, repeats: int, hardware) -> float:
    """Up-front estimate of a run: the probed machine's roofline over every grid point."""
    eff = Efficiencies.of_probed_rates(launch_s=1e-4)
    cost = RooflineCostModel(spec, hardware, eff)
    # In situ, every per-layer sample runs a whole small model (4 layers) and its LM head.
    layers = min(4, spec.num_layers)
    total = 0.0
    for op in SAMPLED:
        for point in points(grids, op):
            seconds = cost.evaluate(op.name, *op.from_axes(*point))
            if op.per == "layer":
                seconds = layers * (seconds + cost.linear(int(point[0]))) + cost.lm_head(1)
            total += seconds
    return (repeats + 1) * total * 2.0  # x2: Python overhead, pool setup (per pass)


def measure(
    spec: ModelSpec,
    device: torch.device,
    grids: Grids,
    repeats: int,
    host_threads: int | None = None,
    passes: int = 3,
    host_overlap: bool | None = None,
    bandwidth: BandwidthTrace | None = None,
    prepack: bool = True,
) -> tuple[dict, float, FusedDecodeSaving | None]:
    """Time every sampled operator on every grid point; returns (samples, launch seconds,
    the fused decode layers' saving on the same bench, `opbench.measure_fused_decode_saving`).
    `bandwidth` is sampled between points (`BandwidthTrace.maybe_sample`) through the run;
    `prepack`: the GEMM weights as `LoadSettings.prepack_weights` has the engine keep them."""
    from neo_engine.opbench import measure_fused_decode_saving

    bench = Benches(spec, device, repeats, host_threads, host_overlap, prepack)
    jobs = [(op, point) for op in SAMPLED for point in points(grids, op)]
    # Several shuffled passes, median per point: a slow phase of a noisy machine then spreads
    # over all curves and all passes instead of bending one stretch of one curve.
    rng = random.Random(0)
    runs: dict[tuple[str, tuple], list[float]] = {}
    schedule = []
    for _ in range(passes):
        order = list(jobs)
        rng.shuffle(order)
        schedule += order
    for op, point in tqdm(schedule, unit="point", desc="profiling"):
        if bandwidth is not None:
            bandwidth.maybe_sample()
        runs.setdefault((op.name, point), []).append(bench.time(op, point))
    results = {key: statistics.median(values) for key, values in runs.items()}
    launch = bench.time_launch()
    fused_saving = measure_fused_decode_saving(bench.in_situ)
    bench.close()
    return samples_on(grids, lambda op, point: results[(op.name, point)]), launch, fused_saving


class Benches:
    """One timer per registered operator, on sample points (the profile's axes): per-layer
    operators in situ (the executor on synthetic plans), copies and the host hand-off in
    isolation."""

    def __init__(
        self,
        spec: ModelSpec,
        device: torch.device,
        repeats: int,
        host_threads: int | None = None,
        host_overlap: bool | None = None,
        prepack: bool = True,
    ):
        from neo_engine.opbench import CopyBench, InSituBench

        self.in_situ = InSituBench(
            spec,
            device,
            repeats,
            host_threads=host_threads,
            host_overlap=host_overlap,
            prepack=prepack,
        )
        self.copies = CopyBench(device, repeats)
        self.timers = {
            "linear": self.in_situ.time_linear,
            "prefill_attn": self.in_situ.time_prefill_attn,
            "gpu_decode_attn": self.in_situ.time_gpu_decode_attn,
            "cpu_decode_attn": self.in_situ.time_cpu_decode_attn,
            "lm_head": self.in_situ.time_lm_head,
            "h2d": lambda num_bytes: self.copies.time_copy(num_bytes, to_device=True),
            "d2h": lambda num_bytes: self.copies.time_copy(num_bytes, to_device=False),
        }
        missing = {op.name for op in SAMPLED} - set(self.timers)
        if missing:
            raise TypeError(f"no timer for registered operator(s) {sorted(missing)}")

    def time(self, op: Operator, point: tuple[float, ...]) -> float:
        """Seconds of `op` at a sample point (its axes' values)."""
        return self.timers[op.name](*(int(v) for v in point))

    def time_launch(self) -> float:
        return self.copies.time_launch()

    def close(self) -> None:
        self.in_situ.close()
        self.copies.close()


def cmd_measure(run: ProfileSettings) -> int:
    from neo_engine.local import probe_hardware

    device = torch.device(run.load.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NeoError("--device cuda: torch sees no CUDA device")
    spec = run.load.model_spec()
    output = Path(run.output) if run.output else None
    name = output.stem if output else f"local-{device.type}__{spec.name}"
    path = output or Path("profiles") / f"{name}.json"
    ensure_writable_dir(path.parent, f"the profile {path.name}")  # before minutes of measuring
    hardware = probe_hardware(device, getattr(torch, spec.dtype))
    budget = 0.25 * (
        hardware.gpu.memory_bytes if device.type == "cuda" else hardware.cpu.memory_bytes
    )
    grids = fit_memory(spec, measured_grids(run.quick), budget)
    repeats = REPEATS[run.quick]
    eta = estimate_seconds(spec, grids, repeats, hardware) * run.passes
    print(
        f"neo-profile: {spec.name} ({spec.dtype}, KV {spec.kv_dtype}) on {hardware.description}; "
        f"{'quick' if run.quick else 'full'} grids, {repeats} repeats; "
        f"expected ~{max(1, round(eta / 60))} min"
    )
    started = time.perf_counter()
    overlap = HOST_OVERLAP[run.host_overlap]
    # The memory read bandwidth through the measurement (neo_engine.bandwidth: small decode
    # steps follow it, and on the build VMs it moves between states that last tens of
    # seconds): the profile records the state its points were measured in, the median.
    beside_gpu = device.type == "cuda"  # host-side probes then run off the calling thread
    bandwidth = BandwidthTrace(
        time.perf_counter,
        every_s=PROFILE_BANDWIDTH_EVERY_S,
        probe=ReadProbe(beside_gpu=beside_gpu),
    )
    samples, launch, fused_saving = measure(
        spec,
        device,
        grids,
        repeats,
        run.host_threads,
        run.passes,
        overlap,
        bandwidth,
        run.load.prepack_weights,
    )
    bandwidth.sample()
    read_gbs = [gbs for _, gbs in bandwidth.samples]
    from neo_engine.cpu_kernel import engine_build
    from neo_engine.executor import host_lane
    from neo_engine.opbench import measure_host_overhead, reference_kernel

    host_overhead = measure_host_overhead(run.load, run.host_overlap)
    elapsed = time.perf_counter() - started

    machine = machine_info(device) | {
        # the host attention's times hold for the host lane as it ran (neo_engine.executor)
        "host_lane": host_lane(device.type == "cuda", run.host_threads, overlap),
        # and for the torch and host kernels they were timed with
        "engine_build": engine_build(run.load.prepack_weights),
        # this machine's speed now, for comparing later runs with (neo-sim validate's drift)
        "reference_kernel_ms": round(host_work(reference_kernel(spec), beside_gpu), 5),
        # and its memory read bandwidth while the points were measured: median, min, max
        "read_gbs": round(statistics.median(read_gbs), 2),
        "read_gbs_range": [round(min(read_gbs), 2), round(max(read_gbs), 2)],
        "quick": run.quick,
        "repeats": repeats,
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
    profile = make_profile(
        name, hardware, spec, provenance, samples, launch, host_overhead, fused_saving
    )
    path = save_profile(profile, path)
    print(f"the engine's own work per iteration: {host_overhead}")
    if fused_saving is not None:
        print(f"saved per layer where a decode-only iteration runs fused: {fused_saving}")
    print(f"wrote {path} in {elapsed:.0f} s; use it with: neo-sim run --hardware {path}")
    return 0


# ---- check -----------------------------------------------------------------------------------
def held_out_points(profile, op: Operator, count: int, rng: random.Random) -> list[tuple]:
    """Random sample points strictly between grid points (log-uniform over the measured range)."""
    s = profile.samples[op.name]
    axes = [s.xs] if isinstance(s, Samples1D) else [s.batch, s.context_len]

    def between(axis) -> float:
        lo, hi = math.log(axis[0]), math.log(axis[-1])
        while True:
            x = round(math.exp(rng.uniform(lo, hi)))
            if axis[0] < x < axis[-1] and x not in axis:
                return float(x)

    return [tuple(between(axis) for axis in axes) for _ in range(count)]


def grid_points(profile, op: Operator, count: int, rng: random.Random) -> list[tuple]:
    measured = [point for point, _ in sample_points(profile.samples[op.name])]
    return rng.sample(measured, min(count, len(measured)))


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
    jobs = [
        (op, p, "held-out")
        for op in SAMPLED
        for p in held_out_points(profile, op, args.points, rng)
    ]
    if not cost.scaled:  # the repeatability floor: grid points measured again
        jobs += [
            (op, p, "grid") for op in SAMPLED for p in grid_points(profile, op, args.points, rng)
        ]
    measured_runs: dict[tuple, list[float]] = {}
    schedule = []
    for _ in range(args.passes):
        order = list(jobs)
        rng.shuffle(order)
        schedule += order
    for op, point, kind in tqdm(schedule, unit="point", desc="checking"):
        measured_runs.setdefault((op, point, kind), []).append(bench.time(op, point))
    errors: dict[tuple[str, str], list[float]] = {}
    for (op, point, kind), values in measured_runs.items():
        measured = statistics.median(values)
        predicted = cost.explain(op.name, *op.from_axes(*point))[0]
        errors.setdefault((op.name, kind), []).append(abs(predicted - measured) / measured)
    bench.close()
    rows = []
    for op in SAMPLED:
        e = errors[(op.name, "held-out")]
        floor = errors.get((op.name, "grid"), [])
        rows.append(
            {
                "op": op.name,
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
                    "machine": machine_info(device) | {"commit": source_commit()},
                    "date": datetime.date.today().isoformat(),
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
        None,
        "threads of the host attention kernel; unset: as the engine's (torch's thread count, "
        "or half of it on a CPU device whose lanes overlap)",
        low=1,
    )
    host_overlap: str = setting(
        "auto",
        "run the host attention beside the device's work, as the engine does (see neo-serve "
        "--help); auto: yes with a GPU, no on a CPU device",
        choices=tuple(HOST_OVERLAP),
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
