"""One simulation run, described by plain values so it can cross process boundaries.

`RunSpec` holds what the command line says (names, numbers); `execute` resolves it into specs,
a cost model, a workload and a scheduler config, simulates, and returns the summary and the
tables. The CLI commands, the sweep workers (local processes or a dask cluster) and the
experiment scripts all go through here, so a run means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from neo_sim import settings
from neo_sim.capacity import KVCacheSettings, memory_of_hardware, resolve_pools
from neo_sim.catalog import Target, resolve_target
from neo_sim.errors import NeoError
from neo_sim.metrics import SLO
from neo_sim.scheduler import POLICIES, RENAMED, SchedulerConfig, policy_config
from neo_sim.settings import check, setting
from neo_sim.simulator import SimResult, simulate
from neo_sim.units import GB
from neo_sim.workload import SYNTHETIC_REQUESTS, RequestSpec, WorkloadSettings, build_workload


@dataclass(frozen=True)
class RunSpec:
    """Every setting of one simulation run; `neo-sim`'s flags are generated from it."""

    hardware: str = setting(
        help="hardware preset (t4, a10g-g5.4xlarge, h100, ...) or a profile JSON file"
    )
    model: str | None = setting(
        None,
        "model preset (llama-2-7b, ...), dummy:PRESET, or an HF config.json path; optional "
        "with a profile file",
    )
    policy: str = setting("neo", "scheduling policy", choices=tuple(POLICIES), renamed=RENAMED)
    noise: float = setting(0.0, "log-normal sigma of per-task time noise (0: deterministic)", low=0)
    slo_per_token_s: float | None = setting(
        None,
        "mean per-token latency (E2E / tokens) SLO for goodput, the NEO paper's bound",
        unit="s",
        low=0,
        low_open=True,
        flag="slo-per-token",
    )
    timeline_iterations: int = setting(
        40, "iterations whose lane events are recorded for plots and traces", low=0
    )
    steady_runs: bool = setting(
        True,
        "advance runs of identical decode iterations without stepping the scheduler (exact: "
        "same results; --no-steady-runs steps every iteration)",
    )
    iteration_records: bool = setting(
        False,
        "keep one record per iteration (iterations.csv, the batch plot); off: totals only, "
        "memory flat in the number of iterations",
        cli=False,
    )
    requests: WorkloadSettings = field(default_factory=WorkloadSettings)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv: KVCacheSettings = field(default_factory=KVCacheSettings)

    def __post_init__(self) -> None:
        check(self, "run")

    @classmethod
    def of(cls, **flat: Any) -> RunSpec:
        """A spec from flat settings (`RunSpec.of(hardware="t4", rate=2, gpu_kv_blocks=54)`)."""
        return settings.build(cls, flat)

    def with_(self, **changes: Any) -> RunSpec:
        """A copy with flat settings changed, wherever they live."""
        return settings.replace(self, **changes)

    def flat(self) -> dict[str, Any]:
        return settings.flatten(self)


# What a run costs, for the estimate printed before a huge one. Measured here (2026-12-02):
# tracemalloc's peak over 20,000 requests of the H100 512/128 workload was 6.2 KB per request;
# benchmarks/results/sim_speed.json simulated 1,000-2,000 requests/s.
BYTES_PER_REQUEST = 6_500
REQUESTS_PER_S = 1_000
LARGE_RUN = 100_000  # requests from which the estimate is printed


@dataclass(frozen=True)
class RunEstimate:
    requests: int
    memory_bytes: float
    seconds: float


def estimate(spec: RunSpec) -> RunEstimate:
    """Rough memory and time of a run, from its request count (see BYTES_PER_REQUEST)."""
    w = spec.requests
    if w.num_requests is not None:
        n = w.num_requests
    elif w.trace_path is None:
        n = SYNTHETIC_REQUESTS
    else:
        try:
            with open(w.trace_path, "rb") as f:
                n = max(0, sum(1 for _ in f) - 1)
        except OSError:
            n = 0  # reading the workload will say what is wrong with the file
    return RunEstimate(n, n * BYTES_PER_REQUEST, n / REQUESTS_PER_S)


def check_size(spec: RunSpec, available_bytes: float, runs: int = 1) -> str | None:
    """A one-line estimate for a huge run (None for a small one); NeoError if it cannot fit
    in `available_bytes` of memory."""
    e = estimate(spec)
    if e.memory_bytes > available_bytes:
        raise NeoError(
            f"{e.requests:,} requests need ~{e.memory_bytes / GB:.1f} GB of memory, "
            f"{available_bytes / GB:.1f} GB are available: lower --num-requests"
        )
    if e.requests < LARGE_RUN:
        return None
    return (
        f"{e.requests:,} requests: expect ~{e.memory_bytes / GB:.1f} GB of memory and "
        f"~{runs * e.seconds / 60:.0f} min (at {REQUESTS_PER_S:,} requests/s simulated)"
    )


@dataclass
class RunOutput:
    spec: RunSpec
    summary: dict[str, Any]
    requests: pd.DataFrame
    iterations: pd.DataFrame
    result: SimResult


def scheduler_config(spec: RunSpec, target: Target) -> SchedulerConfig:
    """The run's scheduler config, with its policy's fixed settings, its KV pools sized from
    the target's memory."""
    return resolve_pools(
        policy_config(spec.policy, spec.scheduler),
        spec.kv,
        target.model,
        memory_of_hardware(target.hardware, target.model),
    )


def execute(spec: RunSpec, workload: list[RequestSpec] | None = None) -> RunOutput:
    """Simulate one run; `workload` lets several policies share the very same arrivals."""
    target = resolve_target(spec.hardware, spec.model)
    config = scheduler_config(spec, target)
    requests = workload if workload is not None else build_workload(spec.requests)
    result = simulate(
        spec.policy,
        config,
        target.cost,
        requests,
        noise=spec.noise,
        seed=spec.requests.seed,
        record_timeline=spec.timeline_iterations,
        record_iterations=spec.iteration_records,
        steady_runs=spec.steady_runs,
    )
    if requests and result.first_rejection and result.metrics.totals.count == 0:
        raise NeoError(
            f"none of the {len(requests)} requests can ever run with policy {spec.policy}: "
            f"{result.first_rejection}"
        )
    slo = None
    # TTFT and TPOT bounds are scheduler settings too: adaptive plans for them
    ttft_s, tpot_s = spec.scheduler.slo_ttft_s, spec.scheduler.slo_tpot_s
    if any(x is not None for x in (ttft_s, tpot_s, spec.slo_per_token_s)):
        slo = SLO(ttft_s=ttft_s, tpot_s=tpot_s, per_token_s=spec.slo_per_token_s)
    frame, iterations = result.metrics.requests_frame(), result.metrics.iterations_frame()
    summary: dict[str, Any] = {
        "policy": spec.policy,
        "hardware": target.hardware.name,
        "model": target.model.name,
        "cost_model": target.cost.description,
        "rate": math.inf if spec.requests.rate is None else spec.requests.rate,
        "gpu_kv_blocks": config.num_gpu_blocks,
        "cpu_kv_blocks": config.num_cpu_blocks,
    }
    summary.update(result.metrics.summary(slo, frame))  # the frame is built once
    return RunOutput(spec, summary, frame, iterations, result)


def resolved_config(out: RunOutput) -> dict[str, Any]:
    """config.json of a run: every setting by its dataclass field name, pools resolved."""
    data = dataclasses.asdict(out.spec)
    data["scheduler"]["num_gpu_blocks"] = out.summary["gpu_kv_blocks"]
    data["scheduler"]["num_cpu_blocks"] = out.summary["cpu_kv_blocks"]
    return data


def execute_summary(spec: RunSpec) -> dict[str, Any]:
    """What a sweep worker returns: the run's settings and its summary, one flat row."""
    out = execute(spec.with_(timeline_iterations=0))  # a sweep row keeps no lane events
    row = {k: v for k, v in spec.flat().items() if k != "timeline_iterations"}
    row.update(out.summary)
    return row
