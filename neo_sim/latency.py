"""Request latency, defined once, as vLLM's serving benchmark defines it.

TTFT = first token - arrival; E2E = finish - arrival; TPOT = (E2E - TTFT) / (tokens - 1);
per-token latency = E2E / tokens; ITL pools every gap between consecutive tokens. Fairness:
a request's longest gap between two consecutive tokens (`max_token_gap_s`), the stall a
CPU-resident request feels when the scheduler passes it over. The
simulator's metrics, the engine's outputs, neo-serve's Prometheus histograms, the fidelity
report and the load benchmark all compute them here. Seconds throughout. Pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Latency:
    """The latency metrics of one request (NaN where undefined: no token yet, one token)."""

    ttft_s: float
    tpot_s: float
    e2e_s: float
    per_token_s: float

    @classmethod
    def of(
        cls, arrival_s: float, first_token_s: float | None, finish_s: float | None, tokens: int
    ) -> Latency:
        first = math.nan if first_token_s is None else first_token_s
        finish = math.nan if finish_s is None else finish_s
        ttft, e2e = first - arrival_s, finish - arrival_s
        tpot = (e2e - ttft) / (tokens - 1) if tokens > 1 else math.nan
        per_token = e2e / tokens if tokens > 0 else math.nan
        return cls(ttft, tpot, e2e, per_token)


@dataclass
class RequestRecord:
    """One request's timeline as a serving system saw it (simulated, served or measured)."""

    request_id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    finish_s: float = math.nan
    num_tokens: int = 0
    max_token_gap_s: float = 0.0  # the longest gap between two consecutive tokens
    gpu_steps: int = 0
    cpu_steps: int = 0
    max_host_wait_steps: int = 0  # iterations, the longest wait as a host resident
    preemptions: int = 0
    swaps: int = 0
    status: str = "pending"  # finished | aborted | rejected | pending

    def on_token(self, now: float, itl: list[float]) -> None:
        """A token arrived at `now`: the first sets TTFT, every later one adds an ITL gap."""
        itl.extend(tokens_at((self,), now))

    def latency(self) -> Latency:
        return Latency.of(self.arrival_s, self.first_token_s, self.finish_s, self.num_tokens)

    @property
    def ran_on(self) -> str:
        if self.gpu_steps and self.cpu_steps:
            return "both"
        return "cpu" if self.cpu_steps else "gpu"


def tokens_at(records: Iterable[RequestRecord], now: float) -> list[float]:
    """One token arrived at `now` for each of `records` (`RequestRecord.on_token` of each, in
    one loop: the simulator calls this for every iteration's requests): the ITL gaps they add,
    in order."""
    gaps = []
    for rec in records:
        if rec.num_tokens == 0:
            rec.first_token_s = now
        else:
            gap = now - rec.last_token_s
            gaps.append(gap)
            if gap > rec.max_token_gap_s:
                rec.max_token_gap_s = gap
        rec.last_token_s = now
        rec.num_tokens += 1
    return gaps
