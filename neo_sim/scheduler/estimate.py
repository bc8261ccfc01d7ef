"""The scheduler's own estimate of an iteration: per-layer lane times, slack, duration.

docs/architecture.md, "Scheduler estimate", with the PCIe terms the artifact leaves out. Per
layer, for sub-batch b:
- gpu_s(b) = linear(S_b) + prefill_attn(b) + gpu_decode_attn(b);
- cpu_s(b) = d2h(q,k,v) + cpu_decode_attn(b) + h2d(attention output) + launch, if b has CPU
  decodes, else 0;
- offload_s(b) = d2h of the fresh KV of b's CPU-placed prefills (a copy engine, overlapped).
Pipelined: slack[j] = linear(S_other) + prefill_attn(j) + gpu_decode_attn(j) - cpu_s(j), and a
layer takes gpu_s(0) + gpu_s(1) plus any negative slack (the GPU waits for the CPU).
Sequential: a layer takes linear + max(GPU attention, CPU attention).
Per iteration add the LM head, and the swaps: whole requests copied before the iteration, out
then in, as the engine copies them.

`SubBatchBuilder` keeps these sums incrementally so that NEO's greedy loop prices a candidate
with a few cost-model lookups, not a rescan of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from neo_sim.costmodel import CostModel
from neo_sim.model import ModelSpec
from neo_sim.scheduler.kv import BlockPool
from neo_sim.scheduler.plan import (
    DecodeWork,
    PrefillWork,
    SubBatch,
    Swap,
    context_tokens,
    decodes_only,
)
from neo_sim.scheduler.request import Device


class LayerTimes(NamedTuple):
    """Per-layer seconds of one sub-batch on each lane. A named tuple: builders make one
    each time they are priced, several per iteration."""

    linear_s: float
    gpu_attn_s: float  # prefill + GPU decode attention
    cpu_s: float  # CPU attention with its q/k/v and output copies and launch
    offload_s: float  # d2h of CPU-placed prefills' KV

    @property
    def gpu_s(self) -> float:
        return self.linear_s + self.gpu_attn_s


def gpu_attn_s(c: CostModel, prefill_attn_s: float, n_gdec: int, gpu_decode_tokens: int) -> float:
    """Per layer: a sub-batch's attention on the GPU (its prefills' summed, plus its decodes)."""
    return prefill_attn_s + c.gpu_decode_attn(n_gdec, gpu_decode_tokens)


def cpu_lane_s(c: CostModel, n_cdec: int, cpu_decode_tokens: int) -> float:
    """Per layer: a sub-batch's CPU work, q/k/v and output copies and launch included."""
    if not n_cdec:
        return 0.0
    to_host, back = c.cpu_copies_s(n_cdec)
    return to_host + c.cpu_decode_attn(n_cdec, cpu_decode_tokens) + back + c.launch


def prefill_attn_s(c: CostModel, work: PrefillWork) -> float:
    """Per layer: a prefill (or chunk) attending over its tokens and the cached ones before
    them; a later chunk of a host-placed prompt first copies those from the host (h2d), as the
    executor's `prefill_stage` does."""
    attn = c.prefill_attn(work.end) - c.prefill_attn(work.start)
    if work.start and work.kv_device == Device.CPU:
        attn += c.h2d(work.start * c.model.kv_bytes_per_token_per_layer)
    return attn


def offload_s(c: CostModel, cpu_prefill_tokens: int) -> float:
    """Per layer: the d2h copy of the fresh KV of a sub-batch's CPU-placed prefills."""
    return c.d2h(cpu_prefill_tokens * c.model.kv_bytes_per_token_per_layer)


class SubBatchBuilder:
    """A sub-batch under construction, with running cost sums. Its lane times are cached per
    component, so that adding a CPU decode re-prices only the linear width and the CPU lane."""

    def __init__(self, cost: CostModel):
        self.cost = cost
        self.prefills: list[PrefillWork] = []
        self.gpu_decodes: list[DecodeWork] = []
        self.cpu_decodes: list[DecodeWork] = []
        self.num_tokens = 0
        self.prefill_attn_s = 0.0
        self.gpu_decode_tokens = 0
        self.cpu_decode_tokens = 0
        self.cpu_prefill_tokens = 0
        # The CPU decodes whose next token needs a new host block, where known (those priced
        # by `CpuDecodeOffers`, which looked their blocks up); None: unknown, look each up.
        self.cpu_decodes_growing: list[DecodeWork] | None = []
        self._cache: LayerTimes | None = None
        self._linear: float | None = None
        self._gpu_attn: float | None = None
        self._cpu: float | None = None
        self._offload: float | None = None

    # mutation -----------------------------------------------------------------------------
    def add_prefill(self, work: PrefillWork) -> None:
        self.prefills.append(work)
        self._account_prefill(work, +1)

    def pop_prefill(self) -> PrefillWork:
        work = self.prefills.pop()
        self._account_prefill(work, -1)
        return work

    def add_gpu_decode(self, work: DecodeWork) -> None:
        self.gpu_decodes.append(work)
        self.num_tokens += 1
        self.gpu_decode_tokens += work.context_len
        self._cache = self._linear = self._gpu_attn = None

    def add_cpu_decode(self, work: DecodeWork) -> None:
        self.cpu_decodes.append(work)
        self.cpu_decodes_growing = None
        self.num_tokens += 1
        self.cpu_decode_tokens += work.context_len
        self._cache = self._linear = self._cpu = None

    def add_decodes(
        self, works: Sequence[DecodeWork], on_gpu: bool, tokens: int | None = None
    ) -> None:
        """`add_gpu_decode` (or `add_cpu_decode`) of each of `works`, in one go (`tokens`:
        their `context_tokens`, if the caller has it)."""
        if tokens is None:
            tokens = context_tokens(works)
        self.num_tokens += len(works)
        if on_gpu:
            self.gpu_decodes.extend(works)
            self.gpu_decode_tokens += tokens
            self._cache = self._linear = self._gpu_attn = None
        else:
            self.cpu_decodes.extend(works)
            self.cpu_decodes_growing = None
            self.cpu_decode_tokens += tokens
            self._cache = self._linear = self._cpu = None

    def add_priced_cpu_decodes(
        self,
        works: list[DecodeWork],
        cpu_decode_tokens: int,
        linear_s: float,
        cpu_s: float,
        growing: list[DecodeWork],
    ) -> None:
        """`add_cpu_decode` of each of `works`, with the totals and lane times that
        `CpuDecodeOffers` priced for them (bit for bit `_refresh`'s) and those of them whose
        next token needs a new host block."""
        self.cpu_decodes.extend(works)
        if self.cpu_decodes_growing is not None:
            self.cpu_decodes_growing.extend(growing)
        self.num_tokens += len(works)
        self.cpu_decode_tokens = cpu_decode_tokens
        self._refresh()  # the other components, before the priced ones replace theirs
        self._linear, self._cpu, self._cache = linear_s, cpu_s, None

    def pop_cpu_decode(self) -> DecodeWork:
        work = self.cpu_decodes.pop()
        self.cpu_decodes_growing = None
        self.num_tokens -= 1
        self.cpu_decode_tokens -= work.context_len
        self._cache = self._linear = self._cpu = None
        return work

    def _account_prefill(self, work: PrefillWork, sign: int) -> None:
        attn = prefill_attn_s(self.cost, work)
        self.num_tokens += sign * work.num_tokens
        self.prefill_attn_s += sign * attn
        if work.kv_device == Device.CPU:
            self.cpu_prefill_tokens += sign * work.num_tokens
        self._cache = self._linear = self._gpu_attn = self._offload = None

    # pricing ------------------------------------------------------------------------------
    @property
    def num_seqs(self) -> int:
        return len(self.prefills) + len(self.gpu_decodes) + len(self.cpu_decodes)

    def __bool__(self) -> bool:
        return self.num_seqs > 0

    def _refresh(self) -> None:
        """Price the components that changed since the last call."""
        c = self.cost
        if self._gpu_attn is None:
            n_gdec = len(self.gpu_decodes)
            self._gpu_attn = gpu_attn_s(c, self.prefill_attn_s, n_gdec, self.gpu_decode_tokens)
        if self._cpu is None:
            self._cpu = cpu_lane_s(c, len(self.cpu_decodes), self.cpu_decode_tokens)
        if self._offload is None:
            self._offload = offload_s(c, self.cpu_prefill_tokens)
        if self._linear is None:
            self._linear = c.linear(self.num_tokens)

    def times(self) -> LayerTimes:
        if self._cache is None:
            self._refresh()
            self._cache = LayerTimes(self._linear, self._gpu_attn, self._cpu, self._offload)
        return self._cache

    def freeze(self) -> SubBatch:
        return SubBatch(tuple(self.prefills), tuple(self.gpu_decodes), tuple(self.cpu_decodes))


class CpuDecodeOffers:
    """NEO's greedy step 4, priced without touching the builders: each CPU decode offered
    goes to the current target sub-batch if both slacks stay non-negative there, and the next
    one aims at the sub-batch with more slack. An offer costs one lookup (the CPU attention at
    the new count and tokens): the terms that do not depend on the candidate's context (the
    linear layers at the new width, the copies at the new count) are looked up once per kept
    decode.

    The arithmetic is `SubBatchBuilder._refresh`'s and `slacks`'s (`cpu_lane_s`'s sum, in its
    order), so the values are bit for bit those of the builders with the decode added; `apply`
    hands the kept decodes to the builders in the order they came, with those values."""

    def __init__(self, b0: SubBatchBuilder, b1: SubBatchBuilder, target: int = 1):
        self.builders = (b0, b1)
        self.cost = b0.cost
        self.target = target  # the sub-batch the next offer goes to
        t0, t1 = b0.times(), b1.times()
        self.count = [len(b0.cpu_decodes), len(b1.cpu_decodes)]
        self.tokens = [b0.cpu_decode_tokens, b1.cpu_decode_tokens]
        self.width = [b0.num_tokens, b1.num_tokens]
        self.linear = [t0.linear_s, t1.linear_s]
        self.gpu_attn = (t0.gpu_attn_s, t1.gpu_attn_s)
        self.cpu = [t0.cpu_s, t1.cpu_s]
        self.kept: tuple[list[DecodeWork], list[DecodeWork]] = ([], [])
        self.growing: tuple[list[DecodeWork], list[DecodeWork]] = ([], [])  # of the kept

    def offer_in_turn(
        self,
        decodes: Sequence[DecodeWork],
        overdue_each: Iterable[bool],
        host_pool: BlockPool,
        blocks_free: int,
        room: int,
    ) -> list[int]:
        """Offer `decodes` in turn, with whether each is overdue; the blocks a decode's next
        token adds to `host_pool` are counted (as `BlockPool.extra_blocks` counts them, inline)
        only for the decodes priced. One is kept on the target if both slacks stay
        non-negative, or if it is overdue (the starvation bound); it is skipped, unpriced, if
        it is not overdue and at least as long as one already rejected, if its blocks exceed
        those still free, or once `room` decodes are kept. Returns the ids of
        the overdue ones kept. One loop with its state in locals, the per-width and per-count
        terms read from lists: it runs for every CPU decode of every iteration."""
        launch = self.cost.launch
        held, block_size = host_pool.tables, host_pool.block_size
        lanes = self.cost.cpu_lane_table(max(self.count) + len(decodes) + 1)
        linears = self.cost.linear_table(max(self.width) + len(decodes) + 1)
        t = self.target
        # The target's state and the other sub-batch's, in locals, swapped when the target
        # changes (cheaper than indexing per-sub-batch lists by t), written back at the end.
        o = 1 - t
        t_count, t_tokens, t_width = self.count[t], self.tokens[t], self.width[t]
        t_linear, t_cpu, t_gpu_attn = self.linear[t], self.cpu[t], self.gpu_attn[t]
        t_kept, t_growing = self.kept[t], self.growing[t]
        o_count, o_tokens, o_width = self.count[o], self.tokens[o], self.width[o]
        o_linear, o_cpu, o_gpu_attn = self.linear[o], self.cpu[o], self.gpu_attn[o]
        o_kept, o_growing = self.kept[o], self.growing[o]
        shortest_rejected = float("inf")
        forced: list[int] = []
        kept = 0
        for work, overdue in zip(decodes, overdue_each):
            request_id, context_len = work
            if not overdue and context_len >= shortest_rejected:
                continue
            if kept >= room:
                break
            blocks = held.get(request_id)
            growth = -(-context_len // block_size) - (len(blocks) if blocks else 0)
            if growth > blocks_free:
                continue
            to_host, attn, back = lanes[t_count + 1]
            new_linear = linears[t_width + 1]
            new_tokens = t_tokens + context_len
            new_cpu = to_host + attn(new_tokens) + back + launch
            mine = o_linear + t_gpu_attn - new_cpu  # the target's slack
            other = new_linear + o_gpu_attn - o_cpu
            if (mine < 0 or other < 0) and not overdue:
                shortest_rejected = context_len
                continue
            t_count += 1
            t_tokens = new_tokens
            t_width += 1
            t_linear, t_cpu = new_linear, new_cpu
            t_kept.append(work)
            if growth > 0:
                blocks_free -= growth
                t_growing.append(work)
            kept += 1
            if overdue:
                forced.append(request_id)
            # The next offer aims at the sub-batch with more slack; a tie goes to sub-batch 0.
            if other > mine if t == 0 else other >= mine:
                t, o = o, t
                t_count, o_count = o_count, t_count
                t_tokens, o_tokens = o_tokens, t_tokens
                t_width, o_width = o_width, t_width
                t_linear, o_linear = o_linear, t_linear
                t_cpu, o_cpu = o_cpu, t_cpu
                t_gpu_attn, o_gpu_attn = o_gpu_attn, t_gpu_attn
                t_kept, o_kept = o_kept, t_kept
                t_growing, o_growing = o_growing, t_growing
        self.count[t], self.tokens[t], self.width[t] = t_count, t_tokens, t_width
        self.linear[t], self.cpu[t] = t_linear, t_cpu
        self.count[o], self.tokens[o], self.width[o] = o_count, o_tokens, o_width
        self.linear[o], self.cpu[o] = o_linear, o_cpu
        self.target = t
        return forced

    @property
    def num_kept(self) -> int:
        return len(self.kept[0]) + len(self.kept[1])

    def apply(self) -> None:
        """Hand the kept decodes to the builders, with the lane times priced for them."""
        for t, (builder, kept) in enumerate(zip(self.builders, self.kept)):
            if kept:
                builder.add_priced_cpu_decodes(
                    kept, self.tokens[t], self.linear[t], self.cpu[t], self.growing[t]
                )


def slacks(b0: SubBatchBuilder, b1: SubBatchBuilder) -> tuple[float, float]:
    """Per-layer slack of each sub-batch's CPU work under the GPU work it overlaps."""
    b0._refresh()
    b1._refresh()
    return (
        b1._linear + b0._gpu_attn - b0._cpu,  # type: ignore[operator]
        b0._linear + b1._gpu_attn - b1._cpu,  # type: ignore[operator]
    )


def pipelined_layer_s(b0: SubBatchBuilder, b1: SubBatchBuilder) -> float:
    t0, t1 = b0.times(), b1.times()
    s0 = t1.linear_s + t0.gpu_attn_s - t0.cpu_s  # `slacks`, from the times at hand
    s1 = t0.linear_s + t1.gpu_attn_s - t1.cpu_s
    gpu = t0.gpu_s + t1.gpu_s + max(0.0, -s0) + max(0.0, -s1)
    return max(gpu, t0.offload_s + t1.offload_s)


def sequential_layer_s(b: SubBatchBuilder) -> float:
    """A sequential plan's layer (`b` its only sub-batch); a decode-only one as the engine
    runs it, one call per layer (`fused_stages`)."""
    t = b.times()
    if decodes_only(b.prefills, b.gpu_decodes, b.cpu_decodes):
        saving = b.cost.fused_decode_saving(len(b.gpu_decodes))
        if saving > 0:
            linear_s, gpu_attn, _ = fused_stages(t.linear_s, t.gpu_attn_s, 0.0, saving)
            t = t._replace(linear_s=linear_s, gpu_attn_s=gpu_attn)
    return _sequential_layer_s(t)


def fused_stages(
    pre_s: float, gpu_attn_s: float, post_s: float, saving_s: float
) -> tuple[float, float, float]:
    """A decode-only layer's stages where the engine runs the layer in one call: each scaled
    so that they sum to their sum less `saving_s` (the cost model's `fused_decode_saving`), at
    least 0, each keeping its share. The timing model and the scheduler's estimate both price
    such a layer through this."""
    total = pre_s + gpu_attn_s + post_s
    if saving_s <= 0 or total <= 0:
        return pre_s, gpu_attn_s, post_s
    scale = max(0.0, total - saving_s) / total
    return pre_s * scale, gpu_attn_s * scale, post_s * scale


def _sequential_layer_s(t: LayerTimes) -> float:
    return max(t.linear_s + max(t.gpu_attn_s, t.cpu_s), t.offload_s)


def gpu_decodes_pricer(cost: CostModel, batch: int) -> Callable[[float], float]:
    """For steady runs, and adaptive's decode-only price under an SLO: the GPU attention time
    (`gpu_attn_s` of the iteration's decodes) -> what `step()` predicts for a sequential
    iteration of `batch` GPU decodes and nothing else. The same arithmetic as
    `SubBatchBuilder.times`, `sequential_layer_s` and `iteration_s` on that plan, with the
    per-batch terms looked up once."""
    layers = cost.model.num_layers
    linear = cost.linear(batch)
    cpu = cpu_lane_s(cost, 0, 0)
    offload = offload_s(cost, 0)
    lm_head = cost.lm_head(batch)
    host = cost.host_overhead(batch)
    saving = cost.fused_decode_saving(batch)

    def predicted_s(gpu_attn: float) -> float:  # sequential_layer_s, then iteration_s
        fused_linear, gpu_attn, _ = fused_stages(linear, gpu_attn, 0.0, saving)
        return layers * max(fused_linear + max(gpu_attn, cpu), offload) + lm_head + host

    return predicted_s


def swap_bytes(
    model: ModelSpec, swap_out: tuple[Swap, ...], swap_in: tuple[Swap, ...], block_size: int
) -> tuple[float, float]:
    """Bytes of a plan's swaps (out, in): whole requests, every layer, whole blocks, as the
    engine copies them."""
    return (
        _kv_bytes(model, _swapped_blocks(swap_out), block_size),
        _kv_bytes(model, _swapped_blocks(swap_in), block_size),
    )


def swap_s(
    cost: CostModel, swap_out: tuple[Swap, ...], swap_in: tuple[Swap, ...], block_size: int
) -> float:
    """Seconds of a plan's swaps: one copy out, then one copy in, before any layer work (the
    timing model charges exactly these terms; docs/architecture.md, "Swaps")."""
    return kv_copy_s(cost, _swapped_blocks(swap_out), _swapped_blocks(swap_in), block_size)


def kv_copy_s(cost: CostModel, out_blocks: int, in_blocks: int, block_size: int) -> float:
    """Seconds to copy `out_blocks` KV blocks to the host, then `in_blocks` to the GPU: a
    plan's swaps (`swap_s`), or swaps a policy weighs before it makes them."""
    model = cost.model
    return cost.d2h(_kv_bytes(model, out_blocks, block_size)) + cost.h2d(
        _kv_bytes(model, in_blocks, block_size)
    )


def _swapped_blocks(swaps: tuple[Swap, ...]) -> int:
    return sum(len(s.src_blocks) for s in swaps)


def _kv_bytes(model: ModelSpec, blocks: int, block_size: int) -> int:
    """Bytes of `blocks` whole KV blocks, every layer."""
    return blocks * (block_size * model.kv_bytes_per_token)


def iteration_s(cost: CostModel, layer_s: float, num_seqs: int) -> float:
    """An iteration: its layers, the LM head, and the engine's own work around them."""
    return cost.model.num_layers * layer_s + cost.lm_head(num_seqs) + cost.host_overhead(num_seqs)
