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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from neo_sim.costmodel import CostModel
from neo_sim.lanes import Lane, Span, Task
from neo_sim.scheduler.estimate import fused_stages, prefill_attn_s, swap_bytes
from neo_sim.scheduler.plan import Plan, SubBatch, context_tokens
from neo_sim.scheduler.request import Device

_LANES = tuple(Lane)  # iterating the enum class itself is a Python-level generator


@dataclass(frozen=True)
class IterationTiming:
    duration_s: float
    busy_s: dict[Lane, float]
    spans: tuple[Span, ...] = field(default=(), repr=False)


class _SubBatchCosts(NamedTuple):
    pre_s: float
    post_s: float
    gpu_attn_s: float
    cpu_attn_s: float  # 0 when no CPU decodes
    qkv_d2h_s: float
    out_h2d_s: float
    kv_offload_s: float

    @property
    def gpu_only(self) -> bool:
        return not self.cpu_attn_s and not self.kv_offload_s


def _gpu_lane_s(layers: int, pre_s: float, gpu_attn_s: float, post_s: float, lm_head_s: float):
    """GPU time of an iteration whose layers run back to back on the GPU lane."""
    return layers * (pre_s + gpu_attn_s + post_s) + lm_head_s


def _relative_state(
    lane_free: dict[Lane, float], out_ready: list[float], attn_done: list[float]
) -> tuple[float, tuple[float, ...]]:
    """After a layer: (the GPU lane's free time, what decides the next layers relative to it).
    A sub-batch's next post-projection waits for the later of its two inputs; a lane free
    before every such input cannot delay anything."""
    base = lane_free[Lane.GPU]
    inputs = [max(a, b) for a, b in zip(out_ready, attn_done)]
    floor = min(inputs)
    lanes = tuple(max(lane_free[lane], floor) - base for lane in _LANES)
    return base, lanes + tuple(x - base for x in inputs)


def _same_state(a: tuple[float, ...], b: tuple[float, ...], scale: float) -> bool:
    tolerance = 1e-12 * scale
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


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
        work = [sb for sb in plan.sub_batches if sb]
        batches = [self._costs(sb) for sb in work]
        if len(work) == 1 and work[0].decodes_only:  # the engine runs it one layer per call
            c = batches[0]
            saving = cost.fused_decode_saving(len(work[0].gpu_decodes))
            pre, attn, post = fused_stages(c.pre_s, c.gpu_attn_s, c.post_s, saving)
            batches[0] = c._replace(pre_s=pre, gpu_attn_s=attn, post_s=post)
        lane_free = dict.fromkeys(_LANES, 0.0)
        busy = dict.fromkeys(_LANES, 0.0)
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
        if not noise and len(batches) == 1 and batches[0].gpu_only:
            swap_out_s, swap_in_s = cost.d2h(out_bytes), cost.h2d(in_bytes)
            return self._gpu_only(batches[0], swap_out_s, swap_in_s, plan.num_seqs, record)
        swapped = run_task(Lane.D2H, Task.SWAP_OUT, cost.d2h(out_bytes), 0.0)
        swapped = run_task(Lane.H2D, Task.SWAP_IN, cost.h2d(in_bytes), swapped)
        if not noise and not record and not shared:
            out_ready, attn_done = self._layers_in_locals(batches, swapped, lane_free, busy)
        else:
            periodic = not noise and not record
            out_ready, attn_done = self._layers(
                batches, swapped, run_task, lane_free, busy, periodic
            )
        for b, c in enumerate(batches):
            ready = max(out_ready[b], attn_done[b])
            run_task(Lane.GPU, Task.POST, c.post_s, ready, layers - 1, b)
        run_task(Lane.GPU, Task.LM_HEAD, cost.lm_head(plan.num_seqs), swapped)
        host = cost.host_overhead(plan.num_seqs)  # the engine's own work, once the lanes are done
        return IterationTiming(max(lane_free.values()) + host, busy, tuple(spans))

    def _layers(
        self,
        batches: list[_SubBatchCosts],
        swapped: float,
        run_task: Callable[..., float],
        lane_free: dict[Lane, float],
        busy: dict[Lane, float],
        periodic: bool,
    ) -> tuple[list[float], list[float]]:
        """Every layer's tasks but the last post-projections, through `run_task` (which
        applies noise, shared lanes and span records): per sub-batch, when its attention
        output and its attention are ready (`out_ready`, `attn_done`, returned). `periodic`:
        take the shortcut below (not with per-task noise, nor when spans are recorded)."""
        layers = self.cost.model.num_layers
        out_ready = [swapped] * len(batches)  # b's attention output of the previous layer
        attn_done = [swapped] * len(batches)
        # Layers repeat the same tasks: once the lanes' state relative to the GPU lane repeats
        # from one layer to the next, every later layer repeats it too, so the remaining ones
        # are added in one step.
        previous: tuple[float, tuple[float, ...], dict[Lane, float]] | None = None
        i = 0
        while i < layers:
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
            i += 1
            if periodic and i < layers:
                state = _relative_state(lane_free, out_ready, attn_done)
                if previous is not None and _same_state(state[1], previous[1], state[0]):
                    remaining = layers - i
                    shift = remaining * (state[0] - previous[0])
                    for lane in _LANES:
                        busy[lane] += remaining * (busy[lane] - previous[2][lane])
                        if lane_free[lane] > 0.0:
                            lane_free[lane] += shift
                    out_ready = [x + shift for x in out_ready]
                    attn_done = [x + shift for x in attn_done]
                    break
                previous = (state[0], state[1], dict(busy))
        return out_ready, attn_done

    def _layers_in_locals(
        self,
        batches: list[_SubBatchCosts],
        swapped: float,
        lane_free: dict[Lane, float],
        busy: dict[Lane, float],
    ) -> tuple[list[float], list[float]]:
        """`_layers` for a plan without noise, span records or shared lanes (the simulator's
        usual case): the same tasks in the same order with the same arithmetic, each lane's
        free time and busy sum kept in a local, and the same periodic shortcut; bit for bit
        `_layers`' results (a test holds it to that). `run_task`'s body, inlined: this runs
        every iteration. Updates `lane_free` and `busy`; returns (`out_ready`, `attn_done`)."""
        layers = self.cost.model.num_layers
        g_free, c_free, h_free, d_free = (lane_free[lane] for lane in _LANES)
        g_busy, c_busy, h_busy, d_busy = (busy[lane] for lane in _LANES)
        n = len(batches)
        out_ready, attn_done = [swapped] * n, [swapped] * n
        previous: tuple[float, tuple[float, ...], tuple[float, ...]] | None = None
        i = 0
        while i < layers:
            for b, costs in enumerate(batches):  # unpacked: cheaper than 14 field reads
                pre_s, post_s, gpu_attn_s, cpu_attn_s, qkv_d2h_s, out_h2d_s, kv_offload_s = costs
                ready = max(out_ready[b], attn_done[b])
                if i and post_s > 0:
                    start = ready if ready > g_free else g_free
                    ready = g_free = start + post_s
                    g_busy += post_s
                pre_done = ready
                if pre_s > 0:
                    start = ready if ready > g_free else g_free
                    pre_done = g_free = start + pre_s
                    g_busy += pre_s
                out_ready[b] = pre_done
                if cpu_attn_s:
                    t = pre_done
                    if qkv_d2h_s > 0:
                        start = t if t > d_free else d_free
                        t = d_free = start + qkv_d2h_s
                        d_busy += qkv_d2h_s
                    if cpu_attn_s > 0:
                        start = t if t > c_free else c_free
                        t = c_free = start + cpu_attn_s
                        c_busy += cpu_attn_s
                    if out_h2d_s > 0:
                        start = t if t > h_free else h_free
                        t = h_free = start + out_h2d_s
                        h_busy += out_h2d_s
                    out_ready[b] = t
                if kv_offload_s > 0:
                    start = pre_done if pre_done > d_free else d_free
                    d_free = start + kv_offload_s
                    d_busy += kv_offload_s
                t = pre_done
                if gpu_attn_s > 0:
                    start = t if t > g_free else g_free
                    t = g_free = start + gpu_attn_s
                    g_busy += gpu_attn_s
                attn_done[b] = t
            i += 1
            if i < layers:  # `_relative_state`, `_same_state`
                base = g_free
                inputs = [max(a, b) for a, b in zip(out_ready, attn_done)]
                floor = min(inputs)
                state = (
                    max(g_free, floor) - base,
                    max(c_free, floor) - base,
                    max(h_free, floor) - base,
                    max(d_free, floor) - base,
                    *[x - base for x in inputs],
                )
                if previous is not None and _same_state(state, previous[1], base):
                    remaining = layers - i
                    shift = remaining * (base - previous[0])
                    g_busy += remaining * (g_busy - previous[2][0])
                    c_busy += remaining * (c_busy - previous[2][1])
                    h_busy += remaining * (h_busy - previous[2][2])
                    d_busy += remaining * (d_busy - previous[2][3])
                    if g_free > 0.0:
                        g_free += shift
                    if c_free > 0.0:
                        c_free += shift
                    if h_free > 0.0:
                        h_free += shift
                    if d_free > 0.0:
                        d_free += shift
                    out_ready = [x + shift for x in out_ready]
                    attn_done = [x + shift for x in attn_done]
                    break
                previous = (base, state, (g_busy, c_busy, h_busy, d_busy))
        for lane, free, spent in zip(
            _LANES, (g_free, c_free, h_free, d_free), (g_busy, c_busy, h_busy, d_busy)
        ):
            lane_free[lane], busy[lane] = free, spent
        return out_ready, attn_done

    def _gpu_only(
        self, c: _SubBatchCosts, swap_out_s: float, swap_in_s: float, num_seqs: int, record: bool
    ) -> IterationTiming:
        """Closed form of a plan whose work is all on the GPU lane (one sub-batch, no CPU
        decodes, no KV offload): swaps, then every layer's tasks back to back, then the LM
        head and the engine's own work. Equal to the task loop up to floating-point summation
        order."""
        layers = self.cost.model.num_layers
        swapped = swap_out_s + swap_in_s
        lm_head = self.cost.lm_head(num_seqs)
        gpu_busy = _gpu_lane_s(layers, c.pre_s, c.gpu_attn_s, c.post_s, lm_head)
        busy = {Lane.GPU: gpu_busy, Lane.CPU: 0.0, Lane.H2D: swap_in_s, Lane.D2H: swap_out_s}
        spans: list[Span] = []
        if record:
            if swap_out_s:
                spans.append(Span(Lane.D2H, Task.SWAP_OUT, 0.0, swap_out_s))
            if swap_in_s:
                spans.append(Span(Lane.H2D, Task.SWAP_IN, swap_out_s, swap_in_s))
            t = swapped
            for i in range(layers):
                for task, seconds in ((Task.PRE, c.pre_s), (Task.GPU_ATTN, c.gpu_attn_s)):
                    if seconds > 0:
                        spans.append(Span(Lane.GPU, task, t, seconds, i, 0))
                        t += seconds
                if c.post_s > 0:
                    spans.append(Span(Lane.GPU, Task.POST, t, c.post_s, i, 0))
                    t += c.post_s
            spans.append(Span(Lane.GPU, Task.LM_HEAD, t, lm_head))
        host = self.cost.host_overhead(num_seqs)
        return IterationTiming(swapped + gpu_busy + host, busy, tuple(spans))

    def gpu_decodes_pricer(self, batch: int) -> Callable[[float], tuple[float, float]]:
        """For steady runs: the GPU attention time of the iteration's decodes (`gpu_attn_s`)
        -> (duration, GPU busy time) of a sequential iteration of `batch` GPU decodes and
        nothing else. The same arithmetic as `run()` on that plan (`_costs_of` with no
        prefill, no CPU work, then `_gpu_only` without swaps), per-batch terms looked up once."""
        c = self.cost
        layers = c.model.num_layers
        linear = c.linear(batch)
        pre, post = linear * self._pre_fraction, linear * (1 - self._pre_fraction)
        lm_head = c.lm_head(batch)
        swapped = c.d2h(0) + c.h2d(0)
        host = c.host_overhead(batch)
        saving = c.fused_decode_saving(batch)

        def timed(gpu_attn: float) -> tuple[float, float]:  # as _gpu_only
            # As run(): a decode-only plan's stages less the saving (none: unchanged).
            fused_pre, gpu_attn, fused_post = fused_stages(pre, gpu_attn, post, saving)
            gpu_busy = layers * (fused_pre + gpu_attn + fused_post) + lm_head  # _gpu_lane_s
            return swapped + gpu_busy + host, gpu_busy

        return timed

    def _costs(self, sb: SubBatch) -> _SubBatchCosts:
        c = self.cost
        prefill = 0.0
        cpu_prefill_tokens = 0
        for p in sb.prefills:
            prefill += prefill_attn_s(c, p)
            if p.kv_device == Device.CPU:
                cpu_prefill_tokens += p.num_tokens
        return self._costs_of(
            sb.num_tokens,
            prefill,
            len(sb.gpu_decodes),
            context_tokens(sb.gpu_decodes),
            len(sb.cpu_decodes),
            context_tokens(sb.cpu_decodes),
            cpu_prefill_tokens,
        )

    def _costs_of(
        self,
        num_tokens: int,
        prefill_s: float,
        n_gdec: int,
        gpu_decode_tokens: int,
        n_cpu: int,
        cpu_decode_tokens: int,
        cpu_prefill_tokens: int,
    ) -> _SubBatchCosts:
        c = self.cost
        linear = c.linear(num_tokens)
        gdec = c.gpu_decode_attn(n_gdec, gpu_decode_tokens)
        cpu_attn = to_host = back = 0.0
        if n_cpu:
            cpu_attn = c.cpu_decode_attn(n_cpu, cpu_decode_tokens) + c.launch
            to_host, back = c.cpu_copies_s(n_cpu)
        return _SubBatchCosts(
            pre_s=linear * self._pre_fraction,
            post_s=linear * (1 - self._pre_fraction),
            gpu_attn_s=prefill_s + gdec,
            cpu_attn_s=cpu_attn,
            qkv_d2h_s=to_host,
            out_h2d_s=back,
            kv_offload_s=c.d2h(cpu_prefill_tokens * c.model.kv_bytes_per_token_per_layer),
        )
