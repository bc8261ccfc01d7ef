"""Does neo-sim predict the real engine? Run both on the same arrivals and compare.

For each policy and load: (a) a profile of this machine (`profile_of_this_machine`), (b) the
real engine serving the workload in real time, logging every request and every iteration's
measured duration and lane timings, (c) neo-sim on the same arrivals with the same profile,
policy and KV limits, (d) side by side: throughput, TTFT/TPOT/E2E p50 and p90, per-iteration
time (the timing model applied to the engine's own plans, vs measured) and a two-sample KS test
of per-request latencies. Loads: offline (all at once) and overload (1.5x the engine's offline
throughput), where throughput is the system's, and unsaturated (the configured rate), where it
is the arrivals'. Writes fidelity.json (one row per policy, load and metric), CSVs, HTML plots
and a markdown report.

The engine on a CPU-only machine computes "GPU" and host attention on the same cores, so the
simulator's timing model is told that its GPU and CPU lanes share compute.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from neo_engine.bandwidth import (
    PROBE_BYTES,
    SAMPLE_EVERY_S,
    BandwidthTrace,
    ReadProbe,
    in_state,
)
from neo_engine.config import EngineConfig
from neo_engine.engine import LLMEngine
from neo_engine.opbench import reference_kernel
from neo_engine.replay import replay
from neo_engine.validate import SHIPPED_PROFILE, FidelitySettings, add_arguments
from neo_sim.bandwidth import at_bandwidth
from neo_sim.errors import NeoError
from neo_sim.files import ensure_writable_dir
from neo_sim.lanes import busy_by_lane
from neo_sim.latency import RequestRecord
from neo_sim.metrics import GapLog, IterationRecord, Metrics
from neo_sim.model import ModelSpec
from neo_sim.profile import Profile, load_profile
from neo_sim.profiled import ProfiledCostModel
from neo_sim.scheduler import make_policy
from neo_sim.settings import from_args
from neo_sim.simulator import Simulation
from neo_sim.timing import TimingModel
from neo_sim.workload import WorkloadSettings, build_workload, synthetic

REPO = Path(__file__).resolve().parent.parent
# The metrics compared per policy and load: fidelity.json's names -> summary keys.
COMPARED = {
    "throughput": "throughput_req_s",
    "ttft_p50": "ttft_p50",
    "ttft_p90": "ttft_p90",
    "tpot_p50": "tpot_p50",
    "tpot_p90": "tpot_p90",
    "e2e_p50": "e2e_p50",
    "e2e_p90": "e2e_p90",
}
OVERLOAD = 1.5  # the overload rate, as a multiple of the engine's offline throughput


def row(policy: str, load: str, metric: str, engine: float, sim: float) -> dict:
    """One line of fidelity.json: error = sim / engine - 1."""
    error = sim / engine - 1 if engine else float("nan")
    return {
        "policy": policy,
        "load": load,
        "metric": metric,
        "engine": engine,
        "sim": sim,
        "error": error,
    }


def metric_rows(policy: str, load: str, engine: dict, sim: dict) -> list[dict]:
    """One row per COMPARED metric, from the engine's and a simulation's summaries."""
    return [row(policy, load, metric, engine[key], sim[key]) for metric, key in COMPARED.items()]


def iteration_mape(measured: list[float], predicted: list[float]) -> float:
    """Mean absolute percentage error of predicted per-iteration times against measured."""
    actual = np.asarray(measured)
    return float((np.abs(np.asarray(predicted) - actual) / actual).mean())


def iteration_mape_row(
    policy: str, load: str, measured: list[float], predicted: list[float]
) -> dict:
    """fidelity.json's iteration_mape row: the mean times beside the MAPE (its error)."""
    return row(
        policy, load, "iteration_mape", float(np.mean(measured)), float(np.mean(predicted))
    ) | {"error": iteration_mape(measured, predicted)}


def engine_metrics(engine: LLMEngine, workload, outputs) -> Metrics:
    """Engine run -> the simulator's record types (arrival = the workload's arrival time)."""
    by_id = {o.request_id: o for o in outputs}
    records = []
    for spec in workload:
        r = RequestRecord(
            request_id=spec.request_id,
            arrival_s=spec.arrival_s,
            prompt_len=spec.prompt_len,
            output_len=spec.output_len,
        )
        out = by_id.get(spec.request_id)
        if out is not None:
            r.first_token_s, r.finish_s = out.first_token_s, out.finish_s
            r.num_tokens, r.status = len(out.token_ids), "finished"
            r.cpu_steps, r.gpu_steps = out.cpu_steps, out.gpu_steps
            r.max_host_wait_steps = out.max_host_wait_steps
        records.append(r)
    iterations = [
        IterationRecord.of(it.plan, it.start_s, it.duration_s, busy_by_lane(it.spans))
        for it in engine.iterations
    ]
    return Metrics.of(records, iterations, GapLog())  # the engine keeps no per-token times


def workload_engine(
    settings: FidelitySettings, policy: str, profile_path: Path, **config: Any
) -> LLMEngine:
    """An engine for the fidelity workload: its model, context length and KV pools, `policy`
    deciding with the profile at `profile_path`; `config`: other `EngineConfig` settings."""
    return LLMEngine(
        EngineConfig.of(
            settings.model,
            policy=policy,
            profile=str(profile_path),
            max_model_len=settings.max_model_len,
            scheduler=settings.scheduler,
            **config,
        )
    )


def warm_up(
    engine: LLMEngine, requests: WorkloadSettings, trace: BandwidthTrace | None = None
) -> None:
    """Two short requests (kernel load, allocator) and the GEMMs of every iteration size
    (`LLMEngine.warm_gemms`), then the iteration log on and the clock
    at zero: what a timed workload runs after. With a `trace`, its first sample is taken
    just before the clock starts (stamped 0), so that it delays no request."""
    warm = synthetic(2, math.inf, requests.input_len, 4, requests.seed + 1)
    replay(
        engine, [w.__class__(10**6 + w.request_id, 0.0, w.prompt_len, w.output_len) for w in warm]
    )
    engine.warm_gemms()  # as a server does before serving; the profile's points ran warm too
    engine.keep_iteration_log = True
    if trace:
        trace.sample(at=0.0)
    engine.reset_clock()


def run_policy(
    policy: str,
    load: str,
    rate: float,
    settings: FidelitySettings,
    profile_path: Path,
    out: Path,
    anchor: ProfileAnchor | None = None,
    probe: ReadProbe | None = None,
) -> dict:
    """One policy at one load (`rate` req/s, inf = all at once): the engine in real time, then
    neo-sim on the same arrivals; per-metric rows and the per-iteration comparison. With an
    `anchor`, the profile's operators are re-measured just before and after the engine run and
    neo-sim runs once more with the profile re-anchored to them (`anchored_rows`). The memory
    bandwidth is sampled through the engine run with `probe` (`bandwidth.BandwidthTrace`), and
    each iteration carries the bandwidth it ran at (`read_gbs`)."""
    s = settings
    factors_before = anchor.measure() if anchor else []
    workload = build_workload(dataclasses.replace(s.requests, rate=rate))
    engine = workload_engine(s, policy, profile_path)
    trace = BandwidthTrace(engine.now, probe=probe, pause=engine.pause_clock)
    warm_up(engine, s.requests, trace)
    started = time.perf_counter()
    outputs = replay(engine, workload, trace)
    wall = time.perf_counter() - started
    real = engine_metrics(engine, workload, outputs)
    plans = [it.plan for it in engine.iterations]
    starts = [it.start_s for it in engine.iterations]
    read_gbs = trace.at(starts)  # the state each ran in
    forward_s = [it.duration_s for it in engine.iterations]  # forward pass and sampling
    # A step's whole time: the forward pass and sampling, plus the engine's host work around
    # them (scheduling, detokenizing, bookkeeping), which a measured profile's host overhead
    # prices (an iteration of the timing model pays it). Predictions are compared with it.
    measured = [it.duration_s + it.host_s for it in engine.iterations]
    config = engine.scheduler_config
    dtype = f"{engine.spec.dtype} ({engine.config.load.dtype_reason()})"
    engine.close()
    factors = anchor.factors(factors_before + anchor.measure()) if anchor else {}

    profile = load_profile(profile_path)
    profile_gbs = profile.provenance.machine.get("read_gbs")
    cost = ProfiledCostModel(profile, engine.spec)
    shared = profile.provenance.machine.get("device", "cpu") == "cpu"
    sim = Simulation(policy, config, cost, workload, lanes_share_compute=shared).run()
    # Trace-driven: the same simulation with each iteration taking the engine's measured step.
    replayed = Simulation(
        policy,
        config,
        cost,
        workload,
        lanes_share_compute=shared,
        replay_s=measured,
        replay_starts_s=starts,
    ).run()
    timing = TimingModel(cost, config.block_size, lanes_share_compute=shared)
    predicted = [timing.run(p).duration_s for p in plans]
    overlapped = TimingModel(cost, config.block_size)  # as if GPU and CPU were separate chips
    predicted_overlap = [overlapped.run(p).duration_s for p in plans]

    real_summary, sim_summary = real.summary(), sim.metrics.summary()
    rows = metric_rows(policy, load, real_summary, sim_summary)
    anchored_rows = []
    if factors:
        # The engine decided with the profile as measured: so does the simulated scheduler;
        # only the clock (the timing model) uses the re-anchored costs.
        anchored_cost = ProfiledCostModel(profile.rescaled(factors), engine.spec)
        anchored = Simulation(
            make_policy(policy, config, cost),
            config,
            anchored_cost,
            workload,
            lanes_share_compute=shared,
        ).run()
        anchored_rows = metric_rows(policy, load, real_summary, anchored.metrics.summary())
        anchored_timing = TimingModel(anchored_cost, config.block_size, lanes_share_compute=shared)
        anchored_predicted = [anchored_timing.run(p).duration_s for p in plans]
        anchored_rows.append(iteration_mape_row(policy, load, measured, anchored_predicted))
    replay_rows = metric_rows(policy, load, real_summary, replayed.metrics.summary())
    tracked_rows, tracked_predicted = [], [math.nan] * len(plans)
    if profile_gbs and trace.samples:
        # The machine's memory bandwidth taken out: the clock prices each iteration on the
        # profile at the bandwidth sampled nearest its start (neo_sim.bandwidth); the policy
        # plans with the profile as measured, as the engine's did.
        costs = CostsAtBandwidth(profile, engine.spec)
        tracked = Simulation(
            policy,
            config,
            cost,
            workload,
            lanes_share_compute=shared,
            clock_cost=lambda t: costs.at(trace.at([t])[0]),
        ).run()
        tracked_rows = metric_rows(policy, load, real_summary, tracked.metrics.summary())
        tracked_predicted = [
            costs.timing(gbs, config.block_size, shared).run(p).duration_s
            for p, gbs in zip(plans, read_gbs)
        ]
        tracked_rows.append(iteration_mape_row(policy, load, measured, tracked_predicted))
    per_iteration = pd.DataFrame(
        {
            "policy": policy,
            "load": load,
            "step": [p.step for p in plans],
            "start_s": starts,
            "mode": [p.mode.value for p in plans],
            "measured_s": measured,
            "timing_model_s": predicted,
            "timing_model_overlapped_s": predicted_overlap,
            "timing_model_at_bandwidth_s": tracked_predicted,
            "scheduler_estimate_s": [p.predicted_s for p in plans],
            "num_seqs": [p.num_seqs for p in plans],
            "prefill_tokens": [sum(w.num_tokens for w in p.prefills) for p in plans],
            "cpu_decodes": [len(p.cpu_decodes) for p in plans],
            "read_gbs": read_gbs,
        }
    )
    real_requests, sim_requests = real.requests_frame(), sim.metrics.requests_frame()
    real_requests.to_csv(out / f"{policy}_{load}_engine_requests.csv", index=False)
    sim_requests.to_csv(out / f"{policy}_{load}_sim_requests.csv", index=False)
    rows.append(iteration_mape_row(policy, load, measured, predicted))
    engine_e2e = real_requests["e2e_s"].dropna().to_numpy()
    sim_e2e = sim_requests["e2e_s"].dropna().to_numpy()
    rows.append(
        {
            "policy": policy,
            "load": load,
            "metric": "ks_pvalue",
            "engine": len(engine_e2e),
            "sim": len(sim_e2e),
            "error": float(ks_2samp(engine_e2e, sim_e2e).pvalue),
        }
    )
    return {
        "policy": policy,
        "load": load,
        "rate": rate,
        "rows": rows,
        "replay_rows": replay_rows,
        "anchored_rows": anchored_rows,
        "bandwidth_rows": tracked_rows,
        "anchor_factors": factors,
        "iterations": per_iteration,
        "iteration_mape": iteration_mape(measured, predicted),
        "iteration_mape_overlapped": iteration_mape(measured, predicted_overlap),
        "bandwidth": [gbs for _, gbs in trace.samples],
        "iteration_mape_profiled_state": mape_in_state(per_iteration, profile_gbs),
        "profile_gbs": profile_gbs,
        "wall_s": wall,
        "host_share": sum(measured) and 1 - sum(forward_s) / sum(measured),
        "host_overhead": profile.host_overhead,
        "fused_decode_saving": profile.fused_decode_saving,
        "ratio_by_kind": measured_over_predicted_by_kind(per_iteration),
        "ttft_lag": lag_before_median_first_token(per_iteration, real_requests),
        "dtype": dtype,
        "cpu_decodes": int(per_iteration["cpu_decodes"].sum()),
        "pipelined": int((per_iteration["mode"] == "pipelined").sum()),
    }


class CostsAtBandwidth:
    """One profile's cost models at the memory bandwidths a run sampled
    (`neo_sim.bandwidth.at_bandwidth`), built once per distinct value."""

    def __init__(self, profile: Profile, spec: ModelSpec):
        self.profile = profile
        self.spec = spec
        self._costs: dict[float, ProfiledCostModel] = {}
        self._timings: dict[float, TimingModel] = {}

    def at(self, read_gbs: float) -> ProfiledCostModel:
        cost = self._costs.get(read_gbs)
        if cost is None:
            cost = ProfiledCostModel(at_bandwidth(self.profile, read_gbs), self.spec)
            self._costs[read_gbs] = cost
        return cost

    def timing(self, read_gbs: float, block_size: int, shared: bool) -> TimingModel:
        timing = self._timings.get(read_gbs)
        if timing is None:
            timing = TimingModel(self.at(read_gbs), block_size, lanes_share_compute=shared)
            self._timings[read_gbs] = timing
        return timing


def measured_over_predicted_by_kind(iterations: pd.DataFrame) -> dict[str, float | None]:
    """Summed measured / summed predicted time of the iterations that prefill some prompt
    (compute-bound GEMMs) and of the decode-only ones (weight- and KV-bandwidth-bound at
    these batch sizes): a cost-model term or a drift that hits one kind points at the
    operators of that kind. None for a kind with no iteration."""
    with_prefill = iterations["prefill_tokens"] > 0
    ratios: dict[str, float | None] = {}
    for kind, rows in (("with_prefill", with_prefill), ("decode_only", ~with_prefill)):
        predicted = iterations.loc[rows, "timing_model_s"].sum()
        ratios[kind] = (
            float(iterations.loc[rows, "measured_s"].sum() / predicted) if predicted else None
        )
    return ratios


def lag_before_median_first_token(iterations: pd.DataFrame, requests: pd.DataFrame) -> dict | None:
    """What the engine's TTFT median rests on: the iterations that started before the first
    token of the request whose TTFT is nearest the median (the work it waited behind; with all
    requests at once, every iteration since the start, and in an overload the queue carries a
    lag forward), the timing model's summed error over them (`lag_s`, predicted - measured:
    positive, neo-sim's clock runs behind the engine's) and their measured / predicted time
    per kind. `lag_s` over the TTFT p50 is about neo-sim's TTFT p50 error where the queue
    does not drain (docs/fidelity.md: on the committed run's files, neo and gpu-only offline
    -4.2% against -4.2% and -4.6% against -4.7%, in the overloads +21.8% against +13.0% and
    -5.2% against -8.0%). None without a first token."""
    ttft = requests["ttft_s"].dropna()
    if ttft.empty or "start_s" not in iterations:
        return None
    median = float(ttft.median())
    t = float(requests.loc[(ttft - median).abs().idxmin(), "first_token_s"])
    before = iterations[iterations["start_s"] < t]
    return {
        "first_token_s": t,
        "iterations": len(before),
        "lag_s": float((before["timing_model_s"] - before["measured_s"]).sum()),
        "ttft_p50_s": median,
        "ratio_by_kind": measured_over_predicted_by_kind(before),
    }


STATE_TOLERANCE = 0.10  # an iteration ran in the profile's bandwidth state within this


def mape_in_state(iterations: pd.DataFrame, profile_gbs: float | None) -> dict | None:
    """Per-iteration MAPE over the iterations that ran while the memory bandwidth was within
    `STATE_TOLERANCE` of the bandwidth at profiling (`read_gbs` of each, from the run's trace),
    and their share: the cost model judged on the machine in the state it was measured in.
    None when the profile records no bandwidth."""
    if not profile_gbs:
        return None
    keep = in_state(iterations["read_gbs"].tolist(), profile_gbs, STATE_TOLERANCE)
    kept = iterations[keep]
    return {
        "mape": iteration_mape(kept["measured_s"].tolist(), kept["timing_model_s"].tolist())
        if len(kept)
        else None,
        "share": len(kept) / len(iterations) if len(iterations) else 0.0,
    }


def _bandwidth_cell(samples: list[float]) -> str:
    """A run's bandwidth samples: min / median / max GB/s."""
    if not samples:
        return "-"
    return f"{min(samples):.0f} / {float(np.median(samples)):.0f} / {max(samples):.0f}"


def _state_cell(state: dict | None) -> str:
    if state is None:
        return "-"
    mape = "-" if state["mape"] is None else f"{100 * state['mape']:.1f}%"
    return f"{mape} ({100 * state['share']:.0f}%)"


def _ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


ITERATION_MAPE_TARGET = 0.10  # per-iteration MAPE once drift is accounted for (issue 17)
# Targets the report checks (issue 17's, at the saturated loads it names; TPOT also where the
# arrivals set the pace): the error bound and the loads it applies to. An iteration_mape
# row's error is the MAPE itself; a miss's cause says how much of it is the machine's drift.
TARGETS = {
    "throughput": (0.05, ("offline", "overload")),  # where the system decides throughput
    "ttft_p50": (0.10, ("offline", "overload")),
    "tpot_p50": (0.10, ("offline", "overload", "unsaturated")),
    "iteration_mape": (ITERATION_MAPE_TARGET, ("offline", "overload")),
}
SAME_KIND = 0.05  # two kinds' measured/predicted ratios closer than this move together


def target_bounds() -> str:
    """`TARGETS` in words, e.g. "throughput within 5% (offline, overload)"."""
    return "; ".join(
        f"{metric} within {100 * bound:.0f}% ({', '.join(loads)})"
        for metric, (bound, loads) in TARGETS.items()
    )


def target_verdicts(
    results: list[dict], rows: list[dict], anchored: list[dict], tracked: list[dict] | None = None
) -> str:
    """One markdown table row per (run, targeted metric): its error, and for a miss the term
    that explains it: the machine, when the reference kernel moved by more than the target
    during the run (with the error once the profile is re-anchored beside the run), or when
    most iterations ran with the memory bandwidth out of its state at profiling while those
    in it kept the per-iteration MAPE within its target; else the
    kind of iteration that ran off its prediction (prefill-bearing: the compute-bound GEMMs
    and prefill attention; decode-only: weight and KV reads), or the profile's level as a
    whole when both kinds ran off alike. Beside each miss, the error with the clock on the
    profile at the bandwidth sampled through the run (`tracked`), when there is one; a miss
    that this takes within the target is the machine's bandwidth."""
    errors = {(r["policy"], r["load"], r["metric"]): r["error"] for r in rows}
    re_anchored = {(r["policy"], r["load"], r["metric"]): r["error"] for r in anchored}
    at_bandwidth = {(r["policy"], r["load"], r["metric"]): r["error"] for r in tracked or ()}
    lines = []
    for run in results:
        policy, load = run["policy"], run["load"]
        for metric, (bound, loads) in TARGETS.items():
            error = errors.get((policy, load, metric))
            if load not in loads or error is None:
                continue
            key = (policy, load, metric)
            verdict = (
                "met"
                if abs(error) <= bound
                else "missed: "
                + _cause(run, bound, re_anchored.get(key), at_bandwidth.get(key), metric)
            )
            lines.append(
                f"| {policy} | {load} | {metric} | {100 * error:+.1f}% | "
                f"<= {100 * bound:.0f}% | {verdict} |"
            )
    return "\n".join(lines)


def _cause(
    run: dict,
    bound: float,
    re_anchored: float | None,
    tracked: float | None = None,
    metric: str = "",
) -> str:
    before, after = run["drift"]
    if max(abs(before), abs(after)) > bound:
        text = (
            f"the machine: the reference kernel moved {100 * before:+.0f}% / "
            f"{100 * after:+.0f}% (before / after the run), more than the target"
        )
        if re_anchored is not None:
            text += f"; re-anchored beside the run: {100 * re_anchored:+.1f}%"
        return text
    if tracked is not None and abs(tracked) <= bound:
        return (
            f"the machine's memory bandwidth ({_bandwidth_cell(run['bandwidth'])} GB/s min / "
            f"median / max through the run, {run['profile_gbs']:.0f} at profiling): with the "
            f"clock on the profile at the bandwidth sampled through the run, {100 * tracked:+.1f}%"
        )
    with_tracked = (
        f"; with the bandwidth tracked {100 * tracked:+.1f}%" if tracked is not None else ""
    )
    return _cost_model_cause(run, bound, metric) + with_tracked


def _cost_model_cause(run: dict, bound: float, metric: str = "") -> str:
    """`_cause` once the reference kernel and the bandwidth are ruled out."""
    state = run.get("iteration_mape_profiled_state")
    in_state_mape = state["mape"] if state is not None else None
    out_of_state = state is not None and state["share"] < 0.5
    if out_of_state and in_state_mape is not None and in_state_mape <= ITERATION_MAPE_TARGET:
        return (
            f"the machine: {100 * (1 - state['share']):.0f}% of the iterations ran with the "
            f"memory bandwidth more than {100 * STATE_TOLERANCE:.0f}% off its value at "
            f"profiling ({run['profile_gbs']:.0f} GB/s; during the run "
            f"{_bandwidth_cell(run['bandwidth'])} GB/s min / median / max); over the others "
            f"the per-iteration MAPE is {100 * in_state_mape:.1f}%"
        )
    in_state = (
        f"; in the profiled bandwidth state ({100 * state['share']:.0f}% of the iterations) "
        f"the per-iteration MAPE is {100 * in_state_mape:.1f}%"
        if in_state_mape is not None
        else ""
    )
    lag = run.get("ttft_lag")
    if metric == "ttft_p50" and lag is not None and lag["iterations"] and lag["ttft_p50_s"] > 0:
        cells = _kind_cells(lag["ratio_by_kind"])
        return (
            f"the timing model over the {lag['iterations']} iterations before the median "
            f"first token (at {lag['first_token_s']:.2f} s; they ran {cells} their "
            f"prediction): {lag['lag_s']:+.3f} s in sum, "
            f"{100 * lag['lag_s'] / lag['ttft_p50_s']:+.1f}% of the engine's TTFT p50{in_state}"
        )
    kinds = {KIND_NAMES[k]: ratio for k, ratio in run["ratio_by_kind"].items()}
    known = {kind: ratio for kind, ratio in kinds.items() if ratio is not None}
    if not known:
        return "no iteration to attribute it to"
    cells = _kind_cells(run["ratio_by_kind"])
    if len(known) == 2 and abs(kinds["prefill-bearing"] - kinds["decode-only"]) < SAME_KIND:
        return f"the profile's level as a whole (iterations ran {cells} their prediction){in_state}"
    worst = max(known, key=lambda kind: abs(known[kind] - 1))
    return (
        f"the {worst} iterations' operators (iterations ran {cells} their prediction, with "
        f"the reference kernel steady){in_state}"
    )


# `measured_over_predicted_by_kind`'s keys, as the report names the kinds of iteration
KIND_NAMES = {"with_prefill": "prefill-bearing", "decode_only": "decode-only"}


def _kind_cells(ratios: dict[str, float | None]) -> str:
    """measured / predicted time per kind of iteration, in words: "prefill-bearing 1.07x,
    decode-only 1.05x" (a kind with no iteration left out)."""
    return ", ".join(f"{KIND_NAMES[k]} {r:.2f}x" for k, r in ratios.items() if r is not None)


class ProfileAnchor:
    """A few of the profile's own grid points per operator, re-measured in situ (the
    profiler's benches) beside an engine run: how much slower or faster each operator runs
    now than when the profile was taken. The points are the cheaper half of each operator's
    grid (the sizes a small fidelity workload runs), spread evenly over it."""

    def __init__(self, profile_path: Path, points: int, repeats: int = 3):
        import torch

        from neo_engine.profiler import Benches
        from neo_sim.operators import SAMPLED
        from neo_sim.profile import sample_points

        profile = load_profile(profile_path)
        self.bench = Benches(profile.model, torch.device("cpu"), repeats)
        self.jobs = []  # (operator, point, profile seconds)
        for op in SAMPLED:
            by_cost = sorted(sample_points(profile.samples[op.name]), key=lambda p: p[1])
            cheap = by_cost[: max(1, len(by_cost) // 2)]
            step = (len(cheap) - 1) / max(1, points - 1)
            for i in sorted({round(k * step) for k in range(points)}):
                self.jobs.append((op, *cheap[i]))

    def measure(self) -> list[tuple[str, float]]:
        """(operator, measured / profile) for every anchor point, now."""
        return [(op.name, self.bench.time(op, p) / seconds) for op, p, seconds in self.jobs]

    @staticmethod
    def factors(ratios: list[tuple[str, float]]) -> dict[str, float]:
        """Per operator, the median ratio: the factor its samples are scaled by."""
        by_op: dict[str, list[float]] = {}
        for name, ratio in ratios:
            by_op.setdefault(name, []).append(ratio)
        return {name: float(np.median(values)) for name, values in by_op.items()}

    def close(self) -> None:
        self.bench.close()


def profile_cache() -> Path:
    """Where profiles measured by `neo-sim validate` are kept, one per machine and model."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "neo" / "profiles"


def machine_key(here: dict) -> str:
    features = "-".join(k for k, v in sorted(here["cpu_features"].items()) if v) or "base"
    name = "".join(c if c.isalnum() else "-" for c in here["cpu"]).strip("-").lower()
    return f"{name}-{here['cpu_cores']}c-{features}" + (f"-{here['gpu']}" if "gpu" in here else "")


def this_engine_machine() -> dict:
    """The facts a profile must share with this machine to price the engine here: the CPU's
    (`neo_sim.machine.this_machine`), the GPU's name, how the engine runs its host lane, and
    the torch and host kernels it runs (`cpu_kernel.engine_build`)."""
    import torch

    from neo_engine.cpu_kernel import engine_build
    from neo_engine.executor import host_lane
    from neo_sim.machine import this_machine

    here = this_machine()
    if torch.cuda.is_available():
        here["gpu"] = torch.cuda.get_device_name(0)
    here["host_lane"] = host_lane(torch.cuda.is_available())  # as the engine will run it
    here["engine_build"] = engine_build()
    return here


def profile_of_this_machine(requested: str | None, model: str, measure=None) -> Path:
    """The profile the simulator gets: `requested` if given (with a one-line warning if it was
    measured on another machine), else the first measured on this machine among the shipped
    profile and the cache, else one measured now (`neo-profile --quick`) and cached. A
    committed profile measured elsewhere is never trusted as this machine's."""
    from neo_sim.catalog import parse_model_arg
    from neo_sim.machine import mismatches

    here = this_engine_machine()
    if requested:
        differs = mismatches(load_profile(requested).provenance.machine, here)
        if differs:
            print(
                f"fidelity: warning: {requested} was measured on another machine: "
                + "; ".join(differs),
                file=sys.stderr,
            )
        return Path(requested)
    name = parse_model_arg(model).spec.name
    cache = profile_cache()
    for path in [REPO / SHIPPED_PROFILE, *sorted(cache.glob(f"*__{name}.json"))]:
        if path.exists():
            profile = load_profile(path)
            if profile.model.name == name and not mismatches(profile.provenance.machine, here):
                print(f"fidelity: profile {path} (measured on this machine)", flush=True)
                return path
    path = cache / f"{machine_key(here)}__{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"fidelity: no profile of {name} measured on this machine: measuring {path}", flush=True)
    if measure is None:
        from neo_engine.profiler import main as measure
    measure(["--model", model, "--quick", "--output", str(path)])
    return path


def run_fidelity(settings: FidelitySettings) -> int:
    """Run every policy on the engine and in neo-sim; write and print the report."""
    out = ensure_writable_dir(Path(settings.output), "the report")
    profile_path = profile_of_this_machine(settings.profile, settings.model)
    profile = load_profile(profile_path)
    shutil.copyfile(profile_path, out / "profile.json")  # the report's profile travels with it
    reference = reference_kernel(profile.model)
    baseline_ms = reference()
    anchor = ProfileAnchor(profile_path, settings.anchor_points) if settings.anchor_points else None
    probe = ReadProbe()
    now_gbs = probe.read_gbs()
    results = []

    def timed(policy: str, load: str, rate: float) -> dict:
        """One run, with the reference kernel timed before and after it (drift)."""
        before = reference()
        result = run_policy(policy, load, rate, settings, profile_path, out, anchor, probe)
        result["drift"] = (before / baseline_ms - 1, reference() / baseline_ms - 1)
        return result

    for policy in [x.strip() for x in settings.policies.split(",") if x.strip()]:
        # Offline first: the engine's throughput there sets the overload rate.
        print(f"fidelity: {policy}, offline: engine in real time, then neo-sim ...", flush=True)
        offline = timed(policy, "offline", math.inf)
        results.append(offline)
        capacity = offline["rows"][0]["engine"]  # requests/s
        loads = [("unsaturated", settings.requests.rate)]
        if not settings.quick:
            loads.insert(0, ("overload", OVERLOAD * capacity))
        for load, rate in loads:
            print(f"fidelity: {policy}, {load} ({rate:.2f} req/s) ...", flush=True)
            results.append(timed(policy, load, rate))
    if anchor:
        anchor.close()
    write_report(
        results, settings, profile_path, out, since_profiling(profile, baseline_ms, now_gbs)
    )
    print((out / "report.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.fidelity`: the same flags as `neo-sim validate`."""
    parser = argparse.ArgumentParser(description="neo-sim vs the real engine on this machine")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_fidelity(from_args(FidelitySettings, args).resolved())
    except NeoError as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2


def errors_table(rows: list[dict]) -> str:
    """Markdown: one line per metric, one column per (policy, load), the rows' errors (the KS
    p-value as a number, the rest as percentages)."""
    table = pd.DataFrame(rows).pivot_table(
        index="metric", columns=["policy", "load"], values="error", sort=False
    )
    header = " | ".join(f"{pol}, {load}" for pol, load in table.columns)
    lines = [f"| metric | {header} |", "|---|" + "---|" * len(table.columns)]
    for metric, values in table.iterrows():
        cells = [f"{v:.3g}" if metric == "ks_pvalue" else f"{100 * v:+.1f}%" for v in values]
        lines.append(f"| {metric} | {' | '.join(cells)} |")
    return "\n".join(lines)


def since_profiling(profile: Profile, now_ms: float, now_gbs: float) -> str:
    """The reference kernel and the memory bandwidth now against their values when the
    profile was measured (`reference_kernel_ms`, `read_gbs`, recorded by neo-profile): the
    machine's drift since then."""
    provenance = profile.provenance
    then_ms = provenance.machine.get("reference_kernel_ms")
    if not then_ms:
        text = (
            "The profile records no reference kernel time (measured before neo-profile "
            "recorded one), so drift since profiling is not known."
        )
    else:
        text = (
            f"Since the profile was measured ({provenance.date}), the reference kernel went from "
            f"{then_ms:.4f} to {now_ms:.4f} ms ({100 * (now_ms / then_ms - 1):+.0f}%): drift "
            "since profiling, which biases every prediction below by about as much."
        )
    then_gbs = provenance.machine.get("read_gbs")
    if then_gbs:
        text += (
            f" The memory read bandwidth read {then_gbs:.1f} GB/s at profiling, {now_gbs:.1f} "
            "GB/s at the start of validate."
        )
    return text


def write_report(
    results: list[dict],
    settings: FidelitySettings,
    profile_path: Path,
    out: Path,
    drift_since_profiling: str,
):
    from neo_sim import plots

    rows = [r for result in results for r in result["rows"]]
    overhead = results[0]["host_overhead"]  # one profile for every run
    host_priced = (
        f"which the profile's host overhead prices ({overhead}, measured by neo-profile on "
        "the engine)"
        if overhead is not None
        else "which this profile does not price (measured before neo-profile measured the "
        "engine's host overhead), so it is a floor under the throughput error at the "
        "saturated loads"
    )
    saving = results[0]["fused_decode_saving"]
    fused_priced = (
        f"; the decode-only iterations the engine runs one layer per call are priced with the "
        f"profile's fused decode saving ({saving} a layer)"
        if saving is not None
        else ""
    )
    (out / "fidelity.json").write_text(json.dumps(rows, indent=1) + "\n")
    replay = [r for result in results for r in result["replay_rows"]]
    (out / "fidelity_replay.json").write_text(json.dumps(replay, indent=1) + "\n")
    anchored = [r for result in results for r in result["anchored_rows"]]
    tracked = [r for result in results for r in result["bandwidth_rows"]]
    if tracked:
        (out / "fidelity_bandwidth.json").write_text(json.dumps(tracked, indent=1) + "\n")
        tracked_section = f"""## Bandwidth-tracked: the profile at the bandwidth of each iteration

The machine's memory bandwidth taken out: neo-sim's clock prices each iteration on the profile
at the read bandwidth sampled nearest its start (`neo_sim.bandwidth.at_bandwidth`: each
operator reads its bytes at up to the highest fraction of the bandwidth its samples reached at
profiling, so a sample takes max(its time, its bytes / (that fraction x the bandwidth now));
nothing fitted), and the per-iteration MAPE prices the engine's plans at the bandwidth each ran
at. The simulated scheduler still decides with the profile as measured, as the engine did
(fidelity_bandwidth.json, same rows).

{errors_table(tracked)}
"""
    else:
        tracked_section = ""
    if anchored:
        (out / "fidelity_anchored.json").write_text(json.dumps(anchored, indent=1) + "\n")
        factors = "\n".join(
            f"| {r['policy']} | {r['load']} | "
            + " | ".join(f"{r['anchor_factors'][op]:.2f}" for op in sorted(r["anchor_factors"]))
            + " |"
            for r in results
        )
        ops = sorted(results[0]["anchor_factors"])
        anchored_section = f"""## Re-anchored: the profile re-measured beside each run

Drift taken out: just before and just after each engine run, {settings.anchor_points} grid points
per operator of the profile (the cheaper half of its grid, the sizes this workload runs) were
timed again in situ, and each operator's samples scaled by the median of measured / profiled.
The simulated scheduler still decides with the profile as measured (as the engine did); only
its clock uses the re-anchored costs (fidelity_anchored.json, same rows).

{errors_table(anchored)}

Factors (measured now / profile):

| policy | load | {" | ".join(ops)} |
|---|---|{"---|" * len(ops)}
{factors}
"""
    else:
        anchored_section = ""
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    iterations = pd.concat([r["iterations"] for r in results], ignore_index=True)
    iterations.to_csv(out / "iterations.csv", index=False)
    for r in results:
        it = r["iterations"]
        fig = plots.scatter_figure(
            it["measured_s"],
            it["timing_model_s"],
            "measured (s)",
            "neo-sim timing model (s)",
            f"{r['policy']}, {r['load']}: per-iteration time, predicted vs measured",
        )
        plots.save_html(fig, out / f"{r['policy']}_{r['load']}_iterations.html")
    runs = "\n".join(
        f"| {r['policy']} | {r['load']} | {r['rate']:.2f} | {len(r['iterations'])} | "
        f"{100 * r['iteration_mape_overlapped']:.1f}% | {r['pipelined']} | {r['cpu_decodes']} | "
        f"{100 * r['host_share']:.1f}% | {_ratio_cell(r['ratio_by_kind']['with_prefill'])} | "
        f"{_ratio_cell(r['ratio_by_kind']['decode_only'])} | {r['wall_s']:.0f} s | "
        f"{100 * r['drift'][0]:+.0f}% / {100 * r['drift'][1]:+.0f}% | "
        f"{_bandwidth_cell(r['bandwidth'])} | {_state_cell(r['iteration_mape_profiled_state'])} |"
        for r in results
    )
    s, w, pools = settings, settings.requests, settings.scheduler
    body = f"""# Fidelity: neo-sim vs the real engine on this machine

Generated {datetime.date.today().isoformat()} on {platform.node()} by
`neo-sim validate{" --quick" if s.quick else ""}`.

Workload: {w.num_requests} requests, prompts ~{w.input_len} and outputs ~{w.output_len} tokens
(uniform +-10%), model `{s.model}` (random weights, {results[0]["dtype"]}), GPU KV
{pools.num_gpu_blocks} blocks of {pools.block_size} (forcing offload), host KV
{pools.num_cpu_blocks} blocks, at each load: offline (all at once), overload ({OVERLOAD}x the
engine's offline throughput, Poisson; not in --quick) and unsaturated (Poisson at {w.rate}
req/s). Offline and overload are where throughput is decided by the system, not by arrivals.
Profile: `{profile_path.name}`, measured on this machine. The engine ran in real time; neo-sim
ran the same arrivals with the same profile, policy and KV limits.

## Errors (neo-sim / engine - 1)

{errors_table(rows)}

iteration_mape: neo-sim's timing model on the engine's own plans against each iteration's
measured time (mean absolute percentage error). ks_pvalue: two-sample Kolmogorov-Smirnov test of
the per-request E2E latencies of engine and neo-sim (a p-value, not an error: small values
mean the two distributions differ). Every row, with the engine's and neo-sim's values, is in
fidelity.json (`{{"policy", "load", "metric", "engine", "sim", "error"}}`).

## Runs

| policy | load | req/s | iterations | MAPE, overlapped | pipelined | CPU decodes | host work \
| prefill iterations | decode-only iterations | wall | drift | read GB/s | MAPE, profiled state |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{runs}

"MAPE, overlapped" prices the same plans as if the GPU and CPU lanes were separate chips; on
this CPU-only machine they share the cores, which the timing model knows. host work: the share
of the engine's steps spent outside the forward pass and its sampling (scheduling,
detokenizing, bookkeeping; the rest of `LLMEngine.step`), {host_priced} (the sampling is
priced too: the profile's `lm_head` includes it){fused_priced}. Per-iteration times compare
whole steps.
prefill / decode-only iterations: measured over predicted time, summed over the iterations
that prefill some prompt (compute-bound) and over the others (bound by weight and KV reads at
these batch sizes); the kind whose ratio is off is where the cost model, or the machine since
profiling, is wrong. drift: a reference
kernel (one QKV projection of 4 tokens) timed before / after the run, against its time at the
start of validate. read GB/s: the host's memory read bandwidth sampled through the run (a sum
over {PROBE_BYTES // 2**20} MiB at the start, every {SAMPLE_EVERY_S:.0f} s between steps, in idle
waits and at the end; min / median / max): a small decode step reads every weight from memory,
so it follows this bandwidth, which the cache-resident reference kernel does not see
(`neo_engine/bandwidth.py`).
MAPE, profiled state: the per-iteration MAPE over the iterations that ran while the bandwidth
was within {100 * STATE_TOLERANCE:.0f}% of its value at profiling (their share in brackets): the
cost model on the machine in the state it was measured in. {drift_since_profiling}

## Trace-driven: the queueing and scheduling model alone

The same simulations with each iteration taking the measured step (its forward pass plus
its host work; the cost model taken out) of the engine iteration that started nearest it:
what remains is the error of the arrivals, batching and scheduling model alone
(fidelity_replay.json, same rows).

{errors_table(replay)}

{tracked_section}
{anchored_section}
## Targets

{target_bounds()}. For a miss, the term that explains it: the machine (the reference kernel
moved by more than the target during the run, or most iterations ran out of the profiled
bandwidth state while those in it kept the per-iteration MAPE within
{100 * ITERATION_MAPE_TARGET:.0f}%), else the kind of iteration that ran off its prediction.

| policy | load | metric | error | target | verdict |
|---|---|---|---|---|---|
{target_verdicts(results, rows, anchored, tracked)}

These are issue 17's targets (throughput error <= 5%, p50 TTFT and TPOT error <= 10%,
per-iteration MAPE <= 10%, at the saturated loads), each checked in the table above.
This machine's own repeatability is worse than the latency targets: the same in-situ
measurement of one operator ranges over +-30% within a minute, and the profile and the engine
runs are minutes apart, so a drift between them biases every latency the same way.

Files: fidelity.json, fidelity_replay.json, fidelity_bandwidth.json, fidelity_anchored.json,
summary.csv, iterations.csv, profile.json (the profile neo-sim ran on),
*_engine_requests.csv, *_sim_requests.csv, *_iterations.html (per policy and load).
"""
    (out / "report.md").write_text(body)
    (out / "settings.json").write_text(json.dumps(dataclasses.asdict(s), indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
