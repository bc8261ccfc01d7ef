"""The discrete-event simulator: arrivals -> scheduler -> iteration time -> completions.

Two simpy processes tell the story. `arrivals` hands each request to the policy at its arrival
time and wakes the engine if it idles. `engine` loops: ask the policy for a plan, hold the
clock for the plan's duration under the timing model (not the scheduler's own estimate, as in
a real system), then report the iteration back to the policy and record tokens. simpy only
orders events; the policy decides and the cost model prices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import simpy

from neo_sim.costmodel import CostModel
from neo_sim.errors import NeoError
from neo_sim.lanes import Span
from neo_sim.latency import RequestRecord
from neo_sim.metrics import IterationRecord, Metrics
from neo_sim.scheduler import Policy, Request, SchedulerConfig, make_policy
from neo_sim.scheduler.plan import Plan
from neo_sim.timing import IterationTiming, TimingModel
from neo_sim.workload import RequestSpec

log = logging.getLogger(__name__)


@dataclass
class SimResult:
    metrics: Metrics
    policy: str
    timeline: list[tuple[int, float, Span]]  # (step, iteration start, event), if recorded
    plans: list[Plan]  # if recorded
    scheduler_s: float  # wall time spent inside policy.step()


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
        clock: str = "timing",
        lanes_share_compute: bool = False,
    ):
        self.policy = policy if isinstance(policy, Policy) else make_policy(policy, config, cost)
        if clock not in ("timing", "predicted"):
            raise ValueError("clock must be 'timing' or 'predicted'")
        self.clock = clock  # "predicted": advance by the scheduler's own estimate (tests)
        self.timing = TimingModel(cost, config.block_size, noise, seed, lanes_share_compute)
        self.workload = sorted(workload, key=lambda r: (r.arrival_s, r.request_id))
        self.record_timeline = record_timeline  # record lane events of the first N iterations
        self.record_plans = record_plans
        self.records = {
            r.request_id: RequestRecord(
                request_id=r.request_id,
                arrival_s=r.arrival_s,
                prompt_len=r.prompt_len,
                output_len=r.output_len,
            )
            for r in self.workload
        }
        self.iterations: list[IterationRecord] = []
        self.itl: list[float] = []
        self.timeline: list[tuple[int, float, Span]] = []
        self.plans: list[Plan] = []
        self.scheduler_s = 0.0
        self._env = simpy.Environment()
        self._wake: simpy.Event | None = None
        self._arrived = 0
        self.rejected = 0

    def run(self) -> SimResult:
        self._env.process(self._arrivals())
        self._env.process(self._engine())
        self._env.run()
        pending = [r for r in self.records.values() if r.status == "pending"]
        if pending:
            raise RuntimeError(f"simulation ended with {len(pending)} requests unfinished")
        return SimResult(
            Metrics(list(self.records.values()), self.iterations, self.itl),
            self.policy.name,
            self.timeline,
            self.plans,
            self.scheduler_s,
        )

    # ---- processes ---------------------------------------------------------------------------
    def _arrivals(self):
        env = self._env
        for spec in self.workload:
            if spec.arrival_s > env.now:
                yield env.timeout(spec.arrival_s - env.now)
            self._admit(spec)
            self._arrived += 1
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()

    def _admit(self, spec: RequestSpec) -> None:
        try:
            self.policy.add(
                Request(spec.request_id, spec.prompt_len, spec.output_len, arrival_s=spec.arrival_s)
            )
        except NeoError as exc:
            self.records[spec.request_id].status = "rejected"
            self.rejected += 1
            if self.rejected == 1:
                log.warning(
                    "%s: rejecting requests that can never fit, first: %s", self.policy.name, exc
                )

    def _engine(self):
        import time

        env, policy = self._env, self.policy
        while True:
            if not policy.has_work:
                if self._arrived == len(self.workload):
                    return
                self._wake = env.event()
                yield self._wake
                continue
            started = time.perf_counter()
            plan = policy.step(env.now)
            self.scheduler_s += time.perf_counter() - started
            if plan.is_empty:
                if self._arrived == len(self.workload):
                    raise RuntimeError(f"{policy.name}: scheduler stalled with work left")
                self._wake = env.event()
                yield self._wake  # nothing runnable until something arrives
                continue
            record = len(self.iterations) < self.record_timeline
            timing = self.timing.run(plan, record=record)
            start = env.now
            yield env.timeout(plan.predicted_s if self.clock == "predicted" else timing.duration_s)
            self._account(plan, timing, start, record)

    # ---- bookkeeping -------------------------------------------------------------------------
    def _account(self, plan: Plan, timing: IterationTiming, start: float, record: bool) -> None:
        now, policy = self._env.now, self.policy
        producers = [
            p.request_id for p in plan.prefills if p.end >= policy.requests[p.request_id].seq_len
        ]
        producers += [d.request_id for d in plan.gpu_decodes]
        producers += [d.request_id for d in plan.cpu_decodes]
        for rid in producers:
            self.records[rid].on_token(now, self.itl)
        for r in policy.complete(plan):
            rec = self.records[r.request_id]
            rec.finish_s, rec.status = now, "finished"
            rec.gpu_steps, rec.cpu_steps = r.gpu_steps, r.cpu_steps
            rec.preemptions, rec.swaps = r.num_preemptions, r.num_swaps
        self.iterations.append(IterationRecord.of(plan, start, timing.duration_s, timing.busy_s))
        if record:
            self.timeline.extend((plan.step, start, span) for span in timing.spans)
        if self.record_plans:
            self.plans.append(plan)


def simulate(
    policy: str, config: SchedulerConfig, cost: CostModel, workload: Sequence[RequestSpec], **kwargs
) -> SimResult:
    """Run one simulation (see `Simulation`)."""
    return Simulation(policy, config, cost, workload, **kwargs).run()
