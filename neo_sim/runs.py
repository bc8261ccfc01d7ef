"""One simulation run, described by plain values so it can cross process boundaries.

`RunSpec` holds what the command line says (names, numbers); `execute` resolves it into specs,
a cost model, a workload and a scheduler config, simulates, and returns the summary and the
tables. The CLI commands, the sweep workers (local processes or a dask cluster) and the
experiment scripts all go through here, so a run means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from neo_sim.capacity import default_capacity
from neo_sim.catalog import Target, resolve_target
from neo_sim.errors import NeoError
from neo_sim.metrics import SLO
from neo_sim.scheduler import SchedulerConfig
from neo_sim.simulator import SimResult, simulate
from neo_sim.units import GB
from neo_sim.workload import RequestSpec, from_trace, synthetic


@dataclass(frozen=True)
class RunSpec:
    hardware: str
    model: str | None
    policy: str = "neo"
    workload: str = "synthetic"  # or "trace:PATH"
    rate: float = math.inf
    num_requests: int | None = 200  # None: the whole trace
    input_len: int = 370
    output_len: int = 45
    burstiness: float = 1.0
    seed: int = 0
    gpu_kv_blocks: int | None = None
    cpu_kv_gb: float | None = None
    block_size: int = 16
    max_batch_tokens: int = 4096
    max_batch_size: int = 256
    max_num_seqs: int = 512
    max_cpu_wait_steps: int = 256
    noise: float = 0.0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    timeline_iterations: int = 0

    def with_(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


@dataclass
class RunOutput:
    spec: RunSpec
    summary: dict[str, Any]
    requests: pd.DataFrame
    iterations: pd.DataFrame
    result: SimResult


def build_workload(spec: RunSpec) -> list[RequestSpec]:
    if spec.workload == "synthetic":
        n = spec.num_requests or 200
        return synthetic(n, spec.rate, spec.input_len, spec.output_len, spec.seed, spec.burstiness)
    if spec.workload.startswith("trace:"):
        rate = None if spec.rate is None else spec.rate
        return from_trace(
            spec.workload[len("trace:") :], spec.num_requests, rate, spec.seed, spec.burstiness
        )
    raise NeoError(f"--workload must be 'synthetic' or 'trace:PATH', got {spec.workload!r}")


def scheduler_config(spec: RunSpec, target: Target) -> SchedulerConfig:
    if spec.cpu_kv_gb is not None and spec.cpu_kv_gb < 0:
        raise NeoError(f"--cpu-kv-gb must be >= 0, got {spec.cpu_kv_gb}")
    cpu_bytes = None if spec.cpu_kv_gb is None else spec.cpu_kv_gb * GB
    capacity = default_capacity(
        target.model,
        target.hardware,
        spec.block_size,
        spec.max_batch_tokens,
        spec.gpu_kv_blocks,
        cpu_bytes,
    )
    return SchedulerConfig(
        num_gpu_blocks=capacity.num_gpu_blocks,
        num_cpu_blocks=capacity.num_cpu_blocks,
        block_size=spec.block_size,
        max_batch_size=spec.max_batch_size,
        max_num_seqs=spec.max_num_seqs,
        max_batch_tokens=spec.max_batch_tokens,
        max_cpu_wait_steps=spec.max_cpu_wait_steps,
    )


def execute(spec: RunSpec, workload: list[RequestSpec] | None = None) -> RunOutput:
    """Simulate one run; `workload` lets several policies share the very same arrivals."""
    target = resolve_target(spec.hardware, spec.model)
    config = scheduler_config(spec, target)
    requests = workload if workload is not None else build_workload(spec)
    result = simulate(
        spec.policy,
        config,
        target.cost,
        requests,
        noise=spec.noise,
        seed=spec.seed,
        record_timeline=spec.timeline_iterations,
    )
    slo = None
    if spec.slo_ttft_s is not None or spec.slo_tpot_s is not None:
        slo = SLO(ttft_s=spec.slo_ttft_s, tpot_s=spec.slo_tpot_s)
    frame, iterations = result.metrics.requests_frame(), result.metrics.iterations_frame()
    summary: dict[str, Any] = {
        "policy": spec.policy,
        "hardware": target.hardware.name,
        "model": target.model.name,
        "cost_model": target.cost.description,
        "rate": spec.rate,
        "gpu_kv_blocks": config.num_gpu_blocks,
        "cpu_kv_blocks": config.num_cpu_blocks,
    }
    summary.update(result.metrics.summary(slo))
    return RunOutput(spec, summary, frame, iterations, result)


def execute_summary(spec: RunSpec) -> dict[str, Any]:
    """What a sweep worker returns: the run's settings and its summary, one flat row."""
    out = execute(spec)
    row = {k: v for k, v in dataclasses.asdict(spec).items() if k != "timeline_iterations"}
    row.update(out.summary)
    return row
