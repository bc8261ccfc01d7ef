"""Request streams: arrival times and lengths, seeded and reproducible.

Arrivals follow vLLM's serving benchmark (docs/architecture.md, "Conventions"): gaps are
gamma-distributed with shape `burstiness` (1 = Poisson) and mean 1/rate, and the cumulative
times are rescaled so that the last request arrives at exactly N/rate seconds. `rate = inf`
sends everything at t = 0 (offline throughput). Lengths are fixed, uniform in [0.9 L, 1.1 L]
(the paper's synthetic workloads), or read from a trace.

Trace files are CSV with columns `num_prefill_tokens,num_decode_tokens` and an optional
`arrived_at` (seconds), the format of the public Azure LLM inference traces. With arrival times
and no rate, the trace's times are replayed; with a rate, the trace's times are stretched or
squeezed to that mean rate (keeping its burstiness); without arrival times, arrivals are drawn
at the rate. A run replays the trace's first requests, or (`trace_start`) a later window of it.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from neo_sim.errors import NeoError
from neo_sim.settings import check, setting

SYNTHETIC_REQUESTS = 200  # requests of a synthetic workload when --num-requests is unset


def rate_value(text: str) -> float:
    """A positive rate in req/s from text, or 'inf' (everything at t = 0)."""
    if text.lower() in ("inf", "infinite", "offline"):
        return math.inf
    return float(text)


@dataclass(frozen=True)
class WorkloadSettings:
    """What requests a run serves: their source, arrival rate and lengths."""

    workload: str = setting(
        "synthetic",
        "'synthetic' (uniform lengths around --input-len/--output-len) or 'trace:PATH' "
        "(CSV: num_prefill_tokens,num_decode_tokens[,arrived_at])",
    )
    rate: float | None = setting(
        None,
        "mean arrival rate, or 'inf' for all at once; unset: inf for synthetic, the trace's own "
        "times for a timed trace",
        unit="req/s",
        low=0,
        low_open=True,
        parse=rate_value,
    )
    num_requests: int | None = setting(
        None,
        f"requests to serve; unset: {SYNTHETIC_REQUESTS} synthetic, or the whole trace",
        unit="requests",
        low=1,
    )
    input_len: int = setting(370, "mean prompt length (synthetic)", unit="tokens", low=1)
    output_len: int = setting(45, "mean output length (synthetic)", unit="tokens", low=1)
    burstiness: float = setting(
        1.0, "gamma shape of arrival gaps: 1 = Poisson, < 1 burstier", low=0, low_open=True
    )
    seed: int = setting(0, "random seed of arrivals, lengths and timing noise")
    trace_start: int = setting(
        0,
        "requests of the trace to skip: replay the window that starts after them (its times "
        "counted from its own first arrival)",
        unit="requests",
        low=0,
    )

    def __post_init__(self) -> None:
        check(self, "workload")
        if not (self.workload == "synthetic" or self.workload.startswith("trace:")):
            raise NeoError(f"--workload must be 'synthetic' or 'trace:PATH', got {self.workload!r}")
        if self.trace_start and self.trace_path is None:
            raise NeoError("--trace-start applies to a trace workload (--workload trace:PATH)")

    @property
    def trace_path(self) -> str | None:
        return self.workload[len("trace:") :] if self.workload.startswith("trace:") else None


def build_workload(settings: WorkloadSettings) -> list[RequestSpec]:
    """The requests `settings` describe (seeded: the same settings give the same requests)."""
    s = settings
    if s.trace_path is None:
        rate = math.inf if s.rate is None else s.rate
        n = s.num_requests or SYNTHETIC_REQUESTS
        return synthetic(n, rate, s.input_len, s.output_len, s.seed, s.burstiness)
    return from_trace(s.trace_path, s.num_requests, s.rate, s.seed, s.burstiness, s.trace_start)


@dataclass(frozen=True)
class RequestSpec:
    """One request of a workload: when it arrives and how long it is."""

    request_id: int
    arrival_s: float
    prompt_len: int
    output_len: int


@dataclass(frozen=True)
class TraceRow:
    arrived_at: float | None
    prompt_len: int
    output_len: int


def arrival_times(n: int, rate: float, rng: random.Random, burstiness: float = 1.0) -> list[float]:
    """n arrival times at mean `rate` req/s; gamma gaps with shape `burstiness`, vLLM-style."""
    if n <= 0:
        return []
    if not rate > 0:
        raise NeoError(f"--rate must be > 0, got {rate}")
    if not burstiness > 0:
        raise NeoError(f"--burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    gaps = [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(n)]
    times, total = [], 0.0
    for gap in gaps:
        total += gap
        times.append(total)
    scale = (n / rate) / total  # last request at exactly N/rate, as vLLM does
    return [t * scale for t in times]


def lengths(n: int, mean: int, rng: random.Random, spread: float = 0.1) -> list[int]:
    """n lengths uniform in [(1-spread) mean, (1+spread) mean], at least 1; spread 0 = fixed."""
    if mean < 1:
        raise NeoError(f"lengths must be >= 1, got {mean}")
    if spread == 0:
        return [mean] * n
    low, high = (1 - spread) * mean, (1 + spread) * mean
    return [max(1, round(rng.uniform(low, high))) for _ in range(n)]


def synthetic(
    n: int,
    rate: float,
    input_len: int,
    output_len: int,
    seed: int = 0,
    burstiness: float = 1.0,
    spread: float = 0.1,
) -> list[RequestSpec]:
    """The paper's synthetic workload: uniform lengths around the means, gamma arrivals."""
    if n <= 0:
        raise NeoError(f"--num-requests must be > 0, got {n}")
    rng = random.Random(seed)
    times = arrival_times(n, rate, rng, burstiness)
    prompts = lengths(n, input_len, rng, spread)
    outputs = lengths(n, output_len, rng, spread)
    return [RequestSpec(i, t, p, o) for i, (t, p, o) in enumerate(zip(times, prompts, outputs))]


def read_trace(path: str | Path) -> list[TraceRow]:
    """Parse a trace CSV; NeoError naming file and line for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise NeoError(f"{path}: no such trace file")
    try:
        return _read_trace_rows(path)
    except UnicodeDecodeError:
        raise NeoError(f"{path}: not a text file (a trace is CSV)") from None
    except csv.Error as exc:
        raise NeoError(f"{path}: not a readable CSV ({exc})") from None


def _read_trace_rows(path: Path) -> list[TraceRow]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        missing = {"num_prefill_tokens", "num_decode_tokens"} - fields
        if missing:
            raise NeoError(
                f"{path}: missing column(s) {sorted(missing)} "
                "(need num_prefill_tokens,num_decode_tokens[,arrived_at])"
            )
        timed = "arrived_at" in fields
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                prompt = int(row["num_prefill_tokens"])
                output = int(row["num_decode_tokens"])
                arrived = float(row["arrived_at"]) if timed else None
            except (TypeError, ValueError):
                raise NeoError(f"{path}:{line}: malformed row {dict(row)}") from None
            if arrived is not None and not (math.isfinite(arrived) and arrived >= 0):
                raise NeoError(f"{path}:{line}: arrived_at must be a finite time >= 0")
            if prompt < 1 or output < 1:
                raise NeoError(f"{path}:{line}: token counts must be >= 1")
            rows.append(TraceRow(arrived, prompt, output))
    if not rows:
        raise NeoError(f"{path}: trace has no requests")
    return rows


def from_trace(
    path: str | Path,
    n: int | None = None,
    rate: float | None = None,
    seed: int = 0,
    burstiness: float = 1.0,
    start: int = 0,
) -> list[RequestSpec]:
    """`n` requests of a trace from its `start`-th on (all of them after it if `n` is None),
    timed as described in the module docstring (a timed window from its own first arrival)."""
    rows = read_trace(path)
    if start:
        if not 0 <= start < len(rows):
            raise NeoError(
                f"{path}: --trace-start {start} is past the trace's {len(rows)} requests"
            )
        rows = rows[start:]
    if n is not None:
        if n <= 0:
            raise NeoError(f"--num-requests must be > 0, got {n}")
        rows = rows[:n]
    timed = rows[0].arrived_at is not None
    if timed and rate is None:
        start = rows[0].arrived_at
        times = [r.arrived_at - start for r in rows]
    elif timed and not math.isinf(rate):
        if not rate > 0:
            raise NeoError(f"--rate must be > 0, got {rate}")
        start = rows[0].arrived_at
        span = rows[-1].arrived_at - start
        scale = (len(rows) / rate) / span if span > 0 else 0.0
        times = [(r.arrived_at - start) * scale for r in rows]
    else:
        if rate is None:
            raise NeoError(f"{path}: trace has no arrived_at column; give --rate")
        times = arrival_times(len(rows), rate, random.Random(seed), burstiness)
    return [
        RequestSpec(i, t, r.prompt_len, r.output_len) for i, (t, r) in enumerate(zip(times, rows))
    ]
