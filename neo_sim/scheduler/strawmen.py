"""The paper's strawmen, as variations of NEO's steps.

- `symmetric`: placement as NEO, but the iteration is split into two *equal* sub-batches (each
  gets half the prefill tokens, half the GPU decodes and half the CPU decodes) with no slack
  check: the pipelining design NEO argues against.
- `full-offload` (FastDecode-like): every request's KV and decode attention live on the CPU;
  the GPU only runs linear layers and prefills. CPU decodes are spread over two sub-batches to
  balance them, with no slack check, and the plan is always pipelined when both have work.
"""

from __future__ import annotations

from neo_sim.scheduler.base import Budget
from neo_sim.scheduler.estimate import SubBatchBuilder
from neo_sim.scheduler.neo import Candidate, NeoPolicy
from neo_sim.scheduler.plan import DecodeWork, Mode
from neo_sim.scheduler.request import Request


class _NoSlackPolicy(NeoPolicy):
    """Strawmen keep every sub-batch they build: no prefill trimming, no mode comparison, and
    the artifact's placement (every prompt that overflows the GPU goes to the host). They
    prefill whole prompts, as the paper's strawmen do."""

    chunks_prompts = False

    listing_rank = 50

    def steady_run(self) -> None:
        """Not supported: symmetric splits GPU decodes over two sub-batches, full offload runs
        them on the CPU; the simulator steps every iteration of these policies."""
        return None

    def _trim_cpu_prefills(self, b0, b1) -> None:
        return None

    def _host_admissions(self, candidates: list[Candidate]) -> int:
        return len(candidates)

    def _host_pays_for_swapped(self, victim: Request) -> bool:
        return True

    def _choose_mode(self, b0, b1, forced):
        if b0 and b1:
            return Mode.PIPELINED, (b0, b1)
        return Mode.SEQUENTIAL, (b0 if b0 else b1,)


class SymmetricPolicy(_NoSlackPolicy):
    name = "symmetric"
    variants = {"symmetric": {}}

    def _build_sub_batches(self, candidates: list[Candidate], budget: Budget):
        halves = (SubBatchBuilder(self.cost), SubBatchBuilder(self.cost))

        def lighter() -> SubBatchBuilder:
            return min(halves, key=lambda b: (b.num_tokens, b.num_seqs))

        for r, device in candidates:
            lighter().add_prefill(self._prefill_work(r, device))
        for r in self.gpu_running.values():
            lighter().add_gpu_decode(DecodeWork(r.request_id, r.seq_len))
        _add_all_cpu_decodes(self, halves, budget, candidates)
        b0, b1 = halves
        return (b0, b1, ()) if b0 else (b1, b0, ())


class FullOffloadPolicy(_NoSlackPolicy):
    name = "full-offload"
    variants = {"full-offload": {}}

    def _gpu_allowed(self) -> bool:
        return False

    def _cpu_admission_limit(self, gpu_used: int) -> int:
        return self.kv.cpu.num_blocks

    def max_seq_tokens(self) -> int:
        return self.kv.cpu.num_blocks * self.config.block_size

    def _build_sub_batches(self, candidates: list[Candidate], budget: Budget):
        b0, b1 = SubBatchBuilder(self.cost), SubBatchBuilder(self.cost)
        for r, device in candidates:
            b0.add_prefill(self._prefill_work(r, device))
        for r in self.gpu_running.values():  # only if the pools were shared; normally empty
            b0.add_gpu_decode(DecodeWork(r.request_id, r.seq_len))
        _add_all_cpu_decodes(self, (b0, b1), budget, candidates)
        return b0, b1, ()


def _add_all_cpu_decodes(policy: NeoPolicy, builders, budget: Budget, candidates) -> None:
    """Every CPU decode that budget and host KV allow, each to the sub-batch with less CPU work."""
    cpu = policy.kv.cpu
    cpu_free = policy._host_blocks_free_after(candidates)
    for r in policy._cpu_decodes_longest_waiting_first():
        growth = cpu.extra_blocks(r.request_id, r.seq_len)
        if growth > cpu_free or not budget.take(1):
            continue
        cpu_free -= growth
        target = min(builders, key=lambda b: (b.cpu_decode_tokens, len(b.cpu_decodes)))
        target.add_cpu_decode(DecodeWork(r.request_id, r.seq_len))
