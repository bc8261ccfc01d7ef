"""Feed a workload's arrivals to the engine between iterations, as the simulator does.

With the engine's predicted clock, idle gaps are jumped over (as the simulator jumps to the next
event); with the wall clock, the driver waits for each arrival in real time. Either way a
request enters the scheduler before the first step that starts at or after its arrival time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from neo_engine.bandwidth import BandwidthTrace
from neo_engine.engine import LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams
from neo_sim.workload import RequestSpec


def prompt_tokens(spec: RequestSpec, vocab: int) -> list[int]:
    """A deterministic prompt of the requested length (random weights make content moot)."""
    return [1 + (spec.request_id * 7919 + i * 104729) % (vocab - 1) for i in range(spec.prompt_len)]


def replay(
    engine: LLMEngine, workload: Sequence[RequestSpec], trace: BandwidthTrace | None = None
) -> list[RequestOutput]:
    """Run the workload to completion; returns every request's final output. With a `trace`
    (on the engine's clock), the memory bandwidth is sampled at the start (unless the trace
    has a sample already: one taken before the clock started costs the run nothing), between steps
    every `trace.every_s`, in idle waits for an arrival, and at the end."""
    pending = sorted(workload, key=lambda r: (r.arrival_s, r.request_id))
    vocab = engine.spec.vocab_size
    finished: dict[int, RequestOutput] = {}
    predicted = engine.config.clock == "predicted"
    i = 0
    if trace and not trace.samples:
        trace.sample()
    while i < len(pending) or engine.has_unfinished():
        if trace:
            trace.maybe_sample()
        now = engine.now()
        waiting = (
            not engine.has_unfinished() or engine.idle_step
        )  # nothing can run until an arrival
        if waiting and i < len(pending) and pending[i].arrival_s > now:
            if predicted:
                engine.advance_clock_to(pending[i].arrival_s)
            else:
                if trace:
                    trace.sample_while_idle(pending[i].arrival_s - now)
                # the arrival process: real time passes
                time.sleep(max(0.0, pending[i].arrival_s - engine.now()))
            now = engine.now()
        while i < len(pending) and pending[i].arrival_s <= now:
            spec = pending[i]
            params = SamplingParams(max_tokens=spec.output_len, temperature=0, ignore_eos=True)
            engine.add_request(
                prompt_tokens(spec, vocab),
                params,
                request_id=spec.request_id,
                arrival_s=spec.arrival_s,
            )
            i += 1
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if engine.idle_step and engine.has_unfinished() and i >= len(pending):
            raise RuntimeError("the scheduler stalled: work left, nothing runnable, no arrivals")
    if trace:
        trace.sample()
    return [finished[r.request_id] for r in workload if r.request_id in finished]
