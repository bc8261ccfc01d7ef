"""The discrete-event simulator: arrivals -> scheduler -> iteration time -> completions.

One engine serves one arrival stream, so the event loop is plain: admit every request that
has arrived by the clock, ask the policy for a plan, advance the clock by the plan's duration
under the timing model (not the scheduler's own estimate, as in a real system), report the
iteration back to the policy and record tokens; when idle, jump to the next arrival. An
arrival at exactly the clock's time is admitted before the next step. (The first wave ran the
same loop as two simpy processes; a sorted arrival list and one clock do it exactly, and let
a steady run of iterations advance in one go.)

Steady runs: when the policy promises that the next iterations repeat the last plan with
contexts one token longer (`Policy.steady_run`), the simulator advances them without calling
`step()`, with each iteration's exact estimate and duration, until an arrival is due or
requests finish (then the next steady run, if any, follows at once). `steady_runs=False`
turns this off; `tests/sim/test_steady_runs.py` checks both give the same results.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from neo_sim.costmodel import CostModel
from neo_sim.errors import NeoError
from neo_sim.lanes import Span
from neo_sim.latency import RequestRecord, tokens_at
from neo_sim.metrics import GapLog, IterationRecord, IterationTotals, Metrics
from neo_sim.scheduler import Mode, Policy, Request, SchedulerConfig, make_policy
from neo_sim.scheduler.base import SteadyRun
from neo_sim.scheduler.estimate import gpu_decodes_pricer
from neo_sim.scheduler.plan import Plan, request_ids_of
from neo_sim.timing import TimingModel
from neo_sim.workload import RequestSpec

log = logging.getLogger(__name__)
STEADY_CHUNK = 16  # iterations of a steady run priced at once, at first (a speed setting only)


@dataclass
class SimResult:
    metrics: Metrics
    policy: str
    timeline: list[tuple[int, float, Span]]  # (step, iteration start, span), if recorded
    plans: list[Plan]  # if recorded
    scheduler_s: float  # wall time spent inside policy.step()
    steady_iterations: int  # iterations advanced as steady runs, without step()
    first_rejection: str | None = None  # why the first rejected request can never run
    complete_s: float = 0.0  # wall time inside policy.complete(): the books after each step


class Simulation:
    """One policy over one workload on one cost model."""

    def __init__(
        self,
        policy: str | Policy,
        config: SchedulerConfig,
        cost: CostModel,
        workload: Sequence[RequestSpec],
        noise: float = 0.0,
        seed: int = 0,
        record_timeline: int = 0,
        record_plans: bool = False,
        record_iterations: bool = True,
        steady_runs: bool = True,
        clock: str = "timing",
        lanes_share_compute: bool = False,
        replay_s: Sequence[float] | None = None,
        clock_cost: Callable[[float], CostModel] | None = None,
        replay_starts_s: Sequence[float] | None = None,
    ):
        """`record_timeline`: lane spans of the first N iterations; `record_plans`: every plan
        (tests); `record_iterations`: one IterationRecord per iteration (else totals only, in
        constant memory); `clock="predicted"` advances by the scheduler's own estimate;
        `replay_s`: the k-th iteration takes replay_s[k] seconds (a real run's measured
        iteration periods: the trace-driven mode, whose error is the queueing and scheduling
        model's alone), iterations beyond it the timing model's; with `replay_starts_s` (when
        each of those iterations started, on the workload's clock) the pairing starts again
        after every idle wait: the first iteration after one takes the period of the real one
        that started nearest it, the next ones the real ones that followed it. Paired by index
        alone, one iteration more or fewer anywhere (an arrival that fell on the other side of
        an iteration's end) would pair every later iteration with another's period; paired by
        start time alone, the real run's few microseconds between steps, which the periods
        leave out, would add up through a busy stretch until iterations paired with their
        neighbours. `clock_cost`: the cost model
        the clock prices an iteration starting at time t with (a machine whose speed changed
        during a real run, e.g. `neo_sim.bandwidth.at_bandwidth` at the bandwidth sampled
        then), while the policy plans with `cost` as the real scheduler did."""
        self.policy = policy if isinstance(policy, Policy) else make_policy(policy, config, cost)
        if clock not in ("timing", "predicted"):
            raise ValueError("clock must be 'timing' or 'predicted'")
        self.clock = clock
        self.cost = cost
        self.timing = TimingModel(cost, config.block_size, noise, seed, lanes_share_compute)
        self.workload = sorted(workload, key=lambda r: (r.arrival_s, r.request_id))
        self.record_timeline = record_timeline
        self.record_plans = record_plans
        self.record_iterations = record_iterations
        self.replay_s = list(replay_s) if replay_s is not None else None
        self.replay_starts_s = list(replay_starts_s) if replay_starts_s is not None else None
        self._replay_next: int | None = None  # the next period to take; None: pair by time
        if self.replay_starts_s is not None and (
            self.replay_s is None or len(self.replay_starts_s) != len(self.replay_s)
        ):
            raise ValueError("replay_starts_s needs replay_s, one start per period")
        self.clock_cost = clock_cost
        self._clock_timing: dict[CostModel, TimingModel] = {}  # clock_cost's, one per model
        self._timing_args = (config.block_size, noise, seed, lanes_share_compute)
        # Steady runs skip step(): not while plans, lane spans or per-task noise must be drawn,
        # nor while iterations take replayed times or a clock whose costs change.
        self.steady_runs = (
            steady_runs
            and not record_plans
            and noise == 0
            and replay_s is None
            and clock_cost is None
        )
        self.records = {
            r.request_id: RequestRecord(
                request_id=r.request_id,
                arrival_s=r.arrival_s,
                prompt_len=r.prompt_len,
                output_len=r.output_len,
            )
            for r in self.workload
        }
        self.totals = IterationTotals()
        self.iterations: list[IterationRecord] = []
        self.itl = GapLog()
        self.timeline: list[tuple[int, float, Span]] = []
        self.plans: list[Plan] = []
        self.scheduler_s = 0.0
        self.complete_s = 0.0
        self.steady_iterations = 0
        self.now = 0.0
        self._next = 0  # index of the next arrival in self.workload
        self.rejected = 0
        self.first_rejection: str | None = None

    def run(self) -> SimResult:
        policy = self.policy
        while True:
            self._admit_arrivals()
            if not policy.has_work:
                if not self._idle_until_next_arrival():
                    break
                continue
            started = time.perf_counter()
            plan = policy.step(self.now)
            self.scheduler_s += time.perf_counter() - started
            if plan.is_empty:
                if plan.changes_books:
                    continue  # e.g. a host-pool deadlock broken by dropping KV: step again
                if not self._idle_until_next_arrival():
                    raise RuntimeError(f"{policy.name}: scheduler stalled with work left")
                continue
            self._run_plan(plan)
            if self.steady_runs and self.totals.count >= self.record_timeline:
                self._run_steadily()
        pending = [r for r in self.records.values() if r.status == "pending"]
        if pending:
            raise RuntimeError(f"simulation ended with {len(pending)} requests unfinished")
        metrics = Metrics(list(self.records.values()), self.totals, self.itl, self.iterations)
        return SimResult(
            metrics,
            policy.name,
            self.timeline,
            self.plans,
            self.scheduler_s,
            self.steady_iterations,
            self.first_rejection,
            self.complete_s,
        )

    # ---- arrivals ------------------------------------------------------------------------------
    def _admit_arrivals(self) -> None:
        """Hand the policy every request that has arrived by the clock."""
        workload = self.workload
        while self._next < len(workload) and workload[self._next].arrival_s <= self.now:
            spec = workload[self._next]
            self._next += 1
            try:
                self.policy.add(
                    Request(
                        spec.request_id, spec.prompt_len, spec.output_len, arrival_s=spec.arrival_s
                    )
                )
            except NeoError as exc:
                self.records[spec.request_id].status = "rejected"
                self.rejected += 1
                if self.rejected == 1:
                    self.first_rejection = str(exc)
                    log.warning(
                        "%s: rejecting requests that can never fit, first: %s",
                        self.policy.name,
                        exc,
                    )

    def _next_arrival_s(self) -> float:
        if self._next < len(self.workload):
            return self.workload[self._next].arrival_s
        return float("inf")

    def _idle_until_next_arrival(self) -> bool:
        """Nothing can run: jump the clock to the next arrival; False if there is none."""
        if self._next >= len(self.workload):
            return False
        self.now = max(self.now, self.workload[self._next].arrival_s)
        self._replay_next = None  # a replay pairs by start time again
        return True

    def _timing_at(self, t: float) -> TimingModel:
        """The timing model of an iteration starting at time t under `clock_cost` (one timing
        model per cost model it returns, kept with it)."""
        cost = self.clock_cost(t)
        timing = self._clock_timing.get(cost)
        if timing is None:
            timing = self._clock_timing[cost] = TimingModel(cost, *self._timing_args)
        return timing

    # ---- one iteration -------------------------------------------------------------------------
    def _run_plan(self, plan: Plan) -> None:
        record = self.totals.count < self.record_timeline
        start = self.now
        timing = (self.timing if self.clock_cost is None else self._timing_at(start)).run(
            plan, record=record
        )
        k = self.totals.count
        replayed = self._replayed(k, start) if self.replay_s is not None else None
        if replayed is not None:
            self.now = start + replayed
        else:
            self.now = start + (
                plan.predicted_s if self.clock == "predicted" else timing.duration_s
            )
        policy, now = self.policy, self.now
        producers = [
            p.request_id for p in plan.prefills if p.end >= policy.requests[p.request_id].seq_len
        ]
        for sb in plan.sub_batches:
            producers += request_ids_of(sb.gpu_decodes)
        for sb in plan.sub_batches:
            producers += request_ids_of(sb.cpu_decodes)
        records = self.records
        self.itl.add_each(tokens_at([records[rid] for rid in producers], now), 1)
        started = time.perf_counter()
        done = policy.complete(plan)
        self.complete_s += time.perf_counter() - started
        for r in done:
            self._finish(r)
        if self.record_iterations:
            iteration = IterationRecord.of(plan, start, timing.duration_s, timing.busy_s)
            self.totals.add(iteration)
            self.iterations.append(iteration)
        else:
            self.totals.add_plan(plan, timing.duration_s, timing.busy_s)
        if record:
            self.timeline.extend((plan.step, start, span) for span in timing.spans)
        if self.record_plans:
            self.plans.append(plan)

    def _replayed(self, k: int, start: float) -> float | None:
        """The replayed period of the k-th iteration, starting at `start` (None: beyond the
        replay, the timing model's)."""
        periods, starts = self.replay_s, self.replay_starts_s
        if starts is None:
            return periods[k] if k < len(periods) else None
        j = self._replay_next
        if j is None:  # the first iteration, or the first after an idle wait
            j = bisect.bisect_left(starts, start)
            if j == len(starts) or (j > 0 and start - starts[j - 1] <= starts[j] - start):
                j -= 1
        if not 0 <= j < len(periods):
            return None
        self._replay_next = j + 1
        return periods[j]

    def _finish(self, r: Request) -> None:
        rec = self.records[r.request_id]
        rec.finish_s, rec.status = self.now, "finished"
        rec.gpu_steps, rec.cpu_steps = r.gpu_steps, r.cpu_steps
        rec.max_host_wait_steps = r.max_host_wait_steps
        rec.preemptions, rec.swaps = r.num_preemptions, r.num_swaps

    # ---- steady runs ---------------------------------------------------------------------------
    def _run_steadily(self) -> None:
        """Advance steady runs while the policy offers them: a run that ends because its
        last iteration finished requests is often followed by another, one request shorter."""
        run = self.policy.steady_run()
        while run is not None and self._run_steady(run):
            run = self.policy.steady_run()

    def _steady_attention(
        self,
        run: SteadyRun,
        next_arrival: float,
        timed: Callable[[float], tuple[float, float]],
    ) -> Iterator[float]:
        """Each iteration's GPU attention in `run` (`gpu_attn_s` of its decodes alone), looked
        up in chunks: a few, then about as many as fit before the next arrival if none took
        longer than the first (only a guess of how many will be used: more follow if needed)."""
        n, total, left = run.batch, run.total_context, run.max_iterations
        chunk = STEADY_CHUNK
        while left > 0:
            values = self.cost.gpu_decode_attn_run(n, total, min(chunk, left))
            yield from values
            if chunk == STEADY_CHUNK:
                first = timed(values[0])[0]
                fit = (next_arrival - self.now) / first if first > 0 else math.inf
                chunk = max(STEADY_CHUNK, int(min(fit, left)) - STEADY_CHUNK + 8)
            else:
                chunk *= 2
            left -= len(values)
            total += n * len(values)

    def _run_steady(self, run: SteadyRun) -> bool:
        """Advance the iterations of `run` that start before the next arrival, each with the
        duration and estimate its plan would have, then update the books in one go. Whether
        the run went to its end (else an arrival is due)."""
        n, first_step = run.batch, self.policy.step_index + 1
        next_arrival = self._next_arrival_s()
        timed = self.timing.gpu_decodes_pricer(n)
        predicted_of = gpu_decodes_pricer(self.cost, n)
        predicted_clock, keep = self.clock == "predicted", self.record_iterations
        totals, now = self.totals, self.now
        # Running sums in the order IterationTotals.add would make them (the other lanes'
        # sums gain 0.0 per iteration).
        duration_sum, gpu_sum = totals.duration_s, totals.gpu_busy_s
        starts: list[float] = []
        for gpu_attn in self._steady_attention(run, next_arrival, timed):
            if now >= next_arrival:
                break
            duration, gpu_busy = timed(gpu_attn)  # the GPU is the only lane busy
            starts.append(now)
            duration_sum += duration
            gpu_sum += gpu_busy
            if keep or predicted_clock:
                predicted = predicted_of(gpu_attn)
                if keep:
                    self.iterations.append(
                        IterationRecord(
                            step=first_step + len(starts) - 1,
                            start_s=now,
                            duration_s=duration,
                            predicted_s=predicted,
                            mode=Mode.SEQUENTIAL.value,
                            prefill_tokens=0,
                            num_prefills=0,
                            num_gpu_decodes=n,
                            num_cpu_decodes=0,
                            swap_out=0,
                            swap_in=0,
                            gpu_busy_s=gpu_busy,
                            cpu_busy_s=0.0,
                            h2d_busy_s=0.0,
                            d2h_busy_s=0.0,
                        )
                    )
                now += predicted if predicted_clock else duration
            else:
                now += duration
        self.now = now
        k = len(starts)
        if not k:
            return False
        totals.count += k
        totals.seqs += n * k
        totals.duration_s, totals.gpu_busy_s = duration_sum, gpu_sum
        # Tokens: every request gets one at each iteration's end.
        ends = starts[1:] + [now]
        gaps = [ends[j] - ends[j - 1] for j in range(1, k)]
        longest = max(gaps, default=0.0)
        first_end, records = ends[0], self.records
        first_gaps = []  # each request's gap to its last token before the run, in plan order
        for r in run.requests:
            rec = records[r.request_id]
            if rec.num_tokens == 0:
                # Its first token: a chunked prefill stopped one token short of the prompt, and
                # that last prompt token runs as a decode does (`Request.is_prefilling`).
                rec.first_token_s = first_end
                rec.max_token_gap_s = max(rec.max_token_gap_s, longest)
            else:
                first_gap = first_end - rec.last_token_s
                first_gaps.append(first_gap)
                rec.max_token_gap_s = max(rec.max_token_gap_s, first_gap, longest)
            rec.last_token_s = now
            rec.num_tokens += k
        self.itl.add_each(first_gaps, 1)
        self.itl.add_each(gaps, n)
        for r in self.policy.advance_steady(run, k, starts[-1]):
            self._finish(r)
        self.steady_iterations += k
        return k == run.max_iterations


def simulate(
    policy: str, config: SchedulerConfig, cost: CostModel, workload: Sequence[RequestSpec], **kwargs
) -> SimResult:
    """Run one simulation (see `Simulation`)."""
    return Simulation(policy, config, cost, workload, **kwargs).run()
