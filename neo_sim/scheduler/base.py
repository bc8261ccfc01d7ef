"""What every policy shares: the config, the queues, the request lifecycle and its contract.

Policy API (the simulator and the engine call exactly this):
- `add(requests)`: enqueue new requests (FCFS by call order);
- `step(now) -> Plan`: decide the next iteration; blocks are allocated and swaps applied in
  the scheduler's books before it returns, so the executor reads block tables from `kv`;
- `complete(plan, finished=())`: the iteration ran; advance every request in it, retire those
  that reached `max_new_tokens` or are listed in `finished` (EOS/stop, from the engine);
  returns the retired requests;
- `abort(request_id)`: drop a request wherever it is and free its blocks.
No clock, no I/O: `now` is only recorded. The cost model is injected at construction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from neo_sim.costmodel import CostModel
from neo_sim.errors import NeoError
from neo_sim.scheduler.kv import BlockPool, KVManager, blocks_for
from neo_sim.scheduler.plan import DecodeWork, Plan, Swap, new_tuple
from neo_sim.scheduler.request import Request, RequestState
from neo_sim.settings import check, setting


@dataclass(frozen=True)
class SchedulerConfig:
    """Every scheduler setting: KV pools and per-iteration budgets (docs/architecture.md,
    "Scheduler"). The single home of these defaults: the simulator's and the engine's flags are
    generated from it.

    The pool sizes may be left unset (None) in a configuration; `neo_sim.capacity` resolves them
    from memory sizes before a policy is built.
    """

    num_gpu_blocks: int | None = setting(
        None,
        "GPU KV pool; unset: what device memory leaves after weights and activations",
        unit="blocks",
        low=0,
        flag="gpu-kv-blocks",
    )
    num_cpu_blocks: int | None = setting(
        None,
        "host KV pool; unset: from --cpu-kv-gb, else a fraction of host memory",
        unit="blocks",
        low=0,
        flag="cpu-kv-blocks",
    )
    block_size: int = setting(16, "tokens per KV block", unit="tokens", low=1)
    max_batch_size: int = setting(256, "sequences per iteration", unit="sequences", low=1)
    max_num_seqs: int = setting(
        512, "request slots: requests resident on the GPU or the CPU", unit="requests", low=1
    )
    max_batch_tokens: int = setting(
        4096,
        "tokens per iteration (a whole prompt must fit); vLLM's max_num_batched_tokens",
        unit="tokens",
        low=1,
        aliases=("max_num_batched_tokens",),
    )
    swap_in_watermark: float = setting(
        0.95,
        "swap CPU decodes back while GPU KV usage stays under this fraction",
        low=0,
        high=1,
        low_open=True,
    )
    cpu_prefill_min_tokens: int = setting(
        128, "neo: width kept when trimming CPU-placed prefills", unit="tokens", low=0
    )
    max_cpu_wait_steps: int = setting(
        256,
        "neo: iterations a CPU-resident request may wait before it is forced into the next "
        "plan (larger favours throughput)",
        unit="iterations",
        low=1,
    )
    chunked_prefill_tokens: int = setting(
        0,
        "prompts prefilled in chunks: tokens per iteration, decodes included (gpu-only, neo, "
        "apex, adaptive; vllm-N set it); 0 = whole prompts",
        unit="tokens",
        low=0,
    )
    kv_chunk_tokens: int = setting(
        0,
        "a prompt chunk adopted as chunked_prefill_tokens only where its smaller activation "
        "reserve enlarges the memory-sized GPU KV pool by kv_chunk_min_gain or more, and no "
        "TTFT SLO is set (adaptive sets it); 0 = off",
        unit="tokens",
        low=0,
    )
    kv_chunk_min_gain: float = setting(
        0.05,
        "the GPU KV pool growth, as a fraction, that kv_chunk_tokens must buy: chunks admit "
        "prompts more slowly, worth it only for the KV",
        low=0,
    )

    slo_ttft_s: float | None = setting(
        None,
        "TTFT SLO: goodput counts the requests within it; adaptive orders its waiting prompts "
        "for the most first tokens within it, and kv_chunk_tokens is not adopted under it",
        unit="s",
        low=0,
        low_open=True,
        flag="slo-ttft",
    )
    slo_tpot_s: float | None = setting(
        None,
        "TPOT SLO: goodput counts the requests within it; adaptive sizes its host set and "
        "picks its plans so that every resident's next token is predicted within it",
        unit="s",
        low=0,
        low_open=True,
        flag="slo-tpot",
    )

    def __post_init__(self) -> None:
        check(self, "scheduler config")

    @property
    def pools_resolved(self) -> bool:
        return self.num_gpu_blocks is not None and self.num_cpu_blocks is not None

    @property
    def iteration_tokens(self) -> int:
        """Most tokens one iteration holds: `max_batch_tokens`, or the prompt-chunk budget
        with chunked prefill where that is smaller (decodes and chunks share it; a chunk above
        the cap does not lift it). The budget the policies plan with and what device memory
        keeps activations for (as vLLM's memory profiling runs max_num_batched_tokens): one
        number, so the two cannot part."""
        if self.chunked_prefill_tokens:
            return min(self.chunked_prefill_tokens, self.max_batch_tokens)
        return self.max_batch_tokens


@dataclass(frozen=True)
class SteadyRun:
    """Iterations a policy guarantees to repeat, absent arrivals and aborts: the same GPU
    decodes, in the same order, each one token longer per iteration, nothing else (no
    prefill, swap, CPU work or block shortage). The simulator advances them in one go
    (`Policy.advance_steady`) instead of stepping each one. The run's last iteration gives
    the requests nearest their end their last token: they retire when it ends, as `complete`
    would retire them."""

    requests: tuple[Request, ...]  # in plan order
    max_iterations: int  # guaranteed iterations; only the last one can finish requests
    total_context: int  # the first iteration's decode contexts, summed (tokens)

    @property
    def batch(self) -> int:
        return len(self.requests)


class Residents(dict[int, Request]):
    """Requests by id, in insertion order, with the KV blocks their full lengths
    (`max_seq_len`) take, summed as they come and go (`full_blocks`): NEO reserves host room
    for every host resident to grow to its full length, and checks it each step. Only
    `d[id] = r`, `del d[id]` and `d.pop(id, ...)` change it (others are refused)."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size
        self.full_blocks = 0

    def _blocks(self, r: Request) -> int:
        return blocks_for(r.max_seq_len, self.block_size)

    def __setitem__(self, request_id: int, r: Request) -> None:
        if request_id in self:
            self.full_blocks -= self._blocks(self[request_id])
        super().__setitem__(request_id, r)
        self.full_blocks += self._blocks(r)

    def __delitem__(self, request_id: int) -> None:
        self.full_blocks -= self._blocks(self[request_id])
        super().__delitem__(request_id)

    def pop(self, request_id: int, *default: Any) -> Any:  # type: ignore[override]
        if request_id in self:
            self.full_blocks -= self._blocks(self[request_id])
        return super().pop(request_id, *default)

    def _refused(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Residents: only d[id] = r, del d[id] and d.pop(id) keep full_blocks")

    clear = popitem = setdefault = update = __ior__ = _refused  # type: ignore[assignment]


_ON_CPU = RequestState.RUNNING_CPU


class Budget:
    """Sequences and tokens left in this iteration."""

    def __init__(self, seqs: int, tokens: int):
        self.seqs, self.tokens = seqs, tokens

    def take(self, tokens: int) -> bool:
        if self.seqs >= 1 and self.tokens >= tokens:
            self.seqs -= 1
            self.tokens -= tokens
            return True
        return False

    def take_each(self, count: int, tokens: int) -> int:
        """`take(tokens)` `count` times, at once; returns how many succeeded (the k-th does
        while seqs >= k and the tokens left cover k x tokens)."""
        fits = self.tokens // tokens if tokens else (count if self.tokens >= 0 else 0)
        taken = max(0, min(count, self.seqs, fits))
        self.seqs -= taken
        self.tokens -= taken * tokens
        return taken

    def give(self, tokens: int) -> None:
        self.seqs += 1
        self.tokens += tokens


class Policy(ABC):
    """Queues and lifecycle shared by all policies; subclasses implement `step`."""

    name = "policy"
    # The names this class is offered under, each with the config settings it fixes (e.g.
    # {"vllm-256": {"chunked_prefill_tokens": 256}}); empty for abstract or helper classes.
    variants: dict[str, dict] = {}
    # Where the variants are listed (CLI choices, comparisons, the policy map): baselines
    # first, then the offloading policies, then the strawmen.
    listing_rank = 100
    # Whether the policy cuts prompts into `chunked_prefill_tokens` chunks (others refuse the
    # setting: their iterations would hold more tokens than memory was sized for).
    chunks_prompts = False

    def __init__(self, config: SchedulerConfig, cost: CostModel):
        if not config.pools_resolved:
            raise NeoError(
                "scheduler config: KV pool sizes are unset; resolve them with "
                "neo_sim.capacity.resolve_pools (or give num_gpu_blocks and num_cpu_blocks)"
            )
        self.config = config
        self.cost = cost
        self.kv = KVManager(config.num_gpu_blocks, config.num_cpu_blocks, config.block_size)
        self.requests: dict[int, Request] = {}
        self.waiting: deque[Request] = deque()
        self.gpu_running: dict[int, Request] = {}  # admission order
        # admission order (NEO's CPU decodes)
        self.cpu_running: Residents = Residents(config.block_size)
        self.swapped: dict[int, Request] = {}  # gpu-only: parked on the host
        self.step_index = 0
        self.now = 0.0
        self._admitted = 0

    # ---- the contract ----------------------------------------------------------------------
    def add(self, requests: Iterable[Request] | Request) -> None:
        if isinstance(requests, Request):
            requests = [requests]
        for r in requests:
            if r.request_id in self.requests:
                raise NeoError(f"request id {r.request_id} is already in the scheduler")
            limit = self.max_seq_tokens()
            if r.max_seq_len > limit:
                raise NeoError(
                    f"request {r.request_id}: prompt {r.prompt_len} + max_new_tokens "
                    f"{r.max_new_tokens} tokens can never fit the KV pools of policy "
                    f"{self.name} ({limit} tokens); raise the KV capacity or shorten it"
                )
            if r.max_seq_len > self.max_prompt_tokens():
                # A preempted request re-prefills prompt + outputs in one iteration.
                raise NeoError(
                    f"request {r.request_id}: prompt {r.prompt_len} + max_new_tokens "
                    f"{r.max_new_tokens} exceeds the {self.max_prompt_tokens()}-token "
                    "per-iteration budget; raise max_batch_tokens or enable chunked prefill"
                )
            r.state = RequestState.WAITING
            self.requests[r.request_id] = r
            self.waiting.append(r)

    @abstractmethod
    def step(self, now: float = 0.0) -> Plan:
        """Decide the next iteration."""

    def complete(self, plan: Plan, finished: Iterable[int] = ()) -> list[Request]:
        stop = set(finished)
        done: list[Request] = []
        for sb in plan.sub_batches:
            self._advance([(p.request_id, p.end) for p in sb.prefills], stop, done, False)
            self._advance(sb.gpu_decodes, stop, done)
            self._advance(sb.cpu_decodes, stop, done)
        return done

    def abort(self, request_id: int) -> bool:
        r = self.requests.get(request_id)
        if r is None or r.is_done:
            return False
        self._retire(r, RequestState.ABORTED)
        return True

    # ---- views -----------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.gpu_running or self.cpu_running or self.swapped)

    @property
    def num_resident(self) -> int:
        return len(self.gpu_running) + len(self.cpu_running)

    def max_seq_tokens(self) -> int:
        """Longest sequence this policy can ever hold (checked at `add`)."""
        return max(self.kv.gpu.num_blocks, self.kv.cpu.num_blocks) * self.config.block_size

    def max_prompt_tokens(self) -> int:
        if self.config.chunked_prefill_tokens:
            return self.max_seq_tokens()
        return self.config.max_batch_tokens

    # ---- steady runs (a simulator fast path; see SteadyRun) -------------------------------
    def steady_run(self) -> SteadyRun | None:
        """The run of iterations that will repeat the last plan with contexts one token longer
        each, or None. A policy that cannot promise this keeps the default (None): the
        simulator then steps every iteration."""
        return None

    def _steady_gpu_decodes(self, token_budget: int) -> SteadyRun | None:
        """Steady when every resident request is a GPU decode and nothing else can happen:
        nothing is CPU-resident, queued work cannot start (`_queues_stay_put`), the batch fits
        the budget, and the GPU pool has the blocks the run will grow into."""
        if self.cpu_running or not self.gpu_running:
            return None
        running = tuple(self.gpu_running.values())
        if len(running) > min(self.config.max_batch_size, token_budget):
            return None
        if any(r.is_prefilling for r in running):
            return None
        if (self.waiting or self.swapped) and not self._queues_stay_put(running, token_budget):
            return None
        seq_lens = [r.seq_len for r in running]
        iterations = min(r.max_new_tokens - r.num_generated for r in running)
        iterations = self._iterations_with_blocks(running, seq_lens, iterations)
        if iterations < 1:
            return None
        return SteadyRun(running, iterations, sum(seq_lens))

    def _queues_stay_put(self, running: tuple[Request, ...], token_budget: int) -> bool:
        """Whether no waiting or swapped request can start during a steady run of `running`.
        The default makes no such promise: a policy that can prove it overrides this."""
        return False

    def _iterations_with_blocks(
        self, running: tuple[Request, ...], seq_lens: list[int], limit: int
    ) -> int:
        """The most iterations (<= limit) whose block growth fits the free GPU blocks
        (`seq_lens`: each running request's `seq_len`)."""
        gpu, bs = self.kv.gpu, self.config.block_size
        held = sum(gpu.num_blocks_of(r.request_id) for r in running)

        def growth(m: int) -> int:  # blocks the run's first m iterations add
            return sum(blocks_for(s + m - 1, bs) for s in seq_lens) - held

        if growth(limit) <= gpu.num_free:
            return limit  # the usual case: the pool has room for the whole run
        low, high = 0, limit
        while low < high:
            mid = (low + high + 1) // 2
            if growth(mid) <= gpu.num_free:
                low = mid
            else:
                high = mid - 1
        return low

    def advance_steady(self, run: SteadyRun, iterations: int, last_start: float) -> list[Request]:
        """Apply `iterations` iterations of `run` to the books exactly as `step()` and
        `complete()` would: the same block ids in the same order, the same counters, and the
        requests that got their last token retired in plan order (returned, as `complete`)."""
        gpu, bs = self.kv.gpu, self.config.block_size
        growth = []  # (iteration, position in plan, request id): a new block at that iteration
        self.step_index += iterations
        step = self.step_index
        for index, r in enumerate(run.requests):
            # Iteration j decodes context seq_len + j - 1; a block starts at context % bs == 1.
            first = r.seq_len
            first_new = first + (1 - first) % bs if bs > 1 else first
            for context in range(first_new, first + iterations, bs):
                growth.append((context - first + 1, index, r.request_id))
            r.num_computed = first + iterations - 1
            r.num_generated += iterations
            r.gpu_steps += iterations
            r.last_progress_step = step
        growth.sort()
        for _, _, request_id in growth:
            gpu.add_block(request_id)  # one block each: a boundary is crossed
        self.now = last_start
        done = [r for r in run.requests if r.num_generated >= r.max_new_tokens]
        for r in done:
            self._retire(r, RequestState.FINISHED)
        return done

    # ---- shared mechanics ------------------------------------------------------------------
    def _advance(
        self,
        works: Iterable[tuple[int, int]],
        stop: set[int],
        done: list[Request],
        decodes: bool = True,
    ) -> None:
        """The books after an iteration computed (request id, end of its token range) of each
        of `works`; those that got their last token are retired and added to `done`. A host
        resident's wait for progress is recorded for `decodes` only (a chunked prompt's last
        chunk is not a resident's turn). One loop with its state in locals: it runs for every
        request of every iteration."""
        requests, step = self.requests, self.step_index
        for request_id, end in works:
            r = requests.get(request_id)
            if r is None:
                continue  # aborted while the iteration ran (`_retire` forgets a request)
            if r.state == _ON_CPU:
                r.cpu_steps += 1
                if decodes and r.num_computed:  # a resident: it waited since its last progress
                    waited = step - r.last_progress_step
                    if waited > r.max_host_wait_steps:
                        r.max_host_wait_steps = waited
            else:
                r.gpu_steps += 1
            r.num_computed = end
            r.last_progress_step = step
            if end >= r.prompt_len + r.num_generated:  # seq_len
                r.num_generated += 1
                if r.num_generated >= r.max_new_tokens or request_id in stop:
                    self._retire(r, RequestState.FINISHED)
                    done.append(r)

    def _retire(self, r: Request, state: RequestState) -> None:
        """Take `r` out of every queue and pool and forget it (`requests`): the books of a
        plan that still holds it skip it (`_advance`)."""
        rid = r.request_id
        self.gpu_running.pop(rid, None)
        self.cpu_running.pop(rid, None)
        self.swapped.pop(rid, None)
        if r.state == RequestState.WAITING and r in self.waiting:
            self.waiting.remove(r)
        self.kv.free(rid)
        r.state = state
        del self.requests[rid]

    def _mark_admitted(self, r: Request) -> None:
        if r.admit_order < 0:
            r.admit_order = self._admitted
            self._admitted += 1

    def _blocks(self, num_tokens: int) -> int:
        return blocks_for(num_tokens, self.config.block_size)

    @staticmethod
    def _next_token_growth(
        pool: BlockPool, requests: Iterable[Request]
    ) -> tuple[int, list[DecodeWork]]:
        """Blocks `pool` adds for each of `requests` to hold its `seq_len` tokens (the sum of
        `pool.extra_blocks`), and the decodes of those that add some (a block boundary
        crossed: about one decode in `block_size`), in one loop: every step asks it of every
        GPU resident, and growing only those decodes spares the step a second pass over all
        of them (`NeoPolicy._commit`)."""
        lookup, block_size = pool.tables.get, pool.block_size
        need = 0
        growing = []
        for r in requests:
            seq_len = r.prompt_len + r.num_generated
            extra = -(-seq_len // block_size) - len(lookup(r.request_id, ()))
            if extra > 0:
                need += extra
                growing.append(new_tuple(DecodeWork, (r.request_id, seq_len)))
        return need, growing

    def _move_kv(self, r: Request, to_gpu: bool) -> Swap:
        """Move a request's cached KV to the other pool; the Swap tells the executor what to copy.
        (The caller updates the request's state and queues.)"""
        src, dst = self.kv.move(r.request_id, r.num_computed, to_gpu=to_gpu)
        r.num_swaps += 1
        return Swap(r.request_id, r.num_computed, tuple(src), tuple(dst))

    def _park(self, r: Request) -> Swap:
        """Preempt GPU resident `r` by swapping: its KV to the host, where it waits without
        progress until it is brought back (`_to_gpu`)."""
        swap = self._move_kv(r, to_gpu=False)
        del self.gpu_running[r.request_id]
        self.swapped[r.request_id] = r
        r.state = RequestState.SWAPPED
        r.num_preemptions += 1
        return swap

    def _to_gpu(self, r: Request) -> Swap:
        """Bring a parked request or a host resident back: its KV to the GPU, it a GPU
        resident. A caller that brings some back restores the residents' admission order
        after (`_gpu_running_in_admission_order`)."""
        swap = self._move_kv(r, to_gpu=True)
        (self.swapped if r.state == RequestState.SWAPPED else self.cpu_running).pop(r.request_id)
        r.state = RequestState.RUNNING_GPU
        self.gpu_running[r.request_id] = r
        return swap

    def _gpu_running_in_admission_order(self) -> None:
        self.gpu_running = dict(sorted(self.gpu_running.items(), key=lambda kv: kv[1].admit_order))

    def _swap_in_parked(self, budget: Budget) -> tuple[Swap, ...]:
        """Bring parked (swapped-out) requests back to the GPU, oldest first, while GPU KV
        stays under the low watermark and the batch has room: `budget` is what the running
        requests have left, and each request brought back takes a slot and a token of it."""
        if not self.swapped:
            return ()
        gpu = self.kv.gpu
        # The low watermark leaves room for growth; an idle GPU takes whatever fits.
        limit = (
            self.config.swap_in_watermark * gpu.num_blocks if self.gpu_running else gpu.num_blocks
        )
        used = gpu.num_used + sum(
            gpu.extra_blocks(r.request_id, r.seq_len)
            for r in self.gpu_running.values()
            if not r.is_prefilling
        )
        swaps = []
        for r in sorted(self.swapped.values(), key=lambda r: r.admit_order):
            blocks = self._blocks(r.seq_len)
            if used + blocks > limit or not budget.take(1):
                break
            used += blocks
            swaps.append(self._to_gpu(r))
        if swaps:
            self._gpu_running_in_admission_order()
        return tuple(swaps)

    def _recompute(self, r: Request) -> None:
        """Preempt by dropping KV: the request re-prefills its prompt and outputs so far."""
        self.gpu_running.pop(r.request_id, None)
        self.cpu_running.pop(r.request_id, None)
        self.kv.free(r.request_id)
        r.num_computed = 0
        r.num_preemptions += 1
        r.state = RequestState.WAITING
        self.waiting.appendleft(r)
