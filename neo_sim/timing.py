"""How long a plan really takes: per-layer tasks on four lanes, with their dependencies.

The scheduler decides with its own estimate (`neo_sim.scheduler.estimate`); the simulator's
clock follows this finer model, as a real system's clock follows the hardware. Lanes: the GPU
compute stream, the host CPU (attention threads), and PCIe in each direction (full duplex).
Each lane runs its tasks in issue order; a task starts when its lane is free and its inputs are
ready. Per layer i and sub-batch b:

  GPU  post(b, i-1) + pre(b, i)   needs b's attention output of layer i-1
  D2H  q/k/v of b's CPU decodes   after pre(b, i)
  CPU  attention of b's CPU decodes (+ launch)   after the q/k/v copy and layer i's swap-out
  H2D  attention output back      after the CPU attention
  D2H  fresh KV of b's CPU-placed prefills        after pre(b, i)
  GPU  attention of b's prefills and GPU decodes  after layer i's swap-in

Sub-batches alternate on the GPU one layer apart (DESIGN.md section 1), so sub-batch 1's CPU
attention of layer i overlaps sub-batch 0's GPU work of layer i+1, and a slow CPU shows up as a
GPU bubble. Swaps move one layer's KV per layer, ahead of that layer's work, sharing the PCIe
lanes with everything else. Optional seeded log-normal noise scales every task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from neo_sim.costmodel import CostModel
from neo_sim.scheduler.plan import Plan, SubBatch
from neo_sim.scheduler.request import Device

LANES = ("gpu", "cpu", "h2d", "d2h")


@dataclass(frozen=True)
class TaskEvent:
    lane: str
    name: str
    start_s: float
    duration_s: float


@dataclass(frozen=True)
class IterationTiming:
    duration_s: float
    busy_s: dict[str, float]
    events: tuple[TaskEvent, ...] = field(default=(), repr=False)


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
        CPU-only machine), so device and host tasks run one at a time, not side by side."""
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
        lane_free = dict.fromkeys(LANES, 0.0)
        busy = dict.fromkeys(LANES, 0.0)
        events: list[TaskEvent] = []

        def run_task(lane: str, name: str, duration: float, ready: float) -> float:
            if duration <= 0:
                return ready
            if self.noise:
                duration *= self._rng.lognormvariate(0.0, self.noise)
            shared = self.lanes_share_compute and lane in ("gpu", "cpu")
            lanes = ("gpu", "cpu") if shared else (lane,)
            start = max(ready, *(lane_free[x] for x in lanes))
            end = start + duration
            for x in lanes:
                lane_free[x] = end
            busy[lane] += duration
            if record:
                events.append(TaskEvent(lane, name, start, duration))
            return end

        per_token = cost.model.kv_bytes_per_token_per_layer * self.block_size
        out_bytes = sum(len(s.src_blocks) for s in plan.swap_out) * per_token
        in_bytes = sum(len(s.src_blocks) for s in plan.swap_in) * per_token
        swap_out_s, swap_in_s = cost.d2h(out_bytes), cost.h2d(in_bytes)
        out_ready = [0.0] * len(batches)  # b's attention output of the previous layer is back
        attn_done = [0.0] * len(batches)
        for i in range(layers):
            swapped_out = run_task("d2h", f"swap-out L{i}", swap_out_s, 0.0)
            swapped_in = run_task("h2d", f"swap-in L{i}", swap_in_s, 0.0)
            for b, c in enumerate(batches):
                linear_s = c.pre_s + (c.post_s if i else 0.0)
                pre_done = run_task(
                    "gpu", f"sb{b} linear L{i}", linear_s, max(out_ready[b], attn_done[b])
                )
                out_ready[b] = pre_done
                if c.cpu_attn_s:
                    qkv = run_task("d2h", f"sb{b} qkv L{i}", c.qkv_d2h_s, pre_done)
                    attn = run_task(
                        "cpu", f"sb{b} cpu-attn L{i}", c.cpu_attn_s, max(qkv, swapped_out)
                    )
                    out_ready[b] = run_task("h2d", f"sb{b} attn-out L{i}", c.out_h2d_s, attn)
                run_task("d2h", f"sb{b} kv-offload L{i}", c.kv_offload_s, pre_done)
                attn_done[b] = run_task(
                    "gpu", f"sb{b} gpu-attn L{i}", c.gpu_attn_s, max(pre_done, swapped_in)
                )
        for b, c in enumerate(batches):
            run_task("gpu", f"sb{b} post L{layers - 1}", c.post_s, max(out_ready[b], attn_done[b]))
        run_task("gpu", "lm-head", cost.lm_head(plan.num_seqs), 0.0)
        return IterationTiming(max(lane_free.values()), busy, tuple(events))

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
