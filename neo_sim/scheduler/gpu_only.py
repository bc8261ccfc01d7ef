"""GPU-only baseline: vLLM-like FCFS continuous batching (NEO's `always_use_gpu`).

Every running request keeps its KV on the GPU. When the GPU pool (or the batch budget) runs
short, the most recently admitted request is preempted: swapped to host memory if it fits
there, else dropped and recomputed later. Swapped requests come back oldest first, before any
new prefill is admitted. With `chunked_prefill_tokens` set (the paper's vllm-256/vllm-512
baselines), decodes go first and prompts are cut into chunks that fill the token budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from neo_sim.scheduler.base import Budget, Policy, SteadyRun
from neo_sim.scheduler.estimate import SubBatchBuilder, iteration_s, sequential_layer_s, swap_s
from neo_sim.scheduler.kv import BlockPool
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, Swap, new_tuple
from neo_sim.scheduler.request import Request, RequestState


class ResidentDecodes(NamedTuple):
    """The GPU residents as a step needs them (`GpuOnlyPolicy._resident_decodes`)."""

    works: list[DecodeWork]  # the decode of each resident not prefilling, in order
    need: int  # blocks the pool adds for their next tokens
    growing: list[DecodeWork]  # those of `works` that add some: a block boundary crossed
    prefilling: list[Request]  # residents part-way through a prompt (chunked prefill)


class GpuOnlyPolicy(Policy):
    name = "gpu-only"
    listing_rank = 0
    chunks_prompts = True
    variants = {
        "gpu-only": {},
        "vllm-256": {"chunked_prefill_tokens": 256},
        "vllm-512": {"chunked_prefill_tokens": 512},
    }

    def max_seq_tokens(self) -> int:
        return self.kv.gpu.num_blocks * self.config.block_size

    def steady_run(self) -> SteadyRun | None:
        cfg = self.config
        return self._steady_gpu_decodes(cfg.iteration_tokens)

    def _queues_stay_put(self, running: tuple[Request, ...], token_budget: int) -> bool:
        """Queued work that cannot start at a steady run's first iteration cannot start later
        in it: the run's batch (so its slots and tokens) is fixed and the GPU pool's free
        blocks only shrink as contexts grow. So check `step()`'s swap-in and admission
        conditions as they will stand at that iteration, after the decodes' growth."""
        cfg, gpu = self.config, self.kv.gpu
        n = len(running)
        growth = self._next_token_growth(gpu, running)[0]
        if self.swapped:  # _swap_in, and no admission while anything is swapped
            first = min(self.swapped.values(), key=lambda r: r.admit_order)
            used = gpu.num_used + growth
            limit = cfg.swap_in_watermark * gpu.num_blocks
            return used + self._blocks(first.seq_len) > limit or n + 1 > min(
                cfg.max_batch_size, token_budget
            )
        if n >= cfg.max_num_seqs:  # _admit's slot check
            return True
        head = self.waiting[0]
        seqs_left, tokens_left = cfg.max_batch_size - n, token_budget - n
        remaining = head.seq_len - head.num_computed
        chunk = min(remaining, tokens_left) if cfg.chunked_prefill_tokens else remaining
        end = head.num_computed + chunk
        return (
            chunk < 1
            or gpu.extra_blocks(head.request_id, end) > gpu.num_free - growth
            or seqs_left < 1
            or tokens_left < chunk
        )

    def step(self, now: float = 0.0) -> Plan:
        self.step_index += 1
        self.now = now
        cfg = self.config
        budget = Budget(cfg.max_batch_size, cfg.iteration_tokens)
        swap_out, recomputed, residents = self._preempt_until_decodes_fit(budget)
        swap_in = () if (swap_out or recomputed) else self._swap_in(budget)
        batch = SubBatchBuilder(self.cost)
        self._schedule_running(batch, budget, None if swap_in else residents)
        if not self.swapped:
            self._admit(batch, budget)
        layer_s = sequential_layer_s(batch)
        predicted = iteration_s(self.cost, layer_s, batch.num_seqs) + swap_s(
            self.cost, swap_out, swap_in, cfg.block_size
        )
        return Plan(
            self.step_index,
            Mode.SEQUENTIAL,
            (batch.freeze(),),
            swap_out,
            swap_in,
            recomputed,
            predicted,
        )

    # ---- phases ----------------------------------------------------------------------------
    def _preempt_until_decodes_fit(
        self, budget: Budget
    ) -> tuple[tuple[Swap, ...], tuple[int, ...], ResidentDecodes | None]:
        """Preempt the newest running requests until every decode has a slot and a block.
        Also returns the pass over the GPU residents it took (`_resident_decodes`) where it
        preempted none (it still holds), else None."""
        gpu = self.kv.gpu
        running = list(self.gpu_running.values())
        residents = self._resident_decodes(gpu, running)
        need, decoding = residents.need, len(residents.works)
        swaps: list[Swap] = []
        recomputed: list[int] = []
        while running and (need > gpu.num_free or decoding > min(budget.seqs, budget.tokens)):
            victim = running.pop()
            if not victim.is_prefilling:
                decoding -= 1
                need -= gpu.extra_blocks(victim.request_id, victim.seq_len)
            swap = self._preempt(victim)
            if swap is None:
                recomputed.append(victim.request_id)
            else:
                swaps.append(swap)
        return tuple(swaps), tuple(recomputed), None if swaps or recomputed else residents

    @staticmethod
    def _resident_decodes(pool: BlockPool, requests: Iterable[Request]) -> ResidentDecodes:
        """`requests`' decodes for the next iteration, the blocks `pool` adds for them (as
        `Policy._next_token_growth` counts), those that add some, and the residents part-way
        through a prompt, in one loop: a step needs each of these of every GPU resident. Three
        passes did it before (the decodes picked by `Request.is_prefilling`, their blocks
        counted, their work built): on a loaded H100's residents this loop takes 0.63x their
        time (ad hoc, docs/policy-results.md). NEO's residents all decode, and there its two
        passes (the count, then `decode_works`) are the faster."""
        lookup, block_size = pool.tables.get, pool.block_size
        need = 0
        works: list[DecodeWork] = []
        growing: list[DecodeWork] = []
        prefilling: list[Request] = []
        add = works.append
        for r in requests:
            computed, seq_len = r.num_computed, r.prompt_len + r.num_generated
            if computed < seq_len - 1 or computed == 0:  # r.is_prefilling
                prefilling.append(r)
                continue
            request_id = r.request_id
            work = new_tuple(DecodeWork, (request_id, seq_len))
            add(work)
            extra = -(-seq_len // block_size) - len(lookup(request_id, ()))
            if extra > 0:
                need += extra
                growing.append(work)
        return ResidentDecodes(works, need, growing, prefilling)

    def _preempt(self, r: Request) -> Swap | None:
        cpu = self.kv.cpu
        if r.is_prefilling or cpu.extra_blocks(r.request_id, r.num_computed) > cpu.num_free:
            self._recompute(r)
            return None
        return self._park(r)

    def _swap_in(self, budget: Budget) -> tuple[Swap, ...]:
        """`_swap_in_parked` with what the running requests leave of `budget` (a copy:
        `_schedule_running` charges every decode, those brought back too)."""
        running = len(self.gpu_running)
        return self._swap_in_parked(Budget(budget.seqs - running, budget.tokens - running))

    def _schedule_running(
        self, batch: SubBatchBuilder, budget: Budget, residents: ResidentDecodes | None
    ) -> None:
        """Decodes first, then the next chunk of any prompt already being prefilled. The
        decodes go in bulk (slots charged, blocks grown and work added at once): it runs for
        every running request every iteration. `residents`: the GPU residents as
        `_preempt_until_decodes_fit` passed over them, where it preempted none and none came
        back since; else they are passed over anew."""
        gpu = self.kv.gpu
        if residents is None:
            residents = self._resident_decodes(gpu, self.gpu_running.values())
        works = residents.works
        budget.take_each(len(works), 1)
        gpu.grow_each(residents.growing)
        batch.add_decodes(works, on_gpu=True)
        for r in residents.prefilling:
            chunk = min(r.seq_len - r.num_computed, budget.tokens)
            end = r.num_computed + chunk
            if (
                chunk < 1
                or gpu.extra_blocks(r.request_id, end) > gpu.num_free
                or not budget.take(chunk)
            ):
                continue
            gpu.grow(r.request_id, end)
            batch.add_prefill(PrefillWork(r.request_id, r.num_computed, end))

    def _admit(self, batch: SubBatchBuilder, budget: Budget) -> None:
        """New prompts in FCFS order while slots, tokens and GPU blocks allow."""
        gpu, cfg = self.kv.gpu, self.config
        while self.waiting and len(self.gpu_running) < cfg.max_num_seqs:
            r = self.waiting[0]
            remaining = r.seq_len - r.num_computed
            chunk = min(remaining, budget.tokens) if cfg.chunked_prefill_tokens else remaining
            end = r.num_computed + chunk
            if (
                chunk < 1
                or gpu.extra_blocks(r.request_id, end) > gpu.num_free
                or not budget.take(chunk)
            ):
                break
            self.waiting.popleft()
            gpu.grow(r.request_id, end)
            r.state = RequestState.RUNNING_GPU
            self._mark_admitted(r)
            self.gpu_running[r.request_id] = r
            batch.add_prefill(PrefillWork(r.request_id, r.num_computed, end))
