"""How long a plan really takes: per-layer tasks on four lanes, with their dependencies.

The scheduler decides with its own estimate (`neo_sim.scheduler.estimate`); the simulator's
clock follows this finer model, as a real system's clock follows the hardware. Lanes and tasks
are the shared vocabulary of `neo_sim.lanes` (the engine's executor records the same spans).
Each lane runs its tasks in issue order; a task starts when its lane is free and its inputs
are ready. Swaps come first: whole requests, every layer, out then in, before any layer work
(as the executor copies them; docs/architecture.md, "Swaps"). Then per layer i and sub-batch b:

  GPU  post(b, i-1)        needs b's attention output of layer i-1
  GPU  pre(b, i)
  D2H  q/k/v of b's CPU decodes   after pre(b, i)
  CPU  attention of b's CPU decodes (+ launch)   after the q/k/v copy
  H2D  attention output back      after the CPU attention
  D2H  fresh KV of b's CPU-placed prefills        after pre(b, i)
  GPU  attention of b's prefills and GPU decodes  after pre(b, i)

Sub-batches alternate on the GPU one layer apart (docs/architecture.md, "Asymmetric
pipelining"), so sub-batch 1's CPU attention of layer i overlaps sub-batch 0's GPU work of
layer i+1, and a slow CPU shows up as a GPU bubble. Optional seeded log-normal noise scales
every task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from neo_sim.costmodel import CostModel
from neo_sim.lanes import Lane, Span, Task
from neo_sim.scheduler.estimate import swap_bytes
from neo_sim.scheduler.plan import Plan, SubBatch
from neo_sim.scheduler.request import Device


@dataclass(frozen=True)
class IterationTiming:
    duration_s: float
    busy_s: dict[Lane, float]
    spans: tuple[Span, ...] = field(default=(), repr=False)


@dataclass
class _SubBatchCosts:
    pre_s: float
    post_s: float
    gpu_attn_s: float
    cpu_attn_s: float  # 0 when no CPU decodes
    qkv_d2h_s: float
    out_h2d_s: float
    kv_offload_s: float


class TimingModel:
    """Turns a plan into lane timings with a cost model's per-operator prices."""

    def __init__(
        self,
        cost: CostModel,
        block_size: int,
        noise: float = 0.0,
        seed: int = 0,
        lanes_share_compute: bool = False,
    ):
        """`lanes_share_compute`: the "GPU" and the host CPU are the same cores (an engine on a
        CPU-only machine), so GPU and CPU tasks run one at a time, not side by side."""
        if noise < 0:
            raise ValueError("noise must be >= 0")
        self.lanes_share_compute = lanes_share_compute
        self.cost = cost
        self.block_size = block_size
        self.noise = noise
        self._rng = random.Random(seed)
        m = cost.model
        self._pre_fraction = m.hidden_size * (m.q_size + 2 * m.kv_size) / m.linear_params_per_layer

    def run(self, plan: Plan, record: bool = False) -> IterationTiming:
        cost, layers = self.cost, self.cost.model.num_layers
        batches = [self._costs(sb) for sb in plan.sub_batches if sb]
        lane_free = dict.fromkeys(Lane, 0.0)
        busy = dict.fromkeys(Lane, 0.0)
        spans: list[Span] = []
        gpu, cpu = Lane.GPU, Lane.CPU
        shared = self.lanes_share_compute
        noise, rng = self.noise, self._rng

        def run_task(
            lane: Lane,
            task: Task,
            duration: float,
            ready: float,
            layer: int | None = None,
            sub_batch: int | None = None,
        ) -> float:
            if duration <= 0:
                return ready
            if noise:
                duration *= rng.lognormvariate(0.0, noise)
            if shared and (lane is gpu or lane is cpu):  # one set of cores for both lanes
                start = max(ready, lane_free[gpu], lane_free[cpu])
                lane_free[gpu] = lane_free[cpu] = start + duration
            else:
                free = lane_free[lane]
                start = ready if ready > free else free
                lane_free[lane] = start + duration
            busy[lane] += duration
            if record:
                spans.append(Span(lane, task, start, duration, layer, sub_batch))
            return start + duration

        out_bytes, in_bytes = swap_bytes(cost.model, plan.swap_out, plan.swap_in, self.block_size)
        swapped = run_task(Lane.D2H, Task.SWAP_OUT, cost.d2h(out_bytes), 0.0)
        swapped = run_task(Lane.H2D, Task.SWAP_IN, cost.h2d(in_bytes), swapped)
        out_ready = [swapped] * len(batches)  # b's attention output of the previous layer
        attn_done = [swapped] * len(batches)
        for i in range(layers):
            for b, c in enumerate(batches):
                ready = max(out_ready[b], attn_done[b])
                if i:
                    ready = run_task(Lane.GPU, Task.POST, c.post_s, ready, i - 1, b)
                pre_done = run_task(Lane.GPU, Task.PRE, c.pre_s, ready, i, b)
                out_ready[b] = pre_done
                if c.cpu_attn_s:
                    qkv = run_task(Lane.D2H, Task.QKV, c.qkv_d2h_s, pre_done, i, b)
                    attn = run_task(Lane.CPU, Task.CPU_ATTN, c.cpu_attn_s, qkv, i, b)
                    out_ready[b] = run_task(Lane.H2D, Task.ATTN_OUT, c.out_h2d_s, attn, i, b)
                run_task(Lane.D2H, Task.KV_OFFLOAD, c.kv_offload_s, pre_done, i, b)
                attn_done[b] = run_task(Lane.GPU, Task.GPU_ATTN, c.gpu_attn_s, pre_done, i, b)
        for b, c in enumerate(batches):
            ready = max(out_ready[b], attn_done[b])
            run_task(Lane.GPU, Task.POST, c.post_s, ready, layers - 1, b)
        run_task(Lane.GPU, Task.LM_HEAD, cost.lm_head(plan.num_seqs), swapped)
        return IterationTiming(max(lane_free.values()), busy, tuple(spans))

    def _costs(self, sb: SubBatch) -> _SubBatchCosts:
        c = self.cost
        linear = c.linear(sb.num_tokens)
        prefill = 0.0
        cpu_prefill_tokens = 0
        for p in sb.prefills:
            prefill += c.prefill_attn(p.end) - c.prefill_attn(p.start)
            if p.kv_device == Device.CPU:
                cpu_prefill_tokens += p.num_tokens
        gdec = c.gpu_decode_attn(len(sb.gpu_decodes), sum(d.context_len for d in sb.gpu_decodes))
        n_cpu = len(sb.cpu_decodes)
        cpu_attn = 0.0
        if n_cpu:
            cpu_attn = (
                c.cpu_decode_attn(n_cpu, sum(d.context_len for d in sb.cpu_decodes)) + c.launch
            )
        return _SubBatchCosts(
            pre_s=linear * self._pre_fraction,
            post_s=linear * (1 - self._pre_fraction),
            gpu_attn_s=prefill + gdec,
            cpu_attn_s=cpu_attn,
            qkv_d2h_s=c.d2h(c.qkv_bytes(n_cpu)) if n_cpu else 0.0,
            out_h2d_s=c.h2d(c.attn_out_bytes(n_cpu)) if n_cpu else 0.0,
            kv_offload_s=c.d2h(cpu_prefill_tokens * c.model.kv_bytes_per_token_per_layer),
        )
