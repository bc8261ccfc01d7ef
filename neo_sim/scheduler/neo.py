"""NEO: asymmetric pipelining with load-aware scheduling (docs/architecture.md, "NEO's six steps").

`step()` runs the six steps of the design, one method each:
1. `_swap_out`: keep every GPU decode; if the GPU pool or the budget is short, move the most
   recently admitted GPU decodes to the CPU (their KV goes to host memory).
2. `_swap_in`: if nothing was swapped out, bring CPU decodes back to the GPU, longest-waiting
   first, while GPU KV usage stays under the low watermark.
3. `_admit`: take waiting prompts FCFS while tokens, request slots and KV allow; place each on
   the GPU while it fits, else on the CPU (only with host room for every CPU resident to grow
   to its full length), and once one goes to the CPU later ones follow; a prompt goes to the
   CPU only where the host pays for it (`_host_resident_pays`), else it waits for GPU KV.
   (Tentative: only the prompts that survive steps 5 and 6 are really admitted.) With
   `chunked_prefill_tokens`, the last prompt admitted gets the rest of the budget as a chunk
   (unless it goes to the host and an iteration holds it whole: it then waits a step); a
   prompt part-way through its chunks stays first in line, its KV in its pool, and goes on.
4. `_build_sub_batches`: sub-batch 0 gets the prefills and GPU decodes; CPU decodes are added
   one by one, longest-waiting first, to the sub-batch with more slack, skipping any request at
   least as long as one already rejected, and rejecting one that would make a slack negative.
5. `_trim_cpu_prefills`: while the CPU would idle, drop CPU-placed prefills from sub-batch 0
   down to a width of `cpu_prefill_min_tokens` as long as slack stays non-negative.
6. `_choose_mode`: run the pipelined plan only if it serves more requests per second than the
   sequential GPU-only plan of the same GPU work.
Beyond the artifact (docs/architecture.md, "Departures from the artifact"): CPU decodes are
offered and swapped back longest-waiting first (the artifact takes them in admission order,
so the newest starve while the oldest finish), the host pool is reserved for residents'
growth, a prompt goes to the host only where the host pays for it, and a CPU decode that has
waited `max_cpu_wait_steps` iterations is forced into the pipelined plan; such a plan may
carry negative slack and lists the forced requests in `Plan.forced_ids`.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Iterator, Sequence
from itertools import takewhile

from neo_sim.costmodel import CostModel
from neo_sim.scheduler.base import Budget, Policy, SteadyRun
from neo_sim.scheduler.estimate import (
    CpuDecodeOffers,
    SubBatchBuilder,
    cpu_lane_s,
    iteration_s,
    pipelined_layer_s,
    sequential_layer_s,
    slacks,
    swap_s,
)
from neo_sim.scheduler.plan import (
    DecodeWork,
    Mode,
    Plan,
    PrefillWork,
    Swap,
    context_tokens,
    decode_works,
)
from neo_sim.scheduler.request import Device, Request, RequestState

Candidate = tuple[Request, Device]
UNBOUNDED_WAIT = 10**9  # iterations: a starvation bound that never binds


def _oldest_progress_first(requests: Iterable[Request]) -> list[Request]:
    """`requests` by the step of their last progress, oldest first, ties in admission order:
    two stable sorts on C-level keys (admission rank, then last step), faster than one sort
    on a Python key function; it runs over every host resident each iteration."""
    order = sorted(requests, key=_ADMIT_ORDER)
    order.sort(key=_LAST_PROGRESS)
    return order


_ADMIT_ORDER = operator.attrgetter("admit_order")
_LAST_PROGRESS = operator.attrgetter("last_progress_step")


class NeoPolicy(Policy):
    name = "neo"
    # neo-unbounded: the artifact's rule, no starvation bound (throughput over fairness).
    listing_rank = 10
    variants = {"neo": {}, "neo-unbounded": {"max_cpu_wait_steps": UNBOUNDED_WAIT}}
    # With `chunked_prefill_tokens`, a prompt is prefilled in chunks that fill the iteration's
    # token budget; until its last chunk it stays first in line (`waiting`), its KV in the
    # pool it was placed in.
    chunks_prompts = True
    # This step's candidates that get a chunk short of their prompt: request id -> chunk end.
    _chunk_ends: dict[int, int] = {}
    # (step, its CPU decodes longest-waiting first, their decodes): `_host_decodes`
    _waited_order: tuple[int, list[Request], list[DecodeWork]] = (-1, [], [])
    # (step, the GPU residents counted, their number, the blocks their next tokens add, the
    # decodes that add them): `_gpu_blocks_after_growth`, set by step 1 and valid until
    # `_commit` or a swap-in
    _next_growth: tuple[int, dict[int, Request], int, int, list[DecodeWork]] = (-1, {}, 0, 0, [])

    def steady_run(self) -> SteadyRun | None:
        """With nothing waiting and nothing on the CPU, NEO's step is GPU-only's: it decodes
        every GPU-resident request in one sequential sub-batch."""
        return self._steady_gpu_decodes(self.config.max_batch_tokens)

    def step(self, now: float = 0.0) -> Plan:
        self.step_index += 1
        self.now = now
        budget = Budget(self.config.max_batch_size, self.config.iteration_tokens)
        reserved = self._reserve_for_overdue(budget)
        swap_out, recomputed = self._swap_out(budget)
        swap_in = () if (swap_out or recomputed) else self._swap_in(budget)
        if not (swap_out or recomputed or swap_in):
            swap_out, swap_in = self._exchange()
        recomputed = (*recomputed, *self._make_room_for_overdue())
        candidates = self._admit(budget)
        budget.seqs += reserved
        budget.tokens += reserved
        mode, chosen, forced = self._plan_work(candidates, budget)
        if not any(chosen) and not swap_in and self.cpu_running:
            recomputed = (*recomputed, self._break_host_deadlock())
        return self._commit(mode, chosen, swap_out, swap_in, recomputed, forced)

    def _plan_work(
        self, candidates: list[Candidate], budget: Budget
    ) -> tuple[Mode, tuple[SubBatchBuilder, ...], tuple[int, ...]]:
        """Steps 4-6: the iteration's sub-batches, its mode, and the overdue CPU decodes it
        carries because of the starvation bound."""
        b0, b1, forced = self._build_sub_batches(candidates, budget)
        if b1:
            self._trim_cpu_prefills(b0, b1)
        mode, chosen = self._choose_mode(b0, b1, forced)
        return mode, chosen, (forced if mode == Mode.PIPELINED else ())

    def _exchange(self) -> tuple[tuple[Swap, ...], tuple[Swap, ...]]:
        """Step 2's other form where nothing else moved: (swap-outs, swap-ins) that trade GPU
        residents for requests off the GPU, one for one (NEO trades none; adaptive's rule 7
        does in the drain). The batch's slots are unchanged."""
        return (), ()

    def _break_host_deadlock(self) -> int:
        """Nothing can run: CPU decodes cannot grow in a full host pool and cannot move to the
        GPU. Drop the newest one's KV (it will recompute) so the others can proceed."""
        newest = max(self.cpu_running.values(), key=lambda r: r.admit_order)
        self._recompute(newest)
        return newest.request_id

    def _make_room_for_overdue(self) -> tuple[int, ...]:
        """Overdue CPU decodes whose next token needs a host block that a full host pool
        lacks (swapped-out GPU decodes can fill the room kept for residents' growth) would
        wait until some resident finishes: the newest residents that are not overdue give their
        KV back (they will recompute), newest first, until the overdue ones can grow."""
        cpu = self.kv.cpu
        overdue = self._overdue()
        need = sum(cpu.extra_blocks(r.request_id, r.seq_len) for r in overdue)
        if need <= cpu.num_free:
            return ()
        limit = self._overdue_before()
        others = [r for r in self.cpu_running.values() if r.last_progress_step >= limit]
        dropped = []
        for r in sorted(others, key=lambda r: r.admit_order, reverse=True):
            if need <= cpu.num_free:
                break
            self._recompute(r)
            dropped.append(r.request_id)
        return tuple(dropped)

    def _reserve_for_overdue(self, budget: Budget) -> int:
        """Hold batch slots for overdue CPU decodes so that admissions cannot starve them."""
        reserved = max(0, min(len(self._overdue()), budget.seqs - 1, budget.tokens - 1))
        budget.seqs -= reserved
        budget.tokens -= reserved
        return reserved

    # ---- step 1 ---------------------------------------------------------------------------
    def _swap_out(self, budget: Budget) -> tuple[tuple[Swap, ...], tuple[int, ...]]:
        gpu = self.kv.gpu
        decodes = list(self.gpu_running.values())
        need, growing = self._next_token_growth(gpu, decodes)
        swaps: list[Swap] = []
        recomputed: list[int] = []
        while decodes and (need > gpu.num_free or len(decodes) > min(budget.seqs, budget.tokens)):
            victim = decodes.pop()
            need -= gpu.extra_blocks(victim.request_id, victim.seq_len)
            swap = self._move_to_cpu(victim)
            if swap is None:
                recomputed.append(victim.request_id)
            else:
                swaps.append(swap)
        budget.seqs -= len(decodes)
        budget.tokens -= len(decodes)
        # Every victim left gpu_running: `need` is what the residents left need.
        if swaps or recomputed:
            growing = [d for d in growing if d.request_id in self.gpu_running]
        self._next_growth = (
            self.step_index,
            self.gpu_running,
            len(self.gpu_running),
            need,
            growing,
        )
        return tuple(swaps), tuple(recomputed)

    def _move_to_cpu(self, r: Request) -> Swap | None:
        """Swap `r`'s KV to the host: it decodes there if the host pays for it as a resident,
        else it is parked (as under gpu-only) until the GPU has room again."""
        cpu = self.kv.cpu
        if cpu.extra_blocks(r.request_id, r.seq_len) > cpu.num_free:
            self._recompute(r)  # host memory is full too: drop the KV
            return None
        return self._leave_gpu(r, park=not self._host_pays_for_swapped(r))

    def _leave_gpu(self, r: Request, park: bool) -> Swap:
        """GPU resident `r`'s KV to the host: parked (`_park`), or a host resident (then
        `_host_decodes` is built anew this step)."""
        if park:
            return self._park(r)
        swap = self._move_kv(r, to_gpu=False)
        del self.gpu_running[r.request_id]
        self.cpu_running[r.request_id] = r
        r.state = RequestState.RUNNING_CPU
        self._waited_order = NeoPolicy._waited_order
        return swap

    def _host_pays_for_swapped(self, victim: Request) -> bool:
        """The host-pays test of step 3 for a request about to leave the GPU."""
        if self.config.max_cpu_wait_steps >= UNBOUNDED_WAIT or self.config.slo_tpot_s is not None:
            # No bound, nothing mandatory: the artifact's rule. Under a TPOT SLO a parked
            # request would wait for GPU room far beyond it: it stays a host resident.
            return True
        return self._host_pays_for(victim)

    def _host_pays_for(self, victim: Request) -> bool:
        """`_host_resident_pays` for `victim`, a GPU resident, as a host resident instead: the
        steady iteration of the others on the GPU and every host resident and it on the host."""
        others = [r for r in self.gpu_running.values() if r is not victim]
        gpu, host, fused = self._steady_builders(others)
        best = self._steady_rate(gpu, host, fused)
        prefill = SteadyPrefill((*others, *self.cpu_running.values()))
        prefill.add(victim)
        for b in (host, fused):
            b.add_cpu_decode(DecodeWork(victim.request_id, victim.seq_len))
        return self._host_resident_pays(gpu, host, fused, prefill, best)[0]

    # ---- step 2 ---------------------------------------------------------------------------
    def _swap_in(self, budget: Budget) -> tuple[Swap, ...]:
        if self.swapped:  # parked requests first, oldest first, as under gpu-only
            return self._swap_in_parked(budget)
        if not self.cpu_running:
            return ()
        gpu = self.kv.gpu
        # The low watermark leaves room for new prompts; an idle GPU takes whatever fits.
        limit = (
            self.config.swap_in_watermark * gpu.num_blocks if self.gpu_running else gpu.num_blocks
        )
        used = self._gpu_blocks_after_growth()
        swaps = []
        for r in self._cpu_decodes_longest_waiting_first():
            blocks = self._blocks(r.seq_len)
            if used + blocks > limit or not budget.take(1):
                break
            used += blocks
            swaps.append(self._to_gpu(r))
        if swaps:
            self._gpu_running_in_admission_order()
        return tuple(swaps)

    # ---- step 3 ---------------------------------------------------------------------------
    def _admit(self, budget: Budget) -> list[Candidate]:
        candidates = self._place(budget)
        # A prompt part-way through its chunks is committed to its pool: it always goes on.
        started = sum(1 for _ in takewhile(lambda c: c[0].num_computed > 0, candidates))
        kept = max(self._host_admissions(candidates), started)
        for r, device in candidates[kept:]:  # a suffix: once one goes to the host, all do
            budget.give(self._prefill_work(r, device).num_tokens)
        return candidates[:kept]

    def _place(self, budget: Budget) -> list[Candidate]:
        """The artifact's placement: FCFS, GPU while it fits, then the host."""
        gpu, cpu = self.kv.gpu, self.kv.cpu
        gpu_used = self._gpu_blocks_after_growth()
        # A prompt goes to the CPU only if the host pool keeps room for every CPU resident to
        # grow to its full length: a full host pool would stall them all (decodes that cannot
        # grow are skipped), which the artifact's rule allowed.
        # Used: every host resident at its full length (a running sum), plus the blocks of
        # parked requests, the only other holders of host blocks.
        cpu_used = self.cpu_running.full_blocks + cpu.num_blocks_of_each(self.swapped)
        slots = self.config.max_num_seqs - self.num_resident
        to_cpu = False
        candidates: list[Candidate] = []
        chunking = self.config.chunked_prefill_tokens > 0
        self._chunk_ends = {}
        for r in self.waiting:
            if slots <= 0:
                break
            held = self._partial_prefill_device(r)
            blocks = gpu.extra_blocks(r.request_id, r.seq_len)
            fits_gpu = not to_cpu and gpu_used + blocks <= gpu.num_blocks
            # A prompt part-way through its chunks stays in the pool it is in (`held`).
            if fits_gpu and (held == Device.GPU or (held is None and self._gpu_allowed())):
                device = Device.GPU
            elif held == Device.GPU:
                break  # its first chunks are on the GPU, which has no room for the rest now
            elif cpu_used + self._blocks(r.max_seq_len) <= self._cpu_admission_limit(gpu_used):
                device = Device.CPU
            else:
                break
            remaining = r.seq_len - r.num_computed
            chunk = self._chunk_of(r, device, remaining, budget.tokens) if chunking else remaining
            if self._waits_to_go_whole(chunk, remaining, device, held):
                break
            if chunk < 1 or not budget.take(chunk):
                break
            if chunk < remaining:
                self._chunk_ends[r.request_id] = r.num_computed + chunk
            if device == Device.GPU:
                gpu_used += blocks
            else:
                cpu_used += self._blocks(r.max_seq_len)
                to_cpu = True
            slots -= 1
            candidates.append((r, device))
        return candidates

    def _chunk_of(self, r: Request, device: Device, remaining: int, tokens: int) -> int:
        """With chunked prefill, the tokens of `r`'s prompt (`remaining` left) this step
        prefills on `device`: all the budget's `tokens` allow."""
        return min(remaining, tokens)

    def _host_admissions(self, candidates: list[Candidate]) -> int:
        """How many of `candidates` to admit: every GPU-placed one, and host-placed ones while
        the host pays for them (`_host_resident_pays`). Host placement is sticky (a prompt
        placed on the host decodes there until it ends or is swapped back), so a prompt the
        host cannot pay for waits for GPU KV instead, as under gpu-only."""
        first_cpu = self._first_host_placed(candidates)
        if first_cpu is None:
            return len(candidates)
        steady = self._admission_steady_state(candidates[:first_cpu])
        best = self._steady_rate(*steady[:3])
        for i in self._host_candidates_in_turn(candidates, first_cpu, steady):
            pays, best = self._host_resident_pays(*steady, best)
            if not pays:
                return i
        return len(candidates)

    def _host_blocks_free_after(self, candidates: list[Candidate]) -> int:
        """Host KV blocks left once this step's host-placed prompts (or chunks) take theirs."""
        cpu = self.kv.cpu
        return cpu.num_free - sum(
            cpu.extra_blocks(r.request_id, self._prefill_work(r, d).end)
            for r, d in candidates
            if d == Device.CPU
        )

    def _prefill_work(self, r: Request, device: Device) -> PrefillWork:
        """This step's prefill of candidate `r`: its next chunk (`_place` sized it), else the
        rest of its prompt."""
        end = self._chunk_ends.get(r.request_id, r.seq_len)
        return PrefillWork(r.request_id, r.num_computed, end, device)

    def _waits_to_go_whole(
        self, chunk: int, remaining: int, device: Device, held: Device | None
    ) -> bool:
        """Whether a prompt the budget would cut waits instead: a new host-placed prompt that
        one iteration holds whole. Cut, its first chunk would commit it to the host whenever
        the GPU pool is full at that moment (a later chunk cannot move), where waiting a step
        lets it go to the GPU once room frees; on the policy map cutting such prompts put 27
        cells below 0.99x the best rival at a chunk of the map's budget, against 12 with this
        rule (ad hoc, docs/architecture.md "Adaptive")."""
        return (
            chunk < remaining
            and device == Device.CPU
            and held is None
            and remaining <= self.config.iteration_tokens
        )

    def _recompute(self, r: Request) -> None:
        """The base's preemption, except that a prompt part-way through its chunks stays first
        in `waiting`: its KV holds room in its pool, and queued behind the recomputed request
        that room could serve neither (the property tests' livelock: a 136-token prompt held
        32 of 44 GPU blocks behind a recomputed request that needed more than the 12 left)."""
        if not (self.waiting and self.waiting[0].num_computed):
            super()._recompute(r)
            return
        part_way = self.waiting.popleft()
        super()._recompute(r)
        self.waiting.appendleft(part_way)

    def _partial_prefill_device(self, r: Request) -> Device | None:
        """Where a waiting request that has some chunks prefilled keeps their KV (it stays
        there); None for a prompt not started."""
        if not r.num_computed:
            return None
        return Device.GPU if self.kv.gpu.holds(r.request_id) else Device.CPU

    @staticmethod
    def _first_host_placed(candidates: list[Candidate]) -> int | None:
        """Index of the first candidate placed on the host (those after it are too), or None."""
        return next((i for i, (_, d) in enumerate(candidates) if d == Device.CPU), None)

    def _admission_steady_state(
        self, gpu_placed: list[Candidate]
    ) -> tuple[SubBatchBuilder, SubBatchBuilder, SubBatchBuilder, SteadyPrefill]:
        """The steady state the host-pays test prices before any host-placed prompt joins:
        `_steady_builders` of the GPU residents and `gpu_placed` prompts, and the prefill
        every resident's slot brings (gpu, host, fused, prefill)."""
        gpu_side = [*self.gpu_running.values(), *(r for r, _ in gpu_placed)]
        gpu, host, fused = self._steady_builders(gpu_side)
        return gpu, host, fused, SteadyPrefill((*gpu_side, *self.cpu_running.values()))

    @staticmethod
    def _host_candidates_in_turn(
        candidates: list[Candidate],
        first_cpu: int,
        steady: tuple[SubBatchBuilder, SubBatchBuilder, SubBatchBuilder, SteadyPrefill],
    ) -> Iterator[int]:
        """Add each host-placed candidate (from `first_cpu` on) to `steady`'s host decodes,
        fused batch and prefill in turn, yielding its index once it is in."""
        _, host, fused, prefill = steady
        for i in range(first_cpu, len(candidates)):
            r = candidates[i][0]
            for b in (host, fused):
                b.add_cpu_decode(DecodeWork(r.request_id, r.seq_len))
            prefill.add(r)
            yield i

    def _steady_builders(
        self, gpu_side: Iterable[Request]
    ) -> tuple[SubBatchBuilder, SubBatchBuilder, SubBatchBuilder]:
        """The decode-only iteration the host-pays test prices: `gpu_side`'s decodes on the
        GPU, the host residents' on the host, and both in one fused batch (gpu, host, fused)."""
        return decode_only_builders(self.cost, decode_works(gpu_side), self._host_decodes()[1])

    def _host_resident_pays(
        self,
        gpu: SubBatchBuilder,
        host: SubBatchBuilder,
        fused: SubBatchBuilder,
        prefill_tokens: SteadyPrefill,
        best: float,
    ) -> tuple[bool, float]:
        """Whether the host resident just added to `host` (and `fused`) pays for itself, and
        the best steady rate so far: a decode-only iteration decoding every resident serves at
        least `best` requests/s with it, or the host decodes the starvation bound makes
        mandatory stay hidden under the GPU's steady work (the host then serves its residents
        in turns at no cost to the GPU, and the bound never forces a plan slower than the
        GPU's own)."""
        rate = self._steady_rate(gpu, host, fused)
        pays = rate >= best or self._bound_stays_hidden(gpu, host, prefill_tokens)
        return pays, max(best, rate)

    def _steady_rate(
        self, gpu: SubBatchBuilder, host: SubBatchBuilder, fused: SubBatchBuilder
    ) -> float:
        """Requests/s of the best decode-only iteration over `gpu`'s and `host`'s decodes
        (`fused` holds both, for policies that run fused plans): the pipelined one with the
        host decodes in sub-batch 1, or GPU-only if the host holds none."""
        if not host:
            return self._rate(Mode.SEQUENTIAL, (gpu,)) if gpu else 0.0
        return (
            self._rate(Mode.PIPELINED, (gpu, host)) if gpu else self._rate(Mode.SEQUENTIAL, (host,))
        )

    def _bound_stays_hidden(
        self, gpu: SubBatchBuilder, host: SubBatchBuilder, prefill_tokens: SteadyPrefill
    ) -> bool:
        """Whether the host decodes the starvation bound makes mandatory (each of `host`'s
        residents once per `max_cpu_wait_steps` iterations; the longest contexts, to be safe)
        fit under the linear layers of the GPU's steady work (`gpu`'s decodes plus
        `prefill_tokens` prompt tokens) in a pipelined iteration: slack 1 stays non-negative.
        Without a bound (neo-unbounded) nothing is mandatory."""
        wait = self.config.max_cpu_wait_steps
        if wait >= UNBOUNDED_WAIT:
            return True
        mandatory = -(-len(host.cpu_decodes) // wait)
        longest = heapq.nlargest(mandatory, (d.context_len for d in host.cpu_decodes))
        window = self.cost.linear(gpu.num_tokens + round(prefill_tokens.total()))
        return cpu_lane_s(self.cost, mandatory, sum(longest)) <= window

    def _cpu_admission_limit(self, gpu_used: int) -> int:
        """Prompts may fill the CPU pool only up to the room a full GPU swap-out would need.

        The artifact reserves the whole GPU pool's size; reserving what the GPU holds now is
        as safe for swaps and never locks out a prompt that fits while the GPU is idle.
        """
        return max(0, self.kv.cpu.num_blocks - gpu_used)

    def _gpu_allowed(self) -> bool:
        """New prompts do not take GPU room before parked requests are back."""
        return not self.swapped

    # ---- step 4 ---------------------------------------------------------------------------
    def _build_sub_batches(
        self, candidates: list[Candidate], budget: Budget
    ) -> tuple[SubBatchBuilder, SubBatchBuilder, tuple[int, ...]]:
        b0, b1 = SubBatchBuilder(self.cost), SubBatchBuilder(self.cost)
        for r, device in candidates:
            b0.add_prefill(self._prefill_work(r, device))
        b0.add_decodes(decode_works(self.gpu_running.values()), True)
        if not self.cpu_running:
            return b0, b1, ()  # no CPU decode to place
        cpu_free = self._host_blocks_free_after(candidates)
        if not b0:
            # No GPU work to hide CPU attention behind: a CPU-only sequential batch.
            for r in self._cpu_decodes_longest_waiting_first():
                growth = self.kv.cpu.extra_blocks(r.request_id, r.seq_len)
                if growth <= cpu_free and budget.take(1):
                    cpu_free -= growth
                    b0.add_cpu_decode(DecodeWork(r.request_id, r.seq_len))
            return b0, b1, ()
        offers = CpuDecodeOffers(b0, b1)
        works = self._host_decodes()[1]
        overdue = len(self._overdue())  # a prefix of `works`
        forced = offers.offer_in_turn(
            works,
            [True] * overdue + [False] * (len(works) - overdue),
            self.kv.cpu,
            cpu_free,
            min(budget.seqs, budget.tokens),
        )
        kept = offers.num_kept
        budget.seqs -= kept  # one budget.take(1) per kept decode
        budget.tokens -= kept
        offers.apply()
        return b0, b1, tuple(forced)

    def _overdue(self) -> list[Request]:
        """The CPU decodes that waited too long: a prefix of
        `_cpu_decodes_longest_waiting_first` (oldest progress first)."""
        order = self._cpu_decodes_longest_waiting_first()
        limit = self._overdue_before()
        k = 0
        for r in order:
            if r.last_progress_step >= limit:
                break
            k += 1
        return order[:k]

    def _overdue_before(self) -> int:
        """A CPU decode whose last progress is before this step waited too long."""
        return self.step_index - self.config.max_cpu_wait_steps

    # ---- step 5 ---------------------------------------------------------------------------
    def _trim_cpu_prefills(self, b0: SubBatchBuilder, b1: SubBatchBuilder) -> None:
        threshold = self.config.cpu_prefill_min_tokens
        while b0.prefills:
            p = b0.pop_prefill()
            if never_trimmed(p) or b0.num_tokens < threshold or not b0 or min(slacks(b0, b1)) < 0:
                b0.add_prefill(p)
                return

    # ---- step 6 ---------------------------------------------------------------------------
    def _choose_mode(
        self, b0: SubBatchBuilder, b1: SubBatchBuilder, forced: tuple[int, ...]
    ) -> tuple[Mode, tuple[SubBatchBuilder, ...]]:
        if not b1:
            if b0.cpu_decodes or not any(p.kv_device == Device.CPU for p in b0.prefills):
                return Mode.SEQUENTIAL, (b0,)  # nothing for `_sequential_batch` to trim
            return Mode.SEQUENTIAL, (self._sequential_batch(b0),)
        if forced:
            return Mode.PIPELINED, (b0, b1)
        seq = self._sequential_batch(b0)
        if self._rate(Mode.SEQUENTIAL, (seq,)) >= self._rate(Mode.PIPELINED, (b0, b1)):
            return Mode.SEQUENTIAL, (seq,)
        return Mode.PIPELINED, (b0, b1)

    def _sequential_batch(self, b0: SubBatchBuilder) -> SubBatchBuilder:
        """The GPU-only alternative: b0's prefills and GPU decodes, CPU prefills trimmed."""
        seq = self._gpu_only_batch(b0.prefills, b0.gpu_decodes)
        threshold = self.config.cpu_prefill_min_tokens
        while seq.prefills:
            p = seq.pop_prefill()
            if never_trimmed(p) or seq.num_tokens < threshold or not seq:
                seq.add_prefill(p)
                break
        return seq

    def _gpu_only_batch(
        self, prefills: Iterable[PrefillWork], gpu_decodes: Iterable[DecodeWork]
    ) -> SubBatchBuilder:
        """A new sub-batch of these prefills and GPU decodes, in order."""
        b = SubBatchBuilder(self.cost)
        for p in prefills:
            b.add_prefill(p)
        for d in gpu_decodes:
            b.add_gpu_decode(d)
        return b

    # ---- commit ---------------------------------------------------------------------------
    def _commit(
        self, mode: Mode, chosen: tuple[SubBatchBuilder, ...], swap_out, swap_in, recomputed, forced
    ) -> Plan:
        gpu, cpu = self.kv.gpu, self.kv.cpu
        growing = self._decodes_that_grow(chosen)
        self._next_growth = NeoPolicy._next_growth  # residents join and grow below
        admitted = {p.request_id: p for b in chosen for p in b.prefills}
        part_way: list[Request] = []  # prefilled a chunk short of the prompt: still first
        for _ in range(len(admitted)):
            r = self.waiting.popleft()
            p = admitted[r.request_id]  # KeyError: admitted prompts were not a FCFS prefix
            on_gpu = p.kv_device == Device.GPU
            self.kv.pool(on_gpu).grow(r.request_id, p.end)
            self._mark_admitted(r)
            if p.end < r.seq_len:
                part_way.append(r)
                continue
            r.state = RequestState.RUNNING_GPU if on_gpu else RequestState.RUNNING_CPU
            (self.gpu_running if on_gpu else self.cpu_running)[r.request_id] = r
        self.waiting.extendleft(reversed(part_way))
        if growing is not None:
            gpu.grow_each(growing)
        for b in chosen:
            if growing is None:
                gpu.grow_each(b.gpu_decodes)
            host_growing = b.cpu_decodes_growing
            cpu.grow_each(b.cpu_decodes if host_growing is None else host_growing)
        slack = slacks(*chosen) if mode == Mode.PIPELINED else ()
        predicted = self._work_s(mode, chosen) + swap_s(
            self.cost, swap_out, swap_in, self.config.block_size
        )
        return Plan(
            self.step_index,
            mode,
            tuple(b.freeze() for b in chosen),
            swap_out,
            swap_in,
            recomputed,
            predicted,
            slack,
            forced,
        )

    def _decodes_that_grow(self, chosen: tuple[SubBatchBuilder, ...]) -> list[DecodeWork] | None:
        """The GPU decodes of `chosen` that add a block, as counted this step
        (`_next_growth`), where the plan's first sub-batch decodes every GPU resident counted
        (its GPU decodes are residents, each once, in `gpu_running`'s order, so the same number
        means the same decodes in the same order, and the same block ids), else None (grow
        each of them). A step thereby passes over its GPU residents once for their blocks,
        not twice: the residents do not change between that count and `_commit` unless they
        leave (the count is then taken anew) or a swap-in rebuilds `gpu_running`, and none
        progresses within a step."""
        kept = self._kept_growth()
        if kept is None or not chosen or len(chosen[0].gpu_decodes) != len(self.gpu_running):
            return None
        return kept[1]

    def _kept_growth(self) -> tuple[int, list[DecodeWork]] | None:
        """This step's count of the GPU residents' next-token blocks and the decodes that add
        them (`_next_growth`), where it still holds: taken over `gpu_running` as it stands (a
        swap-in rebuilds the dict, a resident leaving shrinks it); else None."""
        step, counted, size, need, growing = self._next_growth
        if step != self.step_index or counted is not self.gpu_running or size != len(counted):
            return None
        return need, growing

    # ---- helpers ---------------------------------------------------------------------------
    def _work_s(self, mode: Mode, chosen: tuple[SubBatchBuilder, ...]) -> float:
        """Predicted seconds of an iteration's layers and LM head (swaps not included)."""
        num_seqs = sum(b.num_seqs for b in chosen)
        if mode == Mode.PIPELINED:
            return iteration_s(self.cost, pipelined_layer_s(*chosen), num_seqs)
        return iteration_s(self.cost, sequential_layer_s(chosen[0]), num_seqs)

    def _rate(self, mode: Mode, chosen: tuple[SubBatchBuilder, ...]) -> float:
        """Predicted requests served per second by an iteration: NEO's criterion of choice."""
        num_seqs = sum(b.num_seqs for b in chosen)
        return num_seqs / self._work_s(mode, chosen) if num_seqs else 0.0

    def _gpu_blocks_after_growth(self) -> int:
        """GPU blocks in use once every GPU resident holds its next token. Steps 1 to 3 ask it
        up to five times (adaptive) of residents that do not change between step 1's
        preemptions and `_commit` unless step 2 swaps some in (which rebuilds `gpu_running`),
        and nothing grows before `_commit`: the count is kept per step for the dict it was
        taken over (a pass over every resident: ~10% of a step on one H100)."""
        gpu, running = self.kv.gpu, self.gpu_running
        kept = self._kept_growth()
        if kept is None:
            need, growing = self._next_token_growth(gpu, running.values())
            self._next_growth = (self.step_index, running, len(running), need, growing)
        else:
            need = kept[0]
        return gpu.num_used + need

    def _cpu_decodes_longest_waiting_first(self) -> list[Request]:
        """CPU decodes by the step of their last token, oldest first (ties: admission order),
        so overdue requests come first and the rest take turns."""
        return self._host_decodes()[0]

    def _host_decodes(self) -> tuple[list[Request], list[DecodeWork]]:
        """`_cpu_decodes_longest_waiting_first` and each one's decode (its `DecodeWork` at
        its current length), built once per step: a later call in the same step drops those
        that left the host since (swapped in, recomputed) and builds both again only if some
        joined (no progress is made within a step, so order and lengths stay put)."""
        residents = self.cpu_running
        step, order, works = self._waited_order
        if step == self.step_index:
            if len(order) != len(residents):
                kept = [i for i, r in enumerate(order) if r.request_id in residents]
                order, works = [order[i] for i in kept], [works[i] for i in kept]
            if len(order) == len(residents):
                self._waited_order = (step, order, works)
                return order, works
        order = _oldest_progress_first(residents.values())
        works = decode_works(order)
        self._waited_order = (self.step_index, order, works)
        return order, works


def never_trimmed(p: PrefillWork) -> bool:
    """A prefill that trimming a plan never drops: a GPU-placed one (NEO trims only host
    prompts), or a later chunk of a host-placed prompt, which has its KV on the host and no
    other place to go (dropped, it would hold up every prompt behind it)."""
    return p.kv_device == Device.GPU or p.start > 0


def _steady_prefill_tokens(r: Request) -> float:
    """Prompt tokens per iteration that `r`'s slot brings in the steady state: a new prompt
    about as long as its own once per its output length (in iterations; at least one, as
    `Request` checks)."""
    return r.prompt_len / r.max_new_tokens


def decode_only_builders(
    cost: CostModel, on_gpu: list[DecodeWork], on_host: list[DecodeWork]
) -> tuple[SubBatchBuilder, SubBatchBuilder, SubBatchBuilder]:
    """A decode-only iteration of `on_gpu` and `on_host`, three ways: the GPU's decodes, the
    host's, and both in one fused batch (gpu, host, fused)."""
    gpu, host, fused = (SubBatchBuilder(cost) for _ in range(3))
    gpu_tokens, host_tokens = context_tokens(on_gpu), context_tokens(on_host)
    for b in (gpu, fused):
        b.add_decodes(on_gpu, on_gpu=True, tokens=gpu_tokens)
    for b in (host, fused):
        b.add_decodes(on_host, on_gpu=False, tokens=host_tokens)
    return gpu, host, fused


class SteadyPrefill:
    """Prompt tokens per iteration that residents bring in the steady state
    (`_steady_prefill_tokens` summed over them, in order), summed only when asked for: the
    host-pays test needs it only when its rate test fails."""

    def __init__(self, residents: Sequence[Request]):
        self.residents = residents
        self.added: list[Request] = []  # candidates, in the order they were added
        self._sum: float | None = None  # of residents, once computed

    def add(self, r: Request) -> None:
        self.added.append(r)

    def total(self) -> float:
        if self._sum is None:
            self._sum = _steady_prefill_sum(self.residents)
        total = self._sum
        for r in self.added:
            total += _steady_prefill_tokens(r)
        return total


def _steady_prefill_sum(requests: Sequence[Request]) -> float:
    """`sum(map(_steady_prefill_tokens, requests))`, at C speed (same terms, same order): it
    runs over every resident each iteration."""
    return sum(map(operator.truediv, map(_PROMPT_LEN, requests), map(_MAX_NEW, requests)))


_PROMPT_LEN, _MAX_NEW = operator.attrgetter("prompt_len"), operator.attrgetter("max_new_tokens")
