"""Per-request and per-iteration tables, and the summary a user reads.

Request latencies (TTFT, TPOT, ITL, E2E) are defined once, in `neo_sim.latency`; goodput counts
a request only if every given SLO holds. Throughput is completed requests (and output tokens)
over the span from the first arrival to the last finish. Busy fractions are lane busy time
over that span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from neo_sim.lanes import Lane
from neo_sim.latency import RequestRecord
from neo_sim.scheduler.plan import Plan

PERCENTILES = (50, 90, 99)

# The summary metrics the command-line tables show: (key of summarize(), label, format).
SUMMARY_ROWS = [
    ("completed", "completed requests", "{:.0f}"),
    ("rejected", "rejected requests", "{:.0f}"),  # only where a run rejected some
    ("throughput_req_s", "throughput (req/s)", "{:.3f}"),
    ("throughput_tok_s", "output tokens/s", "{:.1f}"),
    ("goodput_req_s", "goodput (req/s)", "{:.3f}"),  # only with an SLO set
    ("ttft_p50", "TTFT p50 (s)", "{:.3f}"),
    ("ttft_p90", "TTFT p90 (s)", "{:.3f}"),
    ("tpot_p50", "TPOT p50 (s)", "{:.4f}"),
    ("tpot_p90", "TPOT p90 (s)", "{:.4f}"),
    ("e2e_p50", "E2E p50 (s)", "{:.3f}"),
    ("e2e_p90", "E2E p90 (s)", "{:.3f}"),
    ("per_token_latency_p50", "per-token latency p50 (s)", "{:.4f}"),
    ("max_token_gap_p99_s", "longest token gap p99 (s)", "{:.3f}"),
    ("max_token_gap_max_s", "longest token gap max (s)", "{:.3f}"),
    ("gpu_busy", "GPU busy", "{:.2f}"),
    ("cpu_busy", "CPU busy", "{:.2f}"),
    ("pipelined_fraction", "pipelined iterations", "{:.2f}"),
    ("fused_fraction", "fused iterations", "{:.2f}"),
    ("cpu_served_fraction", "requests that ran on CPU", "{:.2f}"),
    ("mean_batch_size", "mean batch size", "{:.1f}"),
]

# Rows the tables leave out where every run reads 0 (most runs reject nothing).
ROWS_SHOWN_WHEN_NONZERO = frozenset({"rejected"})

REQUEST_COLUMNS = [
    "request_id",
    "arrival_s",
    "first_token_s",
    "finish_s",
    "prompt_len",
    "output_len",
    "num_tokens",
    "max_token_gap_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "per_token_s",
    "gpu_steps",
    "cpu_steps",
    "max_host_wait_steps",
    "ran_on",
    "preemptions",
    "swaps",
    "status",
]

LATENCY_COLUMNS = ("ttft_s", "tpot_s", "e2e_s", "per_token_s")  # from `RequestRecord.latency()`


@dataclass(frozen=True)
class IterationRecord:
    """One iteration: what its plan ran, how long it took, how busy each lane was."""

    step: int
    start_s: float
    duration_s: float
    predicted_s: float
    mode: str
    prefill_tokens: int
    num_prefills: int
    num_gpu_decodes: int
    num_cpu_decodes: int
    swap_out: int
    swap_in: int
    gpu_busy_s: float
    cpu_busy_s: float
    h2d_busy_s: float
    d2h_busy_s: float
    forced: int = 0  # CPU decodes the starvation bound forced into this plan

    @classmethod
    def of(
        cls, plan: Plan, start_s: float, duration_s: float, busy: Mapping[Lane, float]
    ) -> IterationRecord:
        """The record of `plan`, run from `start_s` for `duration_s` with `busy` lanes."""
        return cls(
            step=plan.step,
            start_s=start_s,
            duration_s=duration_s,
            predicted_s=plan.predicted_s,
            mode=plan.mode.value,
            prefill_tokens=sum(p.num_tokens for p in plan.prefills),
            num_prefills=len(plan.prefills),
            num_gpu_decodes=len(plan.gpu_decodes),
            num_cpu_decodes=len(plan.cpu_decodes),
            swap_out=len(plan.swap_out),
            swap_in=len(plan.swap_in),
            gpu_busy_s=busy[Lane.GPU],
            cpu_busy_s=busy[Lane.CPU],
            h2d_busy_s=busy[Lane.H2D],
            d2h_busy_s=busy[Lane.D2H],
            forced=len(plan.forced_ids),
        )


@dataclass(frozen=True)
class SLO:
    """Service-level objectives for goodput (seconds); None = not required."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    per_token_s: float | None = None  # mean per-token latency, E2E / tokens (NEO's bound)


@dataclass
class IterationTotals:
    """Sums over iterations: everything the summary needs, in constant memory."""

    count: int = 0
    duration_s: float = 0.0
    gpu_busy_s: float = 0.0
    cpu_busy_s: float = 0.0
    h2d_busy_s: float = 0.0
    d2h_busy_s: float = 0.0
    pipelined: int = 0
    fused: int = 0
    seqs: int = 0
    cpu_decodes: int = 0
    forced_s: float = 0.0  # time of plans with starvation-forced CPU decodes

    def add(self, r: IterationRecord) -> None:
        self.add_values(
            r.duration_s,
            r.gpu_busy_s,
            r.cpu_busy_s,
            r.h2d_busy_s,
            r.d2h_busy_s,
            pipelined=r.mode == "pipelined",
            fused=r.mode == "fused",
            seqs=r.num_prefills + r.num_gpu_decodes + r.num_cpu_decodes,
            cpu_decodes=r.num_cpu_decodes,
            forced=r.forced > 0,
        )

    def add_plan(self, plan: Plan, duration_s: float, busy: Mapping[Lane, float]) -> None:
        """`add(IterationRecord.of(plan, ..., duration_s, busy))` without building the record
        (the simulator keeps none by default)."""
        self.add_values(
            duration_s,
            busy[Lane.GPU],
            busy[Lane.CPU],
            busy[Lane.H2D],
            busy[Lane.D2H],
            pipelined=plan.mode == "pipelined",
            fused=plan.mode == "fused",
            seqs=plan.num_seqs,
            cpu_decodes=sum(len(sb.cpu_decodes) for sb in plan.sub_batches),
            forced=len(plan.forced_ids) > 0,
        )

    def add_values(
        self,
        duration_s: float,
        gpu_busy_s: float,
        cpu_busy_s: float,
        h2d_busy_s: float,
        d2h_busy_s: float,
        pipelined: bool,
        seqs: int,
        cpu_decodes: int,
        forced: bool = False,
        fused: bool = False,
    ) -> None:
        """One iteration's values, without building its record (steady runs)."""
        self.count += 1
        self.duration_s += duration_s
        self.gpu_busy_s += gpu_busy_s
        self.cpu_busy_s += cpu_busy_s
        self.h2d_busy_s += h2d_busy_s
        self.d2h_busy_s += d2h_busy_s
        self.pipelined += pipelined
        self.fused += fused
        self.seqs += seqs
        self.cpu_decodes += cpu_decodes
        if forced:
            self.forced_s += duration_s

    @classmethod
    def of(cls, records: Iterable[IterationRecord]) -> IterationTotals:
        totals = cls()
        for r in records:
            totals.add(r)
        return totals


class GapLog:
    """Inter-token gaps (ITL), pooled over requests, stored as (gap, count) runs: a steady run
    of iterations adds one gap per iteration for all its requests at once."""

    def __init__(self) -> None:
        self._gaps: list[float] = []
        self._counts: list[int] = []

    def append(self, gap: float) -> None:
        self._gaps.append(gap)
        self._counts.append(1)

    def add(self, gap: float, count: int) -> None:
        if count > 0:
            self._gaps.append(gap)
            self._counts.append(count)

    def add_each(self, gaps: list[float], count: int) -> None:
        """`add(gap, count)` for every gap in `gaps` (a steady run's iterations)."""
        if count > 0:
            self._gaps.extend(gaps)
            self._counts.extend([count] * len(gaps))

    def extend(self, gaps: Iterable[float]) -> None:
        for gap in gaps:
            self.append(gap)

    def values(self) -> np.ndarray:
        return np.repeat(np.asarray(self._gaps, dtype=float), np.asarray(self._counts, dtype=int))


@dataclass
class Metrics:
    """A run's records: every request, the iteration totals, the pooled inter-token gaps, and
    (when kept) one record per iteration."""

    requests: list[RequestRecord]
    totals: IterationTotals
    itl: GapLog = field(default_factory=GapLog)
    iterations: list[IterationRecord] = field(default_factory=list)

    @classmethod
    def of(
        cls, requests: list[RequestRecord], iterations: list[IterationRecord], itl: GapLog
    ) -> Metrics:
        """Metrics whose iteration records are all kept (the engine, the load benchmark)."""
        return cls(requests, IterationTotals.of(iterations), itl, iterations)

    def requests_frame(self) -> pd.DataFrame:
        """One row per request, REQUEST_COLUMNS (built column by column: 10k rows in ~0.05 s)."""
        requests = self.requests
        latencies = [r.latency() for r in requests]
        columns: dict[str, list] = {}
        for name in REQUEST_COLUMNS:
            if name in LATENCY_COLUMNS:
                columns[name] = [getattr(x, name) for x in latencies]
            else:
                columns[name] = [getattr(r, name) for r in requests]
        return pd.DataFrame(columns, columns=REQUEST_COLUMNS)

    def iterations_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [vars(i) for i in self.iterations], columns=list(IterationRecord.__dataclass_fields__)
        )

    def summary(
        self, slo: SLO | None = None, frame: pd.DataFrame | None = None
    ) -> dict[str, float]:
        """summary.json's values; `frame`: this run's `requests_frame()` if already built."""
        frame = self.requests_frame() if frame is None else frame
        return summarize(frame, self.totals, self.itl.values(), slo)


def _percentiles(prefix: str, values: pd.Series | np.ndarray, out: dict[str, float]) -> None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(values, p)) if len(values) else float("nan")
    out[f"{prefix}_mean"] = float(values.mean()) if len(values) else float("nan")


def summarize(
    requests: pd.DataFrame, totals: IterationTotals, itl_s=(), slo: SLO | None = None
) -> dict[str, float]:
    """The flat summary written to summary.json (seconds as floats)."""
    done = requests[requests["status"] == "finished"]
    out: dict[str, float] = {
        "num_requests": float(len(requests)),
        "completed": float(len(done)),
        "rejected": float((requests["status"] == "rejected").sum()),
    }
    if len(done):
        span = float(done["finish_s"].max() - requests["arrival_s"].min())
    else:
        span = float("nan")
    out["duration_s"] = span
    out["throughput_req_s"] = len(done) / span if span and span > 0 else float("nan")
    tokens = float(done["num_tokens"].sum())
    out["throughput_tok_s"] = tokens / span if span and span > 0 else float("nan")
    _percentiles("ttft", done["ttft_s"], out)
    _percentiles("tpot", done["tpot_s"], out)
    _percentiles("e2e", done["e2e_s"], out)
    _percentiles("per_token_latency", done["per_token_s"], out)
    _percentiles("itl", np.asarray(itl_s, dtype=float), out)
    gaps = done["max_token_gap_s"].to_numpy(dtype=float)
    out["max_token_gap_p99_s"] = float(np.percentile(gaps, 99)) if len(gaps) else float("nan")
    out["max_token_gap_max_s"] = float(gaps.max()) if len(gaps) else float("nan")
    # The starvation bound's unit: iterations a host resident waited for progress.
    waits = done["max_host_wait_steps"].to_numpy(dtype=float)
    out["max_host_wait_steps_max"] = float(waits.max()) if len(waits) else float("nan")
    if slo is not None and len(done):
        ok = np.ones(len(done), dtype=bool)
        if slo.ttft_s is not None:
            ok &= done["ttft_s"].to_numpy() <= slo.ttft_s
        if slo.tpot_s is not None:
            ok &= np.nan_to_num(done["tpot_s"].to_numpy(), nan=0.0) <= slo.tpot_s
        if slo.e2e_s is not None:
            ok &= done["e2e_s"].to_numpy() <= slo.e2e_s
        if slo.per_token_s is not None:
            ok &= done["per_token_s"].to_numpy() <= slo.per_token_s
        out["goodput_req_s"] = float(ok.sum()) / span if span > 0 else float("nan")
        # Who the goodput serves: the share of all requests within the SLO, and of the quarter
        # with the longest prompts (a rule that favours short prompts shows here; rejected and
        # unfinished requests count as missed).
        out["slo_met_share"] = float(ok.sum()) / len(requests)
        cutoff = requests["prompt_len"].quantile(0.75)
        long_ids = requests.loc[requests["prompt_len"] >= cutoff, "request_id"]
        met_long = done["request_id"][ok].isin(long_ids).sum()
        out["slo_met_share_long_prompts"] = float(met_long) / len(long_ids)
    if totals.count and span and span > 0:
        n = totals.count
        out["gpu_busy"] = totals.gpu_busy_s / span
        out["cpu_busy"] = totals.cpu_busy_s / span
        out["pcie_busy"] = (totals.h2d_busy_s + totals.d2h_busy_s) / (2 * span)  # two directions
        out["num_iterations"] = float(n)
        out["pipelined_fraction"] = totals.pipelined / n
        out["fused_fraction"] = totals.fused / n
        out["mean_batch_size"] = totals.seqs / n
        out["mean_cpu_decodes"] = totals.cpu_decodes / n
        out["iteration_s_mean"] = totals.duration_s / n
        out["forced_time_share"] = totals.forced_s / totals.duration_s
    out["cpu_served_fraction"] = float((done["cpu_steps"] > 0).mean()) if len(done) else 0.0
    return out
