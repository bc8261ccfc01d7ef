"""Adaptive: per iteration, the best of GPU-only, fused (APEX) and pipelined (NEO) plans, each
with its host set sized by predicted throughput, within a TPOT SLO when one is set.

What it adds to `apex` (docs/architecture.md, "Adaptive"):
- NEO's pipelined plan keeps a CPU decode only while no slack turns negative (host attention
  stays hidden). Past that point the GPU waits, yet one more request per iteration can still
  be worth the wait; adaptive keeps adding CPU decodes, longest-waiting first, while each
  pays for the seconds it adds (`_extend_pipelined`, `_HostDecodePrice`).
- Without an SLO, when the pipelined plan loses to the GPU-only one, the GPU-only plan leaves
  out the prompts NEO would place on the host (`_without_cpu_prefills`): their decodes would
  wait; unless the host set they start pays as a whole (`_host_set_pays`).
- With `slo_tpot_s` set, prompts go to the host only while an iteration decoding every
  resident is predicted within the iteration's TPOT budget and only if the host pays (the
  steady iteration serves no fewer requests/s with them), host decodes are added while the
  iteration stays within it, and of the candidate plans the fastest-serving one within it is
  run (the fastest one if none is within it): host residents do not take turns, so each gets
  its next token within the budget whenever the hardware allows it. The budget is the SLO,
  less what the residents already lost: TPOT is a request's mean gap between tokens, so after
  an iteration that ran long (a prefill) the next ones run shorter, by what it lost spread over
  the tokens it has left, for its mean to stay within the SLO (`_tpot_budget_s`). Of the
  plans within it, those that decode every host resident go first; with chunked prefill a
  host set is judged with the waiting prompts it would take next, each decode at its mean
  future context (`_host_set_with_the_waiting`), and the plans that decode host residents
  take the last prompt's chunk after their host decodes, cut to what the budget leaves
  (`_add_what_fits`). Parked requests (swapped out where the host did not pay for them) are
  judged again every step and decode on the host once it pays (`_host_takes_parked`).
- With chunked prefill, where GPU KV alone holds the waiting prompts back (all residents on
  the GPU, the next prompt would not fit), or where it waits alone while the arrivals outpace
  the GPU, the prompt in line is spread over the steps until a resident ends, where the cost
  model says the decodes gain more than its own lose (`_chunk_of`, `_no_other_prompt_starts`,
  `_spread_chunk`); and once the GPU pool has filled, the GPU's prompts take
  at most the tokens per iteration at which its residents free it, so that they ride the
  decodes in small iterations instead of refilling the pool in whole chunks after each
  cohort departs (`_steady_admission_tokens`).
- With `slo_ttft_s` set, the prompts that can still get their first token within it go
  first, in arrival order, less those predicted to miss it anyway behind them (the longest
  dropped first, Moore and Hodgson's rule); those whose bound has run out wait behind
  (`_order_for_the_ttft_bound`): under overload, first come first served makes every
  request wait the whole queue, so once the queue is longer than the bound no one meets it;
  a late request counts for goodput no more if it starts now than at the end, and the run
  still serves it. An iteration carries only the prompt tokens whose prefill fits half the
  bound (`_ttft_prompt_tokens`: an arrival waits out the iteration in flight, then its own),
  and no more than the head of the queue whose prompts all make it together
  (`_head_that_makes_the_bound`); where every waiting prompt is predicted to make the bound,
  that head goes at once, even beyond half the bound.
  No prompt is held back for throughput (no lean plan, pacing or spreading) and prompts go
  whole.
- Without an SLO, once arrivals have stopped (`_arrivals_stopped`) the run ends with its last
  token, and adaptive plans for that end: the waiting queue goes most output left first
  (`_order_most_output_left_first`), and once no prompt waits the GPU residents nearest their
  end trade places with the requests off the GPU that have the most to go, where those are on
  the run's critical path (more tokens left than the drain's work per batch slot,
  `_tokens_per_slot`), by a margin that weighs the copies against the drain they save
  (`_exchange`, `_margin`). Under a TTFT SLO
  the trades alone, once arrivals have stopped by a stricter test (a false alarm there costs
  first tokens).
Steps 1-3 (swaps, admission, placement where the host pays) and the starvation bound are NEO's.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator

from neo_sim.costmodel import CostModel
from neo_sim.scheduler.apex import ApexPolicy
from neo_sim.scheduler.base import Budget, SchedulerConfig
from neo_sim.scheduler.estimate import (
    SubBatchBuilder,
    gpu_attn_s,
    gpu_decodes_pricer,
    kv_copy_s,
    slacks,
)
from neo_sim.scheduler.neo import Candidate, SteadyPrefill, decode_only_builders, never_trimmed
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, Swap, decode_works
from neo_sim.scheduler.request import Device, Request, RequestState

Option = tuple[Mode, tuple[SubBatchBuilder, ...], tuple[int, ...]]


class AdaptivePolicy(ApexPolicy):
    name = "adaptive"
    listing_rank = 30
    # adaptive: prompts prefilled in chunks of at most 1024 tokens per iteration, after the
    # residents' decodes, where that enlarges the GPU pool by `kv_chunk_min_gain` (5%) or more
    # (`kv_chunk_tokens`: the pool then keeps activations for 1024 tokens only,
    # `SchedulerConfig.iteration_tokens`); elsewhere whole prompts, admitted faster
    # (docs/architecture.md, "Adaptive": 1024 of 512 to 4096 measured on the policy map).
    # adaptive-whole: whole prompts everywhere, the form named `adaptive` until the map showed
    # the chunked form ahead in every one of its summaries (same section).
    variants = {
        "adaptive": {"kv_chunk_tokens": 1024},
        "adaptive-whole": {},
    }
    _tpot_limit_s = math.inf  # this step's TPOT budget (`_tpot_budget_s`), with an SLO set
    _held_out_host_blocks = 0  # those of the chunk `_plan_work` holds out of its plans
    _spreads = True  # whether `_chunk_of` may spread a prompt (`_admit` turns it off to redo)
    _spread = False  # whether it spread this step's first prompt
    _gpu_pool_filled = False  # whether the GPU pool has filled since it last emptied
    _gpu_prompt_tokens_left: int | None = None  # this step's, under `_steady_admission_tokens`
    # The arrivals `_arrivals_outpace_the_gpu` rates, latest last: a window, so that a server's
    # load is judged on its recent arrivals, not since its start (64 set beforehand, not fitted:
    # the map's runs are stationary, 200 requests each; docs/architecture.md, rule 4, has 16
    # and 256 measured after).
    ARRIVAL_WINDOW = 64
    # Rule 7's "arrivals have stopped": a silence a Poisson stream shows with this probability
    # (chosen so, not fitted to the map): after any one gap (exp(-x) = 1%: x = 4.6 mean gaps)
    # without an SLO, and after any of the gaps seen so far (n exp(-x) = 1%, the union bound)
    # under a TTFT SLO, where a false alarm costs first tokens (`_arrivals_stopped`).
    ARRIVALS_STOPPED_CHANCE = 0.01

    def __init__(self, config: SchedulerConfig, cost: CostModel):
        super().__init__(config, cost)
        self._recent_arrivals: deque[Request] = deque()
        self._recent_output_tokens = 0  # their `max_new_tokens`, summed
        self._recent_tokens = 0  # their `max_seq_len`, summed
        self._arrivals_seen = 0  # every request added since the start
        self._prefill_s_by_length: dict[int, float] = {}  # `_prefill_s`'s answers
        # Under a TTFT SLO, whether this step's queue is predicted to make the bound whole (no
        # prompt late, none predicted to miss): set by `_order_for_the_ttft_bound`, reset by
        # each step (a request recomputed during the step joins a queue nobody judged).
        self._queue_makes_the_bound = False

    def step(self, now: float = 0.0) -> Plan:
        self._queue_makes_the_bound = False  # no queue at the step's start: nothing judged
        if self.config.slo_ttft_s is not None and self.waiting:
            self._order_for_the_ttft_bound(now)
        if self.config.slo_tpot_s is not None:
            self._tpot_limit_s = self._tpot_budget_s(now)
            if self.swapped:
                self._host_takes_parked()
        elif self._orders_for_the_drain and len(self.waiting) > 1 and self._arrivals_stopped(now):
            self._order_most_output_left_first()
        return super().step(now)

    @property
    def _holds_prompts_back(self) -> bool:
        """Whether the rules that keep prompts waiting for throughput (rule 2's lean plan,
        rule 4's spread, rule 5's pacing) may: not under a TTFT SLO (rule 6)."""
        return self.config.slo_ttft_s is None

    def _order_for_the_ttft_bound(self, now: float) -> None:
        """Under a TTFT SLO: reorder the waiting queue for the most first tokens within the
        bound. First the prompts that can still make it, in arrival order (their bounds run
        out in that order), less those it predicts would miss anyway behind them; then those;
        then the prompts whose bound has run out by `now`, in arrival order. Which would miss
        (`_predicted_to_miss`): Moore and Hodgson's rule for the most jobs done by their due
        dates on one server, the longest prompt dropped each time one would be late; a prompt
        costs about its length in prefill time, so one long prompt pushed back can let
        several short ones make it. Requests that hold KV (a prompt part-way through its
        chunks) or have their first token out (recomputed after a preemption) keep their
        places at the front: their TTFT is settled or they are committed to a pool. Long
        prompts pay for the order where the bound cannot cover them all
        (`slo_met_share_long_prompts` in a run's summary)."""
        horizon = now - self.config.slo_ttft_s
        queue = self.waiting
        started = 0
        for r in queue:
            if r.num_computed == 0 and r.num_generated == 0:
                break
            started += 1
        rest = list(queue)[started:]
        by_arrival = sorted(rest, key=lambda r: r.arrival_s)  # the last step's order aside
        in_time = [r for r in by_arrival if r.arrival_s > horizon]
        miss = self._predicted_to_miss(in_time, now) if len(in_time) > 1 else set()
        self._queue_makes_the_bound = len(in_time) == len(rest) and not miss
        ordered = [r for r in in_time if r.request_id not in miss]
        ordered += [r for r in in_time if r.request_id in miss]
        ordered += [r for r in by_arrival if r.arrival_s <= horizon]
        if ordered == rest:
            return
        for _ in range(len(rest)):
            queue.pop()
        queue.extend(ordered)

    def _predicted_to_miss(self, in_time: list[Request], now: float) -> set[int]:
        """Of `in_time` (arrival order: the order their bounds run out), the ids of the prompts
        to put behind the others so that the most of the rest get their first token within
        the bound (Moore-Hodgson): taken in order, each is predicted to get it at the end of
        the iteration that reaches its place in the prompt tokens so far, the budget's
        prompt tokens an iteration (less a token per GPU resident's decode), each iteration
        its floor (`_iteration_floor_s`) plus the prompt tokens' own seconds (the cost
        model's, for a prompt of their mean length); where one would be late, the longest so
        far goes behind."""
        bound = self.config.slo_ttft_s
        budget = max(1, self.config.iteration_tokens - len(self.gpu_running))
        floor_s = self._iteration_floor_s()
        per_token_s = self._prompt_token_s(sum(r.prompt_len for r in in_time) // len(in_time))
        longest: list[tuple[int, int]] = []  # (-prompt_len, -request_id): a max-heap
        tokens, miss = 0, set()
        for r in in_time:
            heapq.heappush(longest, (-r.prompt_len, -r.request_id))
            tokens += r.prompt_len
            first_token_s = now + math.ceil(tokens / budget) * floor_s + tokens * per_token_s
            if first_token_s > r.arrival_s + bound:
                negative_length, negative_id = heapq.heappop(longest)
                tokens -= -negative_length
                miss.add(-negative_id)
        return miss

    def _prompt_token_s(self, length: int) -> float:
        """Predicted GPU seconds a prompt token adds to an iteration, for a prompt of `length`
        tokens: a `length`-token prefill less a one-token one (the weights' read is in both),
        per token."""
        length = max(2, min(length, self.config.iteration_tokens))
        return max(0.0, self._prefill_s(length) - self._prefill_s(1)) / (length - 1)

    def _iteration_floor_s(self) -> float:
        """Predicted seconds of an iteration before its prompt tokens: the residents'
        decode-only step, or with none a one-token step (the weights' read and the LM head)."""
        return max(self._decode_only_s(()), self._prefill_s(1))

    def _prefill_s(self, tokens: int) -> float:
        """Predicted seconds of an iteration that prefills one prompt of `tokens` alone; kept
        per length (the cost model's answer does not change; under a TTFT SLO every step asks
        it a few times)."""
        known = self._prefill_s_by_length.get(tokens)
        if known is None:
            b = SubBatchBuilder(self.cost)
            b.add_prefill(PrefillWork(-1, 0, tokens))
            known = self._prefill_s_by_length[tokens] = self._work_s(Mode.SEQUENTIAL, (b,))
        return known

    def _host_takes_parked(self) -> None:
        """Under a TPOT SLO: parked requests (swapped out of a full GPU pool where the host did
        not pay for them) become host residents, oldest first, while the host pays for each
        within the SLO (`_host_pays_for`, the test that parked them, asked again every step):
        their KV is already in the host pool, so nothing moves. Parked, a request gets no
        token until the GPU has room: on g5.16xlarge with 1000/800 offline under the SLO
        map's bound the parked ones waited ~45 s each, the run's only requests over the
        bound (docs/architecture.md, "Adaptive")."""
        for r in sorted(self.swapped.values(), key=lambda r: r.admit_order):
            if not self._host_pays_for(r):
                return
            del self.swapped[r.request_id]
            self.cpu_running[r.request_id] = r
            r.state = RequestState.RUNNING_CPU

    def _order_most_output_left_first(self) -> None:
        """Rule 7 (the drain): the waiting queue by output tokens left, most first (a prompt
        part-way through its chunks stays at the head; ties keep arrival order). Once no
        more arrivals come the queue is finite and the run ends with its last token: starting
        the longest outputs first is the classic longest-processing-time rule for the
        makespan, where first come, first served leaves a long output started last to decode
        alone at the end. Lengths are `max_new_tokens`: exact with ignore_eos, else a bound."""
        ordered = sorted(self.waiting, key=_part_way_then_most_left)
        self.waiting.clear()
        self.waiting.extend(ordered)

    def _exchange(self) -> tuple[tuple[Swap, ...], tuple[Swap, ...]]:
        """Rule 7 (the drain): once arrivals have stopped and no prompt waits, the GPU
        residents with the fewest tokens left trade places with the requests off the GPU (host
        residents or parked ones) with the most, where the one is on the run's critical path
        (more tokens left than `_tokens_per_slot`) and has at least `_margin` tokens more to go
        than the other. Without it the host residents of the last admissions wait for GPU room
        until the GPU's own residents finish, and then decode while the GPU batch empties
        (g5.2xlarge 1000/400 offline: docs/architecture.md, rule 7); with it the longest
        remaining work runs first and the batch stays full to the last seconds. The resident
        takes the other's place, parked or on the host (the host set keeps its size), and the
        copies go before the iteration's layers, as every plan's swaps."""
        if not (self._exchanges_for_the_drain and (self.cpu_running or self.swapped)):
            return (), ()
        if self.waiting or not self._arrivals_stopped(self.now):
            return (), ()
        inside = sorted((r for r in self.gpu_running.values() if not r.is_prefilling), key=_left)
        outside = sorted((*self.cpu_running.values(), *self.swapped.values()), key=_left)
        outside_tokens = sum(map(_left, outside))
        critical = self._tokens_per_slot(inside, outside_tokens)
        if _left(outside[-1]) <= critical:
            return (), ()  # none off the GPU sets the run's end: no trade, nothing to price
        step_s = self._decode_only_s(())
        used = self._gpu_blocks_after_growth()
        host_free = self.kv.cpu.num_free
        pairs: list[tuple[Request, Request]] = []
        for i, o in zip(inside, reversed(outside)):
            if _left(o) <= critical:
                break  # it ends with the drain wherever it waits: trading it moves no end
            after = used - self._blocks(i.seq_len) + self._blocks(o.seq_len)
            out_blocks = self._blocks(i.num_computed)  # its KV's room on the host
            if after > self.kv.gpu.num_blocks or out_blocks > host_free:
                break
            if _left(o) - _left(i) <= _margin(outside_tokens, self._copy_s(i, o), step_s):
                break
            used, host_free = after, host_free - out_blocks
            pairs.append((i, o))
        # Every resident leaves before any request comes in: the executor copies the swaps
        # out before the swaps in, so a swap out must not write host blocks that a swap in of
        # the same plan reads (freed by an earlier pair's swap in, they were handed to a
        # later pair's swap out, which overwrote that KV before it was copied in: the engine
        # then decoded a request over another's KV). Each takes the other's place, parked or
        # on the host.
        outs = [self._leave_gpu(i, park=o.state == RequestState.SWAPPED) for i, o in pairs]
        ins = [self._to_gpu(o) for _, o in pairs]
        if ins:
            self._gpu_running_in_admission_order()
        return tuple(outs), tuple(ins)

    @staticmethod
    def _tokens_per_slot(inside: list[Request], outside_tokens: int) -> float:
        """Rule 7's critical path, in tokens left: the drain's decode work (the GPU residents'
        `inside` tokens left and `outside_tokens` of the requests off the GPU) per slot of the
        GPU batch, i.e. the iterations the drain takes if the batch stays full. The run cannot
        end sooner than that or than its longest request's tokens left (McNaughton's bound
        for preemptive scheduling on parallel machines), so only a request with more tokens
        left than this sets its end and needs a GPU slot now; any other ends within the
        drain wherever it waits. Trading for such a request gains nothing, and the resident
        traded out near its end waits off the GPU until it comes back to finish (in the drain
        the host decodes few of its residents: the overdue ones, in the plans the starvation
        bound forces), its KV copied out and back. On g5.4xlarge with 1000/400 offline at
        the CLI's 4,096-token budget, trading from the drain's start (no such test) began at
        57 s with 160 requests off the GPU beside its 40, and no request ended from 53 s to
        93 s: 599.3 output tokens/s, 0.984x neo's; with the test, 634.2 (1.041x;
        docs/architecture.md, rule 7). No slot (no GPU resident): nothing is critical."""
        if not inside:
            return math.inf
        return (sum(map(_left, inside)) + outside_tokens) / len(inside)

    def _copy_s(self, leaving: Request, joining: Request) -> float:
        """Seconds of an exchange's copies: `leaving`'s KV to the host, then `joining`'s to
        the GPU, as `swap_s` prices them once made."""
        out_blocks, in_blocks = (
            self._blocks(leaving.num_computed),
            self._blocks(joining.num_computed),
        )
        return kv_copy_s(self.cost, out_blocks, in_blocks, self.config.block_size)

    @property
    def _orders_for_the_drain(self) -> bool:
        """Whether rule 7 may reorder the queue: without an SLO, where the run's throughput is
        the goal (under a TTFT SLO the queue's order is rule 6's, under a TPOT SLO first come,
        first served)."""
        return self.config.slo_tpot_s is None and self.config.slo_ttft_s is None

    @property
    def _exchanges_for_the_drain(self) -> bool:
        """Whether rule 7 may trade places: not under a TPOT SLO, where a traded-out resident
        waits parked, or decodes on the host only within the step's budget, and its mean gap
        between tokens grows, which the margin does not price (allowed there, the TPOT map
        moved in 4 cells, up 0.2-1.3%, none across 1.05x: docs/architecture.md, rule 7).
        Under a TTFT SLO the trades come once no prompt waits, after every first token, and
        shorten the run its goodput is counted over."""
        return self.config.slo_tpot_s is None

    def _admit(self, budget: Budget) -> list[Candidate]:
        """`_admit_after_the_decodes`, within `_ttft_prompt_tokens` under a TTFT SLO."""
        held = 0
        if self.config.slo_ttft_s is not None and self.waiting:
            held = max(0, budget.tokens - self._ttft_prompt_tokens())
        budget.tokens -= held
        try:
            return self._admit_after_the_decodes(budget)
        finally:
            budget.tokens += held

    def _ttft_prompt_tokens(self) -> int:
        """Under a TTFT SLO: the most prompt tokens this step's iteration carries, so that a
        prompt arriving during it can still get its first token within the bound. It waits
        out the iteration in flight, then the one that prefills it: each may take half the
        bound, its floor (`_iteration_floor_s`) plus its prompt tokens' own seconds (the cost
        model's, `_prompt_token_s`). At least the first waiting prompt's rest (a longer one
        goes alone). Whole budgets of prompts ran 1-2 s on the A10G, longer than the bounds
        of short-prompt workloads (0.4 s with osc lengths): on the TTFT map 61 cells at
        >= 1.05x instead of 47 (ad hoc; docs/architecture.md, "Adaptive", rule 6).

        Nor more than the head of the queue whose prompts all still make the bound at the end
        of one iteration carrying them (`_head_that_makes_the_bound`), where the first one
        does: one prompt more can push the iteration's end past the bound of every prompt in
        it. On g5.2xlarge, 60 prompts of ~400 tokens at once under a 2 s bound, the third
        budget-full iteration ended at 2.012 s and its 11 prompts all missed, where gpu-only's
        10 made it (0.74x gpu-only's goodput; with the head 1.07x; the TTFT map 69 cells at
        >= 1.05x instead of 64 when it came, 72 since rule 7's critical path:
        docs/architecture.md, rule 6).

        Where the whole queue is predicted to make the bound (`_queue_makes_the_bound`), the
        half-bound cap protects no one: an arrival would wait behind those prompts anyway,
        and cutting them into several iterations only adds each one's floor. The iteration
        then takes that head whole, if it is more than the cap: on one H100 with 1000/800 at
        90% load three prompts arriving within 8 ms went one an iteration and the third
        missed by 7 ms, where gpu-only took two at once and all three made it."""
        first = self.waiting[0]
        rest = first.seq_len - first.num_computed
        per_token_s = self._prompt_token_s(rest)
        room_s = self.config.slo_ttft_s / 2 - self._iteration_floor_s()
        cap = rest if per_token_s <= 0 or room_s <= 0 else max(rest, int(room_s / per_token_s))
        head = self._head_that_makes_the_bound()
        if head < rest:
            return cap  # the first prompt cannot make the bound: the cap alone
        return head if self._queue_makes_the_bound else min(cap, head)

    def _head_that_makes_the_bound(self) -> int:
        """The prompt tokens of the longest head of the waiting queue (within the budget
        beside the GPU residents' decodes) whose prompts all get their first token within the
        bound at the end of one iteration carrying them and every GPU decode, priced as a
        plan is (`_work_s`), from `now`. A recomputed request (its first token out) has no
        bound left to meet."""
        bound = self.config.slo_ttft_s
        b = SubBatchBuilder(self.cost)
        b.add_decodes(decode_works(self.gpu_running.values()), on_gpu=True)
        room = self.config.iteration_tokens - len(self.gpu_running)
        tokens, due = 0, math.inf
        for r in self.waiting:
            n = r.seq_len - r.num_computed
            if tokens + n > room:
                break
            if r.num_generated == 0:
                due = min(due, r.arrival_s + bound)
            b.add_prefill(PrefillWork(r.request_id, r.num_computed, r.seq_len))
            if self.now + self._work_s(Mode.SEQUENTIAL, (b,)) > due:
                break
            tokens += n
        return tokens

    def _admit_after_the_decodes(self, budget: Budget) -> list[Candidate]:
        """NEO's admission; with chunked prefill, after every resident's decode, as vLLM orders
        chunked prefill. NEO's step takes the GPU decodes' tokens first (step 1) and holds
        the overdue host decodes' (the starvation bound), then lets the prompts take the rest
        of the budget, and the other host decodes only what the prompts leave: with
        iterations of a chunk's size, a chunk takes it all, so the host residents decode only
        once overdue. Here a token for each of them is held out of the prompts' budget and
        given back for this step's decodes (policy map, ad hoc, 1,024-token chunks: 10 cells
        below 0.99x the best rival with the prompts first, none after the decodes;
        docs/architecture.md, "Adaptive")."""
        if not self.config.chunked_prefill_tokens:
            return super()._admit(budget)
        waiting_turn = len(self.cpu_running) - len(self._overdue())
        withheld = min(budget.tokens, waiting_turn)
        budget.tokens -= withheld
        self._spread = False
        candidates = super()._admit(budget)
        if self._spread and any(device == Device.CPU for _, device in candidates):
            # The host takes prompts this step: GPU KV does not gate admission after all.
            for r, device in candidates:
                budget.give(self._prefill_work(r, device).num_tokens)
            self._spreads = False
            try:
                candidates = super()._admit(budget)
            finally:
                self._spreads = True
        budget.tokens += withheld
        return candidates

    def _place(self, budget: Budget) -> list[Candidate]:
        """NEO's placement, the GPU's prompt tokens capped at the rate its residents free the
        pool (`_steady_admission_tokens`); notes when the GPU pool first fills. Rule 5 is
        for chunked prefill only: without it, NEO's placement as it is."""
        if not self.config.chunked_prefill_tokens:
            return super()._place(budget)
        if not self.gpu_running:
            self._gpu_pool_filled = False  # empty again: the next fill is a start too
        self._gpu_prompt_tokens_left = self._steady_admission_tokens()
        candidates = super()._place(budget)
        if not self._gpu_pool_filled and len(candidates) < len(self.waiting):
            self._gpu_pool_filled = self._gpu_pool_full_for(
                self.waiting[len(candidates)], candidates
            )
        return candidates

    def _gpu_pool_full_for(self, r: Request, candidates: list[Candidate]) -> bool:
        """Whether the GPU pool, after this step's growth and GPU-placed `candidates`, has no
        room for waiting prompt `r`."""
        gpu = self.kv.gpu
        used = self._gpu_blocks_after_growth() + sum(
            gpu.extra_blocks(q.request_id, q.seq_len)
            for q, device in candidates
            if device == Device.GPU
        )
        return used + gpu.extra_blocks(r.request_id, r.seq_len) > gpu.num_blocks

    def _steady_admission_tokens(self) -> int | None:
        """Rule 5, with chunked prefill: the most prompt tokens this step's GPU prompts may take,
        the rate at which the GPU's residents free its pool (each resident's slot takes a prompt
        as long as its own once per its output length, NEO's `SteadyPrefill`, scaled from the
        blocks in use to the whole pool). None (no cap) before the pool first fills (the start:
        nothing departs yet), without GPU residents, where every waiting request fits the pool
        to its end (`_waiting_fit_to_the_end`), where the host decodes a token no slower than
        the GPU (`_host_keeps_pace`), and where the cost model prices NEO's whole chunks above
        the spread prompts (`_spread_prompts_pay`). After the cohort admitted at the start
        departs together, NEO refills the pool in whole chunks followed by decode-only
        iterations, and the cycle repeats each output length: on g5.2xlarge with 1000/200
        offline 201 iterations of ~950 prompt tokens (0.215 s) and 654 decode-only ones (0.045
        s). At the steady rate the prompts spread over the iterations as under vLLM's chunked
        prefill with a small budget (~220 prompt tokens beside ~37 decodes, 0.071 s), and
        departures stay staggered (docs/architecture.md, "Adaptive", rule 5)."""
        if not (self._gpu_pool_filled and self.gpu_running):  # set by `_place`, with chunks only
            return None
        if not self._holds_prompts_back:
            return None
        used = self.kv.gpu.num_used
        if used < 1 or self._waiting_fit_to_the_end() or self._host_keeps_pace():
            return None
        full = self.kv.gpu.num_blocks / used  # a full pool's residents per resident now
        if not self._spread_prompts_pay(len(self.gpu_running) * full):
            return None
        steady = sum(r.prompt_len / r.max_new_tokens for r in self.gpu_running.values())
        return max(1, math.ceil(steady * full))

    def _waiting_fit_to_the_end(self) -> bool:
        """Whether every waiting request fits the GPU pool's free room at its full length
        (prompt and `max_new_tokens`): then no admission waits for a departure, and there is
        nothing to pace (the end of an offline run; most steps below capacity). Paced to the
        end, g5.8xlarge with 1000/200 offline read 0.990x the best rival (0.992x with this);
        counted at the prompt's length only, 3 fewer cells of the policy map stayed at 1.05x
        (docs/architecture.md, "Adaptive", rule 5)."""
        gpu = self.kv.gpu
        free = gpu.num_blocks - self._gpu_blocks_after_growth()
        for r in self.waiting:
            free -= gpu.extra_blocks(r.request_id, r.max_seq_len)
            if free < 0:
                return False
        return True

    def _host_keeps_pace(self) -> bool:
        """Whether the host decodes a token (at the GPU residents' mean context) in no more time
        than the GPU's decode-only iteration spends per resident. There NEO's whole chunks are
        windows in which host residents decode, which pays more than smooth GPU iterations
        (g5.16xlarge with 1000/200 offline: 1.011x the best rival unpaced, 0.983x paced; the
        T4, whose GPU holds two residents: 1.104x and 1.063x). Never without a host pool."""
        if not self.kv.cpu.num_blocks:
            return False
        gpu = self.gpu_running.values()
        host_s = self.cost.model.num_layers * self.cost.cpu_decode_attn(
            len(gpu), sum(r.seq_len for r in gpu)
        )
        return host_s <= self._decode_only_s(())

    def _spread_prompts_pay(self, residents: float) -> bool:
        """Whether, in the steady state of the GPU residents' mix (their mean context, prompt
        and output length; `residents` of them, as a full pool holds), prompts spread at the
        steady rate serve more decodes per second than NEO's whole chunks. Per admission
        interval (n = output length / residents iterations): NEO runs the prompt in chunks of
        the budget the decodes leave (one for a 1,000-token prompt, three for 2,600 tokens)
        and decode-only iterations after them; spread, n iterations each carry 1/n of it
        (priced at mid-prompt) beside one resident fewer (the slot its prefill holds). Priced
        as one iteration of the whole prompt, NEO's side came out dearer than it runs with
        long prompts (2x H100 with 2,600-token prompts offline: 1.135x the best rival priced
        so, 1.148x priced as NEO cuts it, 1.166x never paced). A prompt token rides a small
        iteration for less (A10G: 0.126 ms against 0.153 ms in a whole chunk), but with long
        outputs on the 2x H100 + 70B the idle slot costs more than that saves (1000/800
        offline: 1.19x the best rival unpaced, 1.11x paced)."""
        gpu = self.gpu_running.values()
        count = len(gpu)
        context = sum(r.seq_len for r in gpu) // count
        prompt = round(sum(r.prompt_len for r in gpu) / count)
        size = max(2, round(residents))
        cut = max(1, self.config.chunked_prefill_tokens - size)  # NEO's chunk beside them
        steps = -(-prompt // cut)
        # iterations per admission, at least NEO's chunks of one prompt
        n = max(float(steps), sum(r.max_new_tokens for r in gpu) / count / residents)

        works = [DecodeWork(-1 - i, context) for i in range(size)]

        def iteration_s(decodes: int, chunk: int = 0, start: int = 0) -> float:
            b = SubBatchBuilder(self.cost)
            b.add_decodes(works[:decodes], on_gpu=True, tokens=decodes * context)
            if chunk:
                b.add_prefill(PrefillWork(-1 - decodes, start, start + chunk))
            return self._work_s(Mode.SEQUENTIAL, (b,))

        last = prompt - (steps - 1) * cut
        whole_s = (steps - 1) * iteration_s(size, cut) + iteration_s(size, last, prompt - last)
        whole = n * size / (whole_s + (n - steps) * iteration_s(size))
        chunk = max(1, round(prompt / n))
        spread = (size - 1) / iteration_s(size - 1, chunk, max(0, round((prompt - chunk) / 2)))
        return spread > whole

    def _chunk_of(self, r: Request, device: Device, remaining: int, tokens: int) -> int:
        """NEO's chunk, at most the GPU's steady admission tokens left this step
        (`_steady_admission_tokens`); or, where no other prompt could start during it
        (`_no_other_prompt_starts`), the prompt spread over the steps until a resident ends
        (`_spread_chunk`)."""
        chunk = super()._chunk_of(r, device, remaining, tokens)
        if device != Device.GPU:
            return chunk
        if self._gpu_prompt_tokens_left is not None:
            chunk = min(chunk, self._gpu_prompt_tokens_left)
        if (
            self._spreads
            and self._holds_prompts_back
            and chunk > 0
            and r is self.waiting[0]
            and self._no_other_prompt_starts(r)
        ):
            spread = self._spread_chunk(r, chunk, remaining)
            self._spread = spread < chunk
            chunk = spread
        if self._gpu_prompt_tokens_left is not None:
            self._gpu_prompt_tokens_left -= chunk
        return chunk

    def _no_other_prompt_starts(self, first: Request) -> bool:
        """Whether, with every resident on the GPU and none parked, no prompt but `first` (the
        head of the queue) could start before a resident ends: GPU KV holds the others back
        (`_gpu_kv_gates_admission`), or none waits while the arrivals outpace what the GPU
        serves (`_arrivals_outpace_the_gpu`). The second case is the start of an overloaded
        run, before the pool fills: NEO prefills each lone arrival in one step and runs
        decode-only steps until the next, as rule 4's argument has it (`_spread_chunk`).
        Below capacity it does not apply: the arrivals set the throughput there, and a spread
        prompt only waits longer for its first token (policy map, ad hoc: TTFT p90 up to 2x on
        the A10G hosts at 50% load when it applied there, throughput unchanged). On the
        committed policy map: 46 cells at >= 1.05x the best rival (from 44), none below 0.99x
        (docs/architecture.md, "Adaptive", rule 4, has what it costs in TTFT at 150%)."""
        if not self.gpu_running or self.cpu_running or self.swapped:
            return False
        if len(self.waiting) == 1:
            return self._arrivals_outpace_the_gpu()
        return self._gpu_kv_gates_admission(first)

    def add(self, requests: Iterable[Request] | Request) -> None:
        """The policy's `add`; each request also joins the arrival window (in arrival order,
        as the simulator and the engine add them)."""
        requests = [requests] if isinstance(requests, Request) else list(requests)
        super().add(requests)
        recent = self._recent_arrivals
        self._arrivals_seen += len(requests)
        for r in requests:
            recent.append(r)
            self._recent_output_tokens += r.max_new_tokens
            self._recent_tokens += r.max_seq_len
            if len(recent) > self.ARRIVAL_WINDOW:
                gone = recent.popleft()
                self._recent_output_tokens -= gone.max_new_tokens
                self._recent_tokens -= gone.max_seq_len

    def _arrivals_stopped(self, now: float) -> bool:
        """Whether arrivals have stopped: none for as many mean gaps of the recent arrivals
        (the window `_arrivals_outpace_the_gpu` rates) as a Poisson stream at that rate
        exceeds with probability `ARRIVALS_STOPPED_CHANCE`: after one gap without an SLO
        (ln 100 = 4.6 gaps; a false alarm there costs a few copies and a reordered queue), after
        any of the gaps seen so far under a TTFT SLO (ln(100 n): 9.9 gaps at n = 200), where a
        false alarm's exchanges keep long outputs in the GPU pool that the next arrivals'
        first tokens need (on g5.4xlarge 1000/800 at 150% load a lull at 98 s cost three
        first tokens: docs/architecture.md, rule 7). Arrivals all at one instant (offline)
        have stopped as soon as the clock moves past them."""
        recent = self._recent_arrivals
        if not recent:
            return False
        last = recent[-1].arrival_s
        mean_gap_s = (last - recent[0].arrival_s) / (len(recent) - 1) if len(recent) > 1 else 0.0
        gaps_seen = self._arrivals_seen if self.config.slo_ttft_s is not None else 1
        return now - last > math.log(gaps_seen / self.ARRIVALS_STOPPED_CHANCE) * mean_gap_s

    def _arrivals_outpace_the_gpu(self) -> bool:
        """Whether the recent arrivals (the last `ARRIVAL_WINDOW`) would, by Little's law, keep
        more requests resident than the GPU pool holds: arrival rate x mean output length x
        the GPU's decode-only iteration now (its residents' next-token step, seconds) against
        the pool's count of requests of the mean prompt + output length. The iteration now is
        shorter than a full pool's, so the test errs towards "no". Arrivals all at one
        instant (offline) outpace any GPU."""
        recent = self._recent_arrivals
        if len(recent) < 2:
            return False
        span_s = recent[-1].arrival_s - recent[0].arrival_s
        if span_s <= 0:
            return True
        rate = (len(recent) - 1) / span_s
        output = self._recent_output_tokens / len(recent)
        length = round(self._recent_tokens / len(recent))
        pool = self.kv.gpu.num_blocks / self._blocks(length)
        return rate * output * self._decode_only_s(()) >= pool

    def _gpu_kv_gates_admission(self, first: Request) -> bool:
        """Whether GPU KV, and nothing else, holds back the prompts waiting behind `first`
        (the head of the queue), where every resident is on the GPU and none is parked (its
        caller, `_no_other_prompt_starts`, has checked that): the next waiting prompt would
        not fit beside `first`'s. Then no prompt is admitted before a resident ends and frees
        its KV, whatever `first`'s chunks."""
        if len(self.waiting) < 2:
            return False
        gpu = self.kv.gpu
        used = self._gpu_blocks_after_growth() + gpu.extra_blocks(first.request_id, first.seq_len)
        return used + self._blocks(self.waiting[1].seq_len) > gpu.num_blocks

    def _spread_chunk(self, r: Request, chunk: int, remaining: int) -> int:
        """`r`'s chunk this step when no other prompt can start before the first resident
        ends (the horizon: the fewest tokens any resident has left, `max_new_tokens` taken as
        its length as `_tpot_budget_s` does): its rest in as few steps as `chunk` allows, or
        spread evenly over more steps, up to the horizon, whichever the cost model predicts
        serves the most decode tokens per second over the horizon (as few steps: `chunk` first,
        as NEO cuts it). Spread, each chunk rides
        with the decodes in steps that read the same weights (linear layers cost little more
        per token below the GPU's compute-bound batch), instead of one step of `chunk` tokens
        followed by decode-only steps that leave that compute idle; the price is `r`'s own
        decodes, which start later (Sarathi-Serve sizes its chunks by the same arithmetic;
        docs/architecture.md, "Adaptive", rule 4). Every step priced as the first chunk."""
        horizon = min(q.max_new_tokens - q.num_generated for q in self.gpu_running.values())
        fewest = -(-remaining // chunk)
        if horizon <= fewest:
            return chunk
        residents = decode_works(self.gpu_running.values())
        after = SubBatchBuilder(self.cost)  # a step once `r` decodes too
        after.add_decodes(residents, on_gpu=True)
        after.add_gpu_decode(DecodeWork(r.request_id, r.seq_len))
        after_s = self._work_s(Mode.SEQUENTIAL, (after,))
        during = SubBatchBuilder(self.cost)
        during.add_decodes(residents, on_gpu=True)
        best_size, best_rate = chunk, 0.0
        steps = fewest
        while True:
            size = chunk if steps == fewest else -(-remaining // steps)
            during.add_prefill(
                PrefillWork(r.request_id, r.num_computed, r.num_computed + size, Device.GPU)
            )
            during_s = self._work_s(Mode.SEQUENTIAL, (during,))
            during.pop_prefill()
            tokens = horizon * len(residents) + horizon - steps
            rate = tokens / (steps * during_s + (horizon - steps) * after_s)
            if rate > best_rate:
                best_size, best_rate = size, rate
            if steps == horizon:
                return best_size
            steps = min(2 * steps, horizon)

    def _waits_to_go_whole(
        self, chunk: int, remaining: int, device: Device, held: Device | None
    ) -> bool:
        """Never: a host-placed prompt is cut like any other. With the residents' decodes
        first, NEO's rule (a new host prompt one iteration holds waits rather than be cut)
        put 7 cells of the policy map below 0.99x the best rival, none without it (ad hoc,
        1,024-token chunks)."""
        return False

    def _tpot_budget_s(self, now: float) -> float:
        """The longest the next iteration may take for the decoding residents to keep their
        mean gap between tokens within the TPOT SLO: each one's budget is what its SLO leaves
        of the gaps to come (SLO x all its gaps, less the time since its first token), spread
        over the gaps it has left (its length taken as `max_new_tokens`: exact with
        ignore_eos, else a bound). The step's budget is the tightest of them, at most the
        SLO, but no tighter than the iteration that decodes every resident: a resident that
        has fallen behind further than that is not held to it, since serving it first would
        leave the host residents out of the iteration, each a whole gap further behind; and
        never below the cheapest iteration that still decodes a host resident. Both
        iterations are priced once a step at most, and `everyone` only where some resident's
        budget is under the SLO (it is the cheapest one without host residents): every step
        under an SLO runs this."""
        slo = self.config.slo_tpot_s
        least = self._least_progress_s()
        everyone = None if self.cpu_running else least
        limit = slo
        for residents in (self.gpu_running, self.cpu_running):
            for r in residents.values():
                generated, start = r.num_generated, r.decode_start_s
                if generated < 1:
                    continue
                if start is None:
                    r.decode_start_s = now  # its first token is out: a full SLO ahead
                    continue
                length = r.max_new_tokens
                gaps_left = length - generated
                if gaps_left < 1:
                    continue
                budget = (slo * (length - 1) - (now - start)) / gaps_left
                if budget < limit:
                    if everyone is None:
                        everyone = self._everyone_s()
                    if everyone <= budget:
                        limit = budget
        return max(limit, least)

    def _least_progress_s(self) -> float:
        """Predicted seconds of the cheapest iteration that still decodes a host resident:
        every GPU decode and the longest-waiting host decode (last progress, then admission
        order, as `_cpu_decodes_longest_waiting_first` ranks them), fused. No budget goes
        below it, or with only host residents no plan would hold any work (a stall)."""
        host = self.cpu_running.values()
        if host:
            host = [min(host, key=lambda r: (r.last_progress_step, r.admit_order))]
        return self._decode_only_s(host)

    def _everyone_s(self) -> float:
        """Predicted seconds of the decode-only iteration of every resident, fused."""
        return self._decode_only_s(self.cpu_running.values())

    def _decode_only_s(self, host: Iterable[Request]) -> float:
        """Predicted seconds of a decode-only iteration of every GPU resident and `host`'s
        decodes, fused (GPU-only if there are none: priced from the residents' count and
        context by `gpu_decodes_pricer`, the same arithmetic without building their decodes,
        since under an SLO every step prices it)."""
        host = list(host)
        if not host:
            n = len(self.gpu_running)
            if not n:
                return 0.0
            tokens = sum(r.prompt_len + r.num_generated for r in self.gpu_running.values())
            return gpu_decodes_pricer(self.cost, n)(gpu_attn_s(self.cost, 0.0, n, tokens))
        b = SubBatchBuilder(self.cost)
        b.add_decodes(decode_works(self.gpu_running.values()), on_gpu=True)
        b.add_decodes(decode_works(host), on_gpu=False)
        return self._work_s(Mode.FUSED, (b,))

    def _plan_work(self, candidates: list[Candidate], budget: Budget) -> Option:
        if not (candidates or self.gpu_running) or not self.cpu_running:
            return super()._plan_work(candidates, budget)  # GPU-only or CPU-only work
        if not self._host_decodes_before_the_last_chunk(candidates):
            return self._plan_options(candidates, budget, None)
        last_chunk = self._prefill_work(*candidates[-1])
        if last_chunk.kv_device == Device.CPU:
            self._held_out_host_blocks = self.kv.cpu.extra_blocks(
                last_chunk.request_id, last_chunk.end
            )
        try:
            return self._plan_options(candidates[:-1], budget, last_chunk)
        finally:
            self._held_out_host_blocks = 0

    def _plan_options(
        self, candidates: list[Candidate], budget: Budget, last_chunk: PrefillWork | None
    ) -> Option:
        """`_plan_work`'s plans of `candidates`, and of `last_chunk` where given (held out of
        `candidates`: `_host_decodes_before_the_last_chunk`); the best of them."""
        fused_budget = Budget(budget.seqs, budget.tokens)
        b0, b1, forced = self._build_sub_batches(candidates, budget)
        if b1:
            self._trim_cpu_prefills(b0, b1)
        if last_chunk is not None and len(b0.prefills) == len(candidates):
            # The GPU-only plan takes it whole, unless trimming left out a prompt before it
            # (prompts are admitted in order, as `_add_what_fits` keeps them).
            b0.add_prefill(last_chunk)
            seq = self._sequential_batch(b0)
            b0.pop_prefill()
        else:
            seq = self._sequential_batch(b0)
        self._extend_pipelined(b0, b1, budget, candidates, seq)
        fused, fused_forced = self._build_fused(candidates, fused_budget)
        if last_chunk is not None:
            self._add_what_fits(last_chunk, len(candidates), Mode.PIPELINED, (b0, b1))
            self._add_what_fits(last_chunk, len(candidates), Mode.FUSED, (fused,))
        options: list[Option] = []
        if not (forced or fused_forced):  # GPU-only cannot serve an overdue CPU decode
            options.append((Mode.SEQUENTIAL, (seq,), ()))
        if b1:
            options.append((Mode.PIPELINED, (b0, b1), forced))
        if fused.cpu_decodes:
            options.append((Mode.FUSED, (fused,), fused_forced))
        if not options:  # overdue decodes that fitted neither plan: NEO's choice
            mode, chosen = self._choose_mode(b0, b1, forced)
            return mode, chosen, (forced if mode == Mode.PIPELINED else ())
        best = self._best(options)
        if (
            best[0] == Mode.SEQUENTIAL
            and b1
            and self.config.slo_tpot_s is None
            and self._holds_prompts_back
        ):
            # The pipelined plan was priced and lost: decoding on the host does not pay this
            # iteration, so a prompt placed there would only join residents that wait, unless
            # the host set it starts pays as a whole. (Under a TPOT SLO the host set is sized
            # by the SLO instead.)
            lean = self._without_cpu_prefills(best[1][0])
            if lean is not None and not self._host_set_pays(candidates):
                return Mode.SEQUENTIAL, (lean,), ()
        return best

    def _host_blocks_free_after(self, candidates: list[Candidate]) -> int:
        """NEO's count, less the host blocks of the chunk `_plan_work` holds out of its plans
        while it builds them: the host decodes must not take the room that chunk needs."""
        return super()._host_blocks_free_after(candidates) - self._held_out_host_blocks

    def _host_decodes_before_the_last_chunk(self, candidates: list[Candidate]) -> bool:
        """Whether the plans that decode host residents take the last prompt's chunk only
        after their host decodes (`_add_what_fits`): under a TPOT SLO with chunked prefill,
        where other GPU work remains without it. The host decodes are added while the plan
        stays within the step's TPOT budget, so a whole chunk priced first left most of them
        out, and the plan that does not decode them at all ran instead: on g5.16xlarge with
        1000/800 offline ~1,000 GPU-only iterations carried the prompts while ~47 host
        residents waited (docs/architecture.md, "Adaptive"). vLLM orders chunked prefill
        the same way: decodes first, then the chunk that fits."""
        return bool(
            self.config.slo_tpot_s is not None
            and self.config.chunked_prefill_tokens
            and candidates
            and (len(candidates) > 1 or self.gpu_running)
        )

    def _add_what_fits(
        self,
        chunk: PrefillWork,
        num_before: int,
        mode: Mode,
        chosen: tuple[SubBatchBuilder, ...],
    ) -> None:
        """Add to `chosen` (its first sub-batch holds the prompts) the longest prefix of `chunk`
        that keeps the plan within this step's TPOT budget; the whole chunk where not one
        token fits (the residents' decodes alone fill the budget: a plan without the prompt
        would stall admission, T4 1000/200 offline fell from 2.55x to 0.99x the best rival
        when such chunks were dropped) or where the plan holds no host decode, and nothing
        where trimming left out a prompt before it (prompts are admitted in order)."""
        b = chosen[0]
        if len(b.prefills) != num_before:
            return
        b.add_prefill(chunk)
        limit = self._tpot_limit_s
        if not all(chosen) or not any(c.cpu_decodes for c in chosen):
            return  # not a plan that decodes host residents (a pipelined one needs both)
        if self._work_s(mode, chosen) <= limit:
            return
        b.pop_prefill()
        fits, over = 0, chunk.num_tokens  # tokens known to fit, and known not to
        while over - fits > 1:
            mid = (fits + over) // 2
            b.add_prefill(
                PrefillWork(chunk.request_id, chunk.start, chunk.start + mid, chunk.kv_device)
            )
            within = self._work_s(mode, chosen) <= limit
            b.pop_prefill()
            fits, over = (mid, over) if within else (fits, mid)
        end = chunk.start + fits if fits else chunk.end
        b.add_prefill(PrefillWork(chunk.request_id, chunk.start, end, chunk.kv_device))

    def _host_set_pays(self, candidates: list[Candidate]) -> bool:
        """Whether the host set that the host-placed prompts among `candidates` start pays as
        a whole: the steady decode-only iteration of the host residents, these prompts and the
        waiting prompts the host pool has room for next (FCFS; with the GPU pool full they are
        placed there too) serves more requests/s than both the GPU-only iteration and the
        pipelined one without the prompts. One host decode rarely pays for the host lane's
        fixed costs where many do (T4 with osc: one beside 4 GPU decodes lowers the steady
        rate from 74 to 63 requests/s), so judging the prompts by this iteration alone never
        lets the set grow: T4 osc offline at the default 4096-token budget ran at 0.39x NEO's
        throughput (200 requests; with 60, the first host resident waited 44 iterations for
        GPU room while every later host prompt was left out)."""
        first_cpu = self._first_host_placed(candidates)
        if first_cpu is None:
            return False
        gpu, host, fused, _ = self._admission_steady_state(candidates[:first_cpu])
        without = self._steady_rate(gpu, host, fused)
        gpu_only = self._rate(Mode.SEQUENTIAL, (gpu,)) if gpu else 0.0
        host_set = [r for r, _ in candidates[first_cpu:]]
        for r in (*host_set, *self._waiting_the_host_could_hold(candidates)):
            for b in (host, fused):
                b.add_cpu_decode(DecodeWork(r.request_id, r.seq_len))
        return self._steady_rate(gpu, host, fused) >= max(without, gpu_only)

    def _waiting_the_host_could_hold(self, candidates: list[Candidate]) -> Iterator[Request]:
        """The waiting requests after `candidates`, in order, while the host pool's free
        blocks (less the host-placed candidates') and the request slots hold them."""
        admitted = {r.request_id for r, _ in candidates}
        free = self._host_blocks_free_after(candidates)
        slots = (
            self.config.max_num_seqs
            - len(self.gpu_running)
            - len(self.cpu_running)
            - len(candidates)
        )
        for r in self.waiting:
            if r.request_id in admitted:
                continue
            need = self._blocks(r.seq_len)
            if need > free or slots < 1:
                return
            free, slots = free - need, slots - 1
            yield r

    def _without_cpu_prefills(self, seq: SubBatchBuilder) -> SubBatchBuilder | None:
        """`seq` without its host-placed prompts, if it has any and keeps other work (None
        otherwise). NEO keeps a host prompt in a GPU-only iteration to keep the batch above
        `cpu_prefill_min_tokens`; with many GPU decodes that prefill can double the iteration
        while the prompt's host decodes wait for a pipelined plan that pays (policy map,
        g5.2xlarge osc at 150%: one ~370-token prompt per iteration for 26 iterations)."""
        if all(never_trimmed(p) for p in seq.prefills):
            return None
        kept = (p for p in seq.prefills if never_trimmed(p))
        lean = self._gpu_only_batch(kept, seq.gpu_decodes)
        return lean if lean else None

    def _best(self, options: list[Option]) -> Option:
        """Most requests/s; with a TPOT SLO, among the plans within this step's budget (else
        the fastest), and of those the ones that decode every host resident if any do."""
        if self.config.slo_tpot_s is not None:
            slo = self._tpot_limit_s
            within = [o for o in options if self._work_s(o[0], o[1]) <= slo]
            if not within:
                return min(options, key=lambda o: self._work_s(o[0], o[1]))
            # Host residents do not take turns under an SLO: a plan that leaves any of them
            # out costs it a whole iteration's gap, so plans that decode them all go first.
            host_residents = set(self.cpu_running)
            everyone = [
                o
                for o in within
                if host_residents <= {d.request_id for b in o[1] for d in b.cpu_decodes}
            ]
            options = everyone or within
        return max(options, key=lambda o: self._rate(o[0], o[1]))  # first of equals wins

    def _worth(
        self, mode: Mode, chosen: tuple[SubBatchBuilder, ...], best: float
    ) -> tuple[bool, float]:
        """Without an SLO: the host decode just added pays for itself. With one: the iteration
        stays within it (a host decode left out waits a whole iteration more, which is what
        breaks a TPOT SLO, so the admission rule below sizes the host set instead)."""
        worth, rate = super()._worth(mode, chosen, best)
        if self.config.slo_tpot_s is not None:
            worth = self._work_s(mode, chosen) <= self._tpot_limit_s
        return worth, rate

    def _host_admissions(self, candidates: list[Candidate]) -> int:
        """Under a TPOT SLO: of the prompts placed on the host (a suffix of `candidates`), the
        longest prefix that fits the SLO (`_fits_tpot_budget`, each prompt with those before
        it) and, of those, the one whose steady iteration serves the most requests/s, if that
        is no fewer than without any of them: the host must pay, not only keep up. Judged as
        a set, since the host lane's fixed costs make the first host decode the dearest (on
        the T4 with osc one host decode beside 4 GPU ones lowers the steady requests/s from
        74 to 63, many raise it). A prompt that can never fit the GPU pool always goes (it
        has no other place), with those before it. Without an SLO, NEO's rule."""
        if self.config.slo_tpot_s is None:
            return super()._host_admissions(candidates)
        first_cpu = self._first_host_placed(candidates)
        if first_cpu is None:
            return len(candidates)
        steady = self._admission_steady_state(candidates[:first_cpu])
        kept, best = first_cpu, self._steady_rate(*steady[:3])
        for i in self._host_candidates_in_turn(candidates, first_cpu, steady):
            never_fits_gpu = self._never_fits_gpu(candidates[i][0])
            if not (never_fits_gpu or self._fits_tpot_budget(*steady)):
                break
            rate = self._steady_rate(*steady[:3])
            if rate >= best or never_fits_gpu:
                kept, best = i + 1, max(best, rate)
        if kept == first_cpu and self.config.chunked_prefill_tokens:
            return self._host_set_with_the_waiting(candidates, first_cpu)
        return kept

    def _host_set_with_the_waiting(self, candidates: list[Candidate], first_cpu: int) -> int:
        """Under a TPOT SLO with chunked prefill, where no prefix of this step's host prompts
        pays: all of them (`len(candidates)`) if, with the waiting prompts the host pool holds
        next, they make a host set that fits the SLO (`_fits_tpot_budget`) and whose steady
        iteration serves no fewer requests/s than the host residents alone; else none of them
        (`first_cpu`). A chunk's budget caps a step at one or two prompts, and one host decode
        rarely pays for the host lane's fixed costs where many do (T4 with osc), so judged a
        step at a time the set never grows. Every decode is priced at its mean context over
        the tokens it has left (`_at_mean_future_context`): the set is judged for its
        lifetime, and at today's contexts a set of 1,000-token prompts with 800 tokens to go
        looked as if it paid on g5.8xlarge where its run lost (docs/architecture.md,
        "Adaptive")."""
        gpu_side = [*self.gpu_running.values(), *(r for r, _ in candidates[:first_cpu])]
        gpu, host, fused = decode_only_builders(
            self.cost,
            [_at_mean_future_context(r) for r in gpu_side],
            [_at_mean_future_context(r) for r in self.cpu_running.values()],
        )
        without = self._steady_rate(gpu, host, fused)
        prefill = SteadyPrefill((*gpu_side, *self.cpu_running.values()))
        newcomers = (r for r, _ in candidates[first_cpu:])
        for r in (*newcomers, *self._waiting_the_host_could_hold(candidates)):
            for b in (host, fused):
                b.add_cpu_decode(_at_mean_future_context(r))
            prefill.add(r)
            if not self._fits_tpot_budget(gpu, host, fused, prefill):
                break
            if self._steady_rate(gpu, host, fused) >= without:
                return len(candidates)
        return first_cpu

    def _host_resident_pays(
        self,
        gpu: SubBatchBuilder,
        host: SubBatchBuilder,
        fused: SubBatchBuilder,
        prefill_tokens: SteadyPrefill,
        best: float,
    ) -> tuple[bool, float]:
        """With a TPOT SLO (the test of a request swapped out of a full GPU pool, which stays
        on the host only if it passes): the host resident just added fits the SLO
        (`_fits_tpot_budget`) and the steady iteration with it serves at least `best`
        requests/s; a request that can never fit the GPU pool always stays. Without an SLO,
        NEO's test."""
        if self.config.slo_tpot_s is None:
            return super()._host_resident_pays(gpu, host, fused, prefill_tokens, best)
        if self._never_fits_gpu(prefill_tokens.added[-1]):
            return True, best  # the host is its only place
        rate = self._steady_rate(gpu, host, fused)
        pays = rate >= best and self._fits_tpot_budget(gpu, host, fused, prefill_tokens)
        return pays, max(best, rate)

    def _never_fits_gpu(self, r: Request) -> bool:
        """Whether `r` at its full length needs more blocks than the whole GPU pool holds."""
        return self._blocks(r.max_seq_len) > self.kv.gpu.num_blocks

    def _fits_tpot_budget(
        self,
        gpu: SubBatchBuilder,
        host: SubBatchBuilder,
        fused: SubBatchBuilder,
        prefill_tokens: SteadyPrefill,
    ) -> bool:
        """Whether an iteration decoding every resident (fused, or pipelined with the host
        decodes in sub-batch 1, whichever is faster), plus the share of prefill time the
        residents' slots bring, stays within this step's TPOT budget: host residents do not
        take turns under an SLO, and each prefill stalls every decode."""
        fastest = self._work_s(Mode.FUSED, (fused,))
        if gpu:
            fastest = min(fastest, self._work_s(Mode.PIPELINED, (gpu, host)))
        return fastest + self._steady_prefill_s(prefill_tokens) <= self._tpot_limit_s

    def _host_pays_for_swapped(self, victim: Request) -> bool:
        """Under a TPOT SLO a request swapped out of a full GPU pool stays a host resident only
        if the host pays for it within the SLO (`_host_resident_pays`); else it is parked and
        swapped back before new prompts take GPU room, as under gpu-only. (NEO keeps every
        such request on the host under an SLO: on the A10G and 2x H100 hosts with long outputs
        they then waited up to `max_cpu_wait_steps` iterations there, far past the bound;
        `experiments/results/slo_map_before`.) Without an SLO, NEO's test."""
        if self.config.slo_tpot_s is None:
            return super()._host_pays_for_swapped(victim)
        return self._host_pays_for(victim)

    def _steady_prefill_s(self, prefill: SteadyPrefill) -> float:
        """Seconds of prefill an iteration carries on average in the steady state, which every
        resident's mean gap between tokens pays: each resident's slot takes a new prompt
        about as long as its own once per its output length (NEO's `SteadyPrefill`), and a
        prompt of L tokens costs an iteration of that prefill alone."""
        memo = self.__dict__.setdefault("_prefill_s_memo", {})
        total = 0.0
        for r in (*prefill.residents, *prefill.added):
            seconds = memo.get(r.prompt_len)
            if seconds is None:
                alone = SubBatchBuilder(self.cost)
                alone.add_prefill(PrefillWork(r.request_id, 0, r.prompt_len))
                seconds = memo[r.prompt_len] = self._work_s(Mode.SEQUENTIAL, (alone,))
            total += seconds / r.max_new_tokens
        return total

    def _extend_pipelined(
        self,
        b0: SubBatchBuilder,
        b1: SubBatchBuilder,
        budget: Budget,
        candidates: list[Candidate],
        seq: SubBatchBuilder,
    ) -> None:
        """Add the CPU decodes NEO's slack rule left out while each pays for the time it adds
        (`_HostDecodePrice`; with a TPOT SLO: while the iteration stays within it)."""
        planned = {d.request_id for b in (b0, b1) for d in b.cpu_decodes}
        cpu_pool = self.kv.cpu
        cpu_free = self._host_blocks_free_after(candidates)
        cpu_free -= sum(
            cpu_pool.extra_blocks(d.request_id, d.context_len)
            for b in (b0, b1)
            for d in b.cpu_decodes
        )
        price = None if self.config.slo_tpot_s is not None else _HostDecodePrice(self, b0, b1, seq)
        shortest_rejected = float("inf")
        for r in self._cpu_decodes_longest_waiting_first():
            seq_len = r.seq_len
            if r.request_id in planned or seq_len >= shortest_rejected:
                continue
            growth = cpu_pool.extra_blocks(r.request_id, seq_len)
            if growth > cpu_free or not budget.take(1):
                continue
            s0, s1 = slacks(b0, b1)
            target = b1 if s1 >= s0 or not b1 else b0
            work = DecodeWork(r.request_id, seq_len)
            target.add_cpu_decode(work)
            if price is None:  # under a TPOT SLO
                worth = self._work_s(Mode.PIPELINED, (b0, b1)) <= self._tpot_limit_s
            else:
                worth = price.pays(work)
            if not worth:
                target.pop_cpu_decode()
                budget.give(1)
                shortest_rejected = seq_len
                continue
            cpu_free -= growth


class _HostDecodePrice:
    """Whether a host decode added to a pipelined plan beyond NEO's slack rule pays for the
    time it adds (no SLO set). Two tests, both in requests served:
    - the plan's value per second does not fall (the rule before this one, kept);
    - the decode is worth at least what GPU-only iterations would serve in the seconds it adds
      (`seq`'s requests/s times them): those seconds are taken from the GPU's residents, who
      wait for the host, and GPU-only iterations could run in them instead.
    A host decode's value is its share of a GPU decode's: min(1, its context / the mean
    context of the GPU's decodes). The host holds residents because the GPU pool is full, so
    the GPU serves about (pool tokens / mean context) requests per iteration; each token a
    host resident gets on the host brings it back to the GPU that much longer, so the GPU is
    left its longer, dearer tokens and the host took its cheapest: a host token at a short
    context saves the GPU less than one of its own. (Capped at 1: a host token at a longer
    context than the GPU's mean would save more only while the GPU pool stays full until that
    request ends, which it does not near the end of a run.) On g5.8xlarge with 1000/800
    offline the extension without these tests decoded ~130 host residents per iteration,
    each iteration 6x a GPU-only one, at about GPU-only's requests/s; the GPU's own residents
    then aged together and the host residents came back long: 0.94x NEO (1.00x with them,
    docs/architecture.md, "Adaptive")."""

    def __init__(
        self,
        policy: AdaptivePolicy,
        b0: SubBatchBuilder,
        b1: SubBatchBuilder,
        seq: SubBatchBuilder,
    ):
        self.policy, self.chosen = policy, (b0, b1)
        n = len(seq.gpu_decodes)
        self.gpu_context = seq.gpu_decode_tokens / n if n else None
        self.gpu_only_rate = policy._rate(Mode.SEQUENTIAL, (seq,)) if seq else 0.0
        if b1:  # the plan's value: its requests, each host decode at its share of one
            self.seconds = policy._work_s(Mode.PIPELINED, self.chosen)
            host = [d for b in self.chosen for d in b.cpu_decodes]
            self.value = b0.num_seqs + b1.num_seqs - sum(1.0 - self._share(d) for d in host)
        else:  # the first host decode will open sub-batch 1: against the GPU-only plan
            self.seconds = policy._work_s(Mode.SEQUENTIAL, (seq,))
            self.value = seq.num_seqs
        self.best = self.value / self.seconds if self.seconds else 0.0

    def _share(self, work: DecodeWork) -> float:
        if self.gpu_context is None:
            return 1.0
        return min(1.0, work.context_len / self.gpu_context)

    def pays(self, work: DecodeWork) -> bool:
        """`work` was just added to the plan: keep it? (If so, it becomes part of the plan.)"""
        seconds = self.policy._work_s(Mode.PIPELINED, self.chosen)
        share = self._share(work)
        value = self.value + share
        if value / seconds < self.best or (seconds - self.seconds) * self.gpu_only_rate > share:
            return False
        self.value, self.seconds, self.best = value, seconds, value / seconds
        return True


def _at_mean_future_context(r: Request) -> DecodeWork:
    """`r`'s decode at its mean context over the tokens it has left (its length taken as
    `max_new_tokens`): what its attention costs on average over the rest of its life."""
    return DecodeWork(r.request_id, r.seq_len + (r.max_new_tokens - r.num_generated) // 2)


def _margin(outside_tokens: int, copy_s: float, step_s: float) -> float:
    """Rule 7's margin, tokens left: the economic order quantity sqrt(2 W c / h) of the drain.
    The requests off the GPU hold W = `outside_tokens` tokens to decode; each exchange costs
    c = `copy_s`; a margin of M tokens costs about W / M exchanges and leaves the drain up to
    M iterations longer than the longest-remaining-first order would, M / 2 on average, at
    h = `step_s` an iteration. W c / M + M h / 2 is least at M = sqrt(2 W c / h)."""
    return math.sqrt(2 * outside_tokens * copy_s / step_s) if step_s > 0 else math.inf


def _left(r: Request) -> int:
    """Output tokens `r` has left (its `max_new_tokens` less those generated)."""
    return r.max_new_tokens - r.num_generated


def _part_way_then_most_left(r: Request) -> tuple[bool, int]:
    """Rule 7's queue order: a prompt part-way through its chunks first, then most output
    tokens left first."""
    return r.num_computed == 0, -_left(r)
