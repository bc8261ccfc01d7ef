"""APEX: asynchronous overlap without batch splitting, beside NEO's asymmetric pipelining.

APEX (Fan et al., arXiv 2506.03296, IPDPS 2026) argues that NEO's two sub-batches make the GPU
read every layer's weights twice per iteration, which costs more than hiding CPU attention
saves when decode linear layers are weight-bandwidth-bound (small GPUs, small batches). Its
*asynchronous overlap* runs one batch: per layer, the QKV projection of every token; the q/k/v
rows of the CPU-resident decodes go to the host, which appends k/v and runs their attention
while the GPU runs the same layer's prefill and GPU-decode attention; the GPU waits for the
host's output right before the O projection. Per layer:

    linear(N) + max(prefill_attn + gpu_decode_attn, d2h(qkv) + cpu_decode_attn + h2d(out) + launch)

which is `estimate.sequential_layer_s` of one sub-batch holding the CPU decodes (`Mode.FUSED`);
the timing model and the executor already run such a sub-batch with exactly those lanes and
dependencies.

Our reading, from the paper's abstract, its eq. 6 and third-party summaries (the paper's body
was not available to us; docs/architecture.md, "APEX"):
- steps 1-3 (swaps, admission, GPU-first placement with overflow to the host where the host
  pays) are NEO's, with fused iterations among the steady plans that placement prices;
- the fused batch takes CPU decodes longest-waiting first while each one raises the predicted
  requests/s of the iteration (APEX "predicts the execution times of CPU and GPU subtasks and
  dispatches them to maximise overlap": host work that fits the GPU-attention window is free,
  beyond it a decode is kept only if it is worth its time), and overdue ones regardless
  (the starvation bound of NEO, `max_cpu_wait_steps`);
- per iteration it runs whichever of fused, NEO's pipelined plan and the GPU-only plan
  predicts the most requests/s (eq. 6 is that choice in closed form for decode-only batches).
"""

from __future__ import annotations

from neo_sim.scheduler.base import Budget
from neo_sim.scheduler.estimate import SubBatchBuilder
from neo_sim.scheduler.neo import Candidate, NeoPolicy
from neo_sim.scheduler.plan import DecodeWork, Mode


class ApexPolicy(NeoPolicy):
    name = "apex"
    listing_rank = 20
    variants = {"apex": {}}

    def _plan_work(
        self, candidates: list[Candidate], budget: Budget
    ) -> tuple[Mode, tuple[SubBatchBuilder, ...], tuple[int, ...]]:
        fused_budget = Budget(budget.seqs, budget.tokens)
        mode, chosen, forced = super()._plan_work(candidates, budget)
        if not (candidates or self.gpu_running) or not self.cpu_running:
            return mode, chosen, forced  # nothing to fuse: GPU-only or CPU-only work
        fused, fused_forced = self._build_fused(candidates, fused_budget)
        if fused.cpu_decodes and self._rate(Mode.FUSED, (fused,)) > self._rate(mode, chosen):
            return Mode.FUSED, (fused,), fused_forced
        return mode, chosen, forced

    def _build_fused(
        self, candidates: list[Candidate], budget: Budget
    ) -> tuple[SubBatchBuilder, tuple[int, ...]]:
        """One sub-batch: every prefill and GPU decode, and the CPU decodes worth their time."""
        b = SubBatchBuilder(self.cost)
        for r, device in candidates:
            b.add_prefill(self._prefill_work(r, device))
        for r in self.gpu_running.values():
            b.add_gpu_decode(DecodeWork(r.request_id, r.seq_len))
        cpu_pool = self.kv.cpu
        cpu_free = self._host_blocks_free_after(candidates)
        best = self._rate(Mode.FUSED, (b,))
        limit = self._overdue_before()
        shortest_rejected = float("inf")
        forced: list[int] = []
        for r in self._cpu_decodes_longest_waiting_first():
            overdue = r.last_progress_step < limit
            seq_len = r.seq_len
            if not overdue and seq_len >= shortest_rejected:
                continue  # a longer context costs more host time: it cannot be worth it either
            growth = cpu_pool.extra_blocks(r.request_id, seq_len)
            if growth > cpu_free or not budget.take(1):
                continue
            b.add_cpu_decode(DecodeWork(r.request_id, seq_len))
            worth, rate = self._worth(Mode.FUSED, (b,), best)
            if not worth and not overdue:
                b.pop_cpu_decode()
                budget.give(1)
                shortest_rejected = seq_len
                continue
            best = rate
            cpu_free -= growth
            if overdue:
                forced.append(r.request_id)
        return b, tuple(forced)

    def _steady_rate(
        self, gpu: SubBatchBuilder, host: SubBatchBuilder, fused: SubBatchBuilder
    ) -> float:
        """NEO's steady rate, or the fused iteration's if it serves more."""
        rate = super()._steady_rate(gpu, host, fused)
        return max(rate, self._rate(Mode.FUSED, (fused,))) if host else rate

    def _worth(
        self, mode: Mode, chosen: tuple[SubBatchBuilder, ...], best: float
    ) -> tuple[bool, float]:
        """Whether the host decode just added to `chosen` pays for itself (the iteration's
        predicted requests/s does not fall below `best`), and that rate."""
        rate = self._rate(mode, chosen)
        return rate >= best, rate
