"""Runs a Plan: swaps, then every layer of every sub-batch, on two compute lanes.

Swaps come first: whole requests, every layer, out then in (docs/architecture.md, "Swaps").
The GPU lane (the device, or on a CPU-only machine the calling thread standing in for it) runs
the projections, prefill attention and device decode attention. The CPU lane is a worker
thread that receives each CPU decode's q, k, v, appends k, v to the host cache and runs the host
attention kernel (which releases the GIL). Per layer i, in issue order on the GPU lane:

    for each sub-batch b:  post(b, i-1)  [waits for b's host attention of layer i-1]
                           pre(b, i)  -> hand q/k/v of b's CPU decodes to the host lane
                           device attention of b's prefills and GPU decodes

so with two sub-batches the host attention of one overlaps the device work of the other
(asymmetric pipelining, docs/architecture.md); with one sub-batch it overlaps only that
sub-batch's own device attention (APEX's fused iteration, `Mode.FUSED`, is exactly that
case). On CUDA the lanes synchronise with events and copies are non-blocking through pinned
memory; on the CPU the same code runs with plain tensors. Where the two lanes share the same
cores (a CPU device) they do not overlap by default (`host_overlap`): the host attention runs
on the calling thread, in the same order, as the timing model's shared lanes price it.

A plan of device decodes only (one sub-batch, no prefills, no host decodes) on a CPU device
runs every layer in one compiled call instead (`decode_layers.FusedDecodeLayers`: the same
kernels, bit for bit, without Python between them), timed as one span per layer.

Every task is timed as a `neo_sim.lanes.Span` (lane, task, layer, sub-batch), the vocabulary
of the simulator's timing model, for the profiler and the fidelity report.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from neo_engine.attention import (
    device_decode_stage,
    host_decode_stage,
    prefill_stage,
    whole_prompts_stage,
)
from neo_engine.decode_layers import FusedDecodeLayers
from neo_engine.kv_cache import KVPool, copy_blocks
from neo_engine.layers import Rotary, linear, post_projection, pre_projection, rms_norm
from neo_engine.weights import ModelWeights
from neo_sim.lanes import Lane, Span, Task
from neo_sim.model import ModelSpec
from neo_sim.scheduler.kv import KVManager
from neo_sim.scheduler.plan import Plan, SubBatch
from neo_sim.scheduler.request import Device


@dataclass
class StepResult:
    request_ids: list[int]  # requests that produce a token, in row order of `logits`
    logits: torch.Tensor  # [n, vocab] float32 on the executor's device (sampled there)
    spans: list[Span]
    duration_s: float
    # For requests that asked for prompt log-probabilities: (first position, logits [n, vocab])
    # of every prefilled position; row i predicts the token at position first + i + 1.
    prompt_logits: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Prefill:
    rows: tuple[int, int]
    start: int
    end: int
    pool: KVPool
    slots: tuple[torch.Tensor, torch.Tensor]
    table: list[int]


@dataclass
class _Decodes:
    rows: tuple[int, int]
    tables: torch.Tensor  # int32 [n, max_blocks]
    lens: torch.Tensor  # int32 [n]
    slots: tuple[torch.Tensor, torch.Tensor]


@dataclass
class _Prepared:
    hidden: torch.Tensor
    positions: torch.Tensor
    prefills: list[_Prefill]
    gpu: _Decodes | None
    cpu: _Decodes | None
    producers: list[tuple[int, int]]  # (row, request id)
    prompt_rows: list[tuple[int, int, int, int]] = field(default_factory=list)  # rid, a, b, pos
    device_out: torch.Tensor | None = None
    host_future: Future | None = None
    index: int = 0  # the sub-batch's index in the plan


def default_host_overlap(cuda: bool) -> bool:
    """Whether the host lane runs beside the device lane when not set: with a GPU, yes (the
    host's cores are free while the GPU computes). On a CPU device the "GPU" lane runs on the
    same cores, so overlapping the lanes only makes them contend; the host attention then runs
    on the calling thread where the device lane reaches it, with every thread: on 2 cores,
    the same plans ran in 0.88x (neo, pipelined) and 0.89x (apex, fused) of the overlapped
    wall time, medians of five alternating rounds, faster in every round
    (`benchmarks/results/host_overlap.json`, written by `benchmarks/host_overlap.py`)."""
    return cuda


def default_host_threads(cuda: bool, overlap: bool) -> int:
    """Threads of the host attention kernel when not set. With a GPU, or with the lanes run one
    after the other, the host's cores are its own: torch's thread count. On a CPU device with
    the lanes overlapped the "GPU" lane's kernels run on the same cores at the same time, so
    the host lane gets half of them: two teams of torch's size oversubscribe the cores, and a
    parallel region then waits for a thread the OS has descheduled (2 cores, neo on
    `dummy:small`, 4 interleaved pairs: one host thread took 9-18% less wall time than two in
    every pair)."""
    threads = torch.get_num_threads()
    return threads if cuda or not overlap else max(1, threads // 2)


def host_lane(cuda: bool, threads: int | None = None, overlap: bool | None = None) -> str:
    """How the executor runs the host lane with these settings (unset: the defaults), in
    words: a measured profile records it, since its host attention times hold only for it."""
    overlap = default_host_overlap(cuda) if overlap is None else overlap
    threads = threads or default_host_threads(cuda, overlap)
    return f"{'overlapped' if overlap else 'inline'}, {threads} thread{'s' * (threads != 1)}"


class Executor:
    def __init__(
        self,
        spec: ModelSpec,
        weights: ModelWeights,
        device: torch.device,
        gpu_pool: KVPool,
        cpu_pool: KVPool,
        host_threads: int | None = None,
        host_overlap: bool | None = None,
        fuse_decode_layers: bool = True,
    ):
        """`fuse_decode_layers`: run a decode-only iteration's layers in one compiled call
        where that applies (`decode_layers.FusedDecodeLayers`); False times the stages one by
        one (the operator benchmark reads PRE, GPU_ATTN and POST)."""
        self.spec = spec
        self.w = weights
        self.device = device
        self.gpu_pool = gpu_pool
        self.cpu_pool = cpu_pool
        self.rotary = Rotary(spec, device)
        self.scale = spec.head_dim**-0.5
        self._cuda = device.type == "cuda"
        if host_overlap is None:
            host_overlap = default_host_overlap(self._cuda)
        self.host_overlap = host_overlap
        self.host_threads = host_threads or default_host_threads(self._cuda, self.host_overlap)
        # The host worker thread, when the lanes overlap. On CUDA it lives as long as the
        # executor. On a CPU device it lives for one iteration (`run`): its attention kernel's
        # OpenMP team, alive beside the calling thread's, makes libgomp throttle every team's
        # spin-wait once their threads outnumber the cores, and each parallel kernel of the
        # calling thread then pays a wake-up (measured on 2 cores: a 4-token QKV projection
        # 0.21 -> 0.29-0.35 ms while an idle worker that had run one kernel was alive, 0.21
        # once it exited).
        self._host: ThreadPoolExecutor | None = (
            self._new_host_worker() if self._cuda and self.host_overlap else None
        )
        self._t0 = 0.0
        self._spans: list[Span] = []
        # None where the fused layers do not apply; set to None, every plan runs stage by stage
        self.fused_layers: FusedDecodeLayers | None = (
            FusedDecodeLayers.build(spec, weights, device, gpu_pool) if fuse_decode_layers else None
        )

    @property
    def host_lane(self) -> str:
        """How this executor runs its host lane, in `host_lane`'s words."""
        return host_lane(self._cuda, self.host_threads, self.host_overlap)

    def close(self) -> None:
        if self._host is not None:
            self._host.shutdown(wait=True)
            self._host = None

    @staticmethod
    def _new_host_worker() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="neo-host-attn")

    # ---- one iteration ---------------------------------------------------------------------
    def run(
        self,
        plan: Plan,
        token_ids: dict[int, list[int]],
        kv: KVManager,
        prompt_logits_for: frozenset[int] = frozenset(),
    ) -> StepResult:
        """Run `plan`; `prompt_logits_for` names requests whose prefilled positions also need
        logits (prompt log-probabilities)."""
        self._t0 = time.perf_counter()
        self._spans = []
        self._swap(plan)
        preps = [
            self._prepare(sb, i, token_ids, kv, prompt_logits_for)
            for i, sb in enumerate(plan.sub_batches)
            if sb
        ]
        one_iteration_worker = (
            self.host_overlap and self._host is None and any(p.cpu is not None for p in preps)
        )
        if one_iteration_worker:
            self._host = self._new_host_worker()
        try:
            if self.fused_layers is not None and len(preps) == 1 and _decodes_only(preps[0]):
                self._run_fused(preps[0])
            else:
                self._run_layers(preps)
        finally:
            if one_iteration_worker:
                self.close()  # the worker thread exits, and its OpenMP team with it
        request_ids, logits, prompt_logits = self._logits(preps)
        duration = time.perf_counter() - self._t0
        return StepResult(request_ids, logits, self._spans, duration, prompt_logits)

    def _run_layers(self, preps: list[_Prepared]) -> None:
        """Every layer, stage by stage (the module docstring's order)."""
        for layer in range(self.spec.num_layers):
            for p in preps:
                if layer:
                    self._post(p, layer - 1)
                self._pre_and_attend(p, layer)
        for p in preps:
            self._post(p, self.spec.num_layers - 1)

    def _run_fused(self, p: _Prepared) -> None:
        """Every layer of a sub-batch of device decodes in one compiled call, one span per
        layer laid end to end from the call's start."""
        cos, sin = self.rotary.rows(p.positions, p.hidden.dtype)
        d = p.gpu
        start = time.perf_counter() - self._t0
        p.hidden, seconds = self.fused_layers.run(p.hidden, cos, sin, d.slots, d.tables, d.lens)
        for layer, duration in enumerate(seconds):
            self._spans.append(Span(Lane.GPU, Task.LAYER, start, duration, layer, p.index))
            start += duration

    # ---- stages ------------------------------------------------------------------------------
    def _swap(self, plan: Plan) -> None:
        """Whole-request copies before any layer runs: the freed GPU blocks may be reused by
        this iteration's prefills, and a swapped-in request attends at layer 0. Every swap
        out goes first (a swap in may take the GPU blocks it freed), so a plan whose swaps out
        write host blocks its swaps in read is refused: it would decode over the wrong KV."""
        overwritten = plan.host_blocks_overwritten
        if overwritten:
            raise RuntimeError(
                f"plan {plan.step}: its swaps out would overwrite host blocks "
                f"{sorted(overwritten)} before its swaps in read them (a scheduler bug)"
            )
        if plan.swap_out:
            with self._span(Lane.D2H, Task.SWAP_OUT):
                for s in plan.swap_out:
                    self._on_host_thread(
                        copy_blocks, self.gpu_pool, self.cpu_pool, s.src_blocks, s.dst_blocks
                    )
        if plan.swap_in:
            with self._span(Lane.H2D, Task.SWAP_IN):
                for s in plan.swap_in:
                    self._on_host_thread(
                        copy_blocks,
                        self.cpu_pool,
                        self.gpu_pool,
                        s.src_blocks,
                        s.dst_blocks,
                        non_blocking=self._cuda,
                    )

    def _on_host_thread(self, fn, *args, **kwargs) -> None:
        """fn(*args, **kwargs) on the long-lived host worker where there is one (CUDA with the
        lanes overlapped), else here: a swap gathers and scatters the host pool's blocks with
        parallel CPU kernels, and on CUDA this thread must keep no OpenMP team beside the
        worker's (`host_threads`). Same stream, so the GPU side stays in order."""
        if self._cuda and self._host is not None:
            self._host.submit(fn, *args, **kwargs).result()
        else:
            fn(*args, **kwargs)

    def _pre_and_attend(self, p: _Prepared, layer: int) -> None:
        lw = self.w.layers[layer]
        with self._span(Lane.GPU, Task.PRE, layer, p.index):
            q, k, v = pre_projection(self.spec, lw, self.rotary, p.hidden, p.positions)
        if p.cpu is not None:
            a, b = p.cpu.rows
            p.host_future = self._submit_host(p, layer, q[a:b], k[a:b], v[a:b])
        out = torch.empty(q.shape[0], self.spec.q_size, dtype=q.dtype, device=q.device)
        p.device_out = out
        if not (p.prefills or p.gpu is not None):
            return  # a sub-batch of CPU decodes only: no device attention to run
        with self._span(Lane.GPU, Task.GPU_ATTN, layer, p.index):
            prefills = p.prefills
            whole = [(pf.pool, pf.slots, pf.rows) for pf in prefills if not pf.start]
            if len(whole) > 1 and whole_prompts_stage(layer, whole, q, k, v, self.scale, out):
                prefills = [pf for pf in prefills if pf.start]
            for pf in prefills:
                a, b = pf.rows
                out[a:b] = prefill_stage(
                    pf.pool,
                    layer,
                    pf.slots,
                    pf.table,
                    pf.start,
                    q[a:b],
                    k[a:b],
                    v[a:b],
                    self.scale,
                    self.device,
                )
            if p.gpu is not None:
                a, b = p.gpu.rows
                out[a:b] = device_decode_stage(
                    self.gpu_pool,
                    layer,
                    p.gpu.slots,
                    p.gpu.tables,
                    p.gpu.lens,
                    q[a:b],
                    k[a:b],
                    v[a:b],
                    self.scale,
                )

    def _submit_host(self, p: _Prepared, layer: int, q, k, v) -> Future:
        if self._cuda:  # ship q/k/v through pinned memory, then let the host wait on an event
            q, k, v = (t.to("cpu", non_blocking=True) for t in (q, k, v))
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        else:
            ready = None
        decodes = p.cpu
        index = p.index

        def task() -> torch.Tensor:
            if ready is not None:
                ready.synchronize()
            with self._span(Lane.CPU, Task.CPU_ATTN, layer, index):
                out = host_decode_stage(
                    self.cpu_pool,
                    layer,
                    decodes.slots,
                    decodes.tables,
                    decodes.lens,
                    q,
                    k,
                    v,
                    self.scale,
                    self.host_threads,
                )
                if self._cuda:
                    out = out.pin_memory()
            return out

        if not self.host_overlap:  # the lanes share the cores: run it now, on this thread
            done: Future = Future()
            done.set_result(task())
            return done
        return self._host.submit(task)

    def _post(self, p: _Prepared, layer: int) -> None:
        out = p.device_out
        if p.host_future is not None:
            if self.host_overlap:
                with self._span(Lane.GPU, Task.WAIT, layer, p.index):
                    host_out = p.host_future.result()
            else:
                host_out = p.host_future.result()  # computed already, on this thread
            a, b = p.cpu.rows
            out[a:b] = host_out.to(self.device, dtype=out.dtype, non_blocking=self._cuda)
            p.host_future = None
        with self._span(Lane.GPU, Task.POST, layer, p.index):
            p.hidden = post_projection(self.spec, self.w.layers[layer], out, p.hidden)

    def _logits(self, preps: list[_Prepared]):
        """(request ids, their next-token logits, prompt logits of the requests asking).
        The producing rows of every sub-batch go through the LM head in one GEMM: it is bound
        by reading its weights (vocab x hidden), so one pass per sub-batch would read them
        once per sub-batch (measured: pipelined iterations' LM head took 1.8x the profiled
        time, which prices one pass). The next-token logits stay on the device: the engine
        samples them there (on CUDA a copy of a [256 x 128k] float32 batch to the CPU would
        move 131 MB a step); prompt logits, rare and scored row by row, come to the CPU."""
        request_ids: list[int] = []
        parts = []
        prompt_logits: dict[int, tuple[int, torch.Tensor]] = {}
        norm, eps = self.w.norm, self.spec.rms_norm_eps
        with self._span(Lane.GPU, Task.LM_HEAD):
            for p in preps:
                for rid, a, b, first in p.prompt_rows:
                    x = rms_norm(p.hidden[a:b], norm, eps)
                    prompt_logits[rid] = (first, linear(x, self.w.lm_head).float().cpu())
                if not p.producers:
                    continue
                rows = torch.tensor([r for r, _ in p.producers], device=self.device)
                parts.append(p.hidden.index_select(0, rows))
                request_ids += [rid for _, rid in p.producers]
            if parts:
                x = rms_norm(torch.cat(parts) if len(parts) > 1 else parts[0], norm, eps)
                logits = linear(x, self.w.lm_head).float()
            else:
                logits = torch.empty(0, self.spec.vocab_size, device=self.device)
        return request_ids, logits, prompt_logits

    # ---- inputs --------------------------------------------------------------------------------
    def _prepare(
        self,
        sb: SubBatch,
        index: int,
        token_ids: dict[int, list[int]],
        kv: KVManager,
        prompt_logits_for: frozenset[int] = frozenset(),
    ) -> _Prepared:
        ids: list[int] = []
        positions: list[int] = []
        prefills: list[_Prefill] = []
        producers: list[tuple[int, int]] = []
        prompt_rows: list[tuple[int, int, int, int]] = []
        for w in sb.prefills:
            tokens = token_ids[w.request_id]
            on_cpu = w.kv_device == Device.CPU
            pool = self.cpu_pool if on_cpu else self.gpu_pool
            table = kv.pool(not on_cpu).table(w.request_id)
            row = len(ids)
            ids += tokens[w.start : w.end]
            positions += range(w.start, w.end)
            prefills.append(
                _Prefill(
                    (row, len(ids)), w.start, w.end, pool, pool.slots(table, w.start, w.end), table
                )
            )
            if w.request_id in prompt_logits_for:
                prompt_rows.append((w.request_id, row, len(ids), w.start))
            if w.end >= len(tokens):
                producers.append((len(ids) - 1, w.request_id))
        gpu = self._decodes(
            sb.gpu_decodes, token_ids, kv.gpu, self.gpu_pool, ids, positions, producers
        )
        cpu = self._decodes(
            sb.cpu_decodes, token_ids, kv.cpu, self.cpu_pool, ids, positions, producers
        )
        token_tensor = torch.tensor(ids, dtype=torch.long, device=self.device)
        return _Prepared(
            hidden=self.w.embed.index_select(0, token_tensor),
            positions=torch.tensor(positions, dtype=torch.long, device=self.device),
            prefills=prefills,
            gpu=gpu,
            cpu=cpu,
            producers=producers,
            prompt_rows=prompt_rows,
            index=index,
        )

    def _decodes(
        self, works, token_ids, block_pool, kv_pool: KVPool, ids, positions, producers
    ) -> _Decodes | None:
        if not works:
            return None
        start = len(ids)
        tables = [block_pool.table(w.request_id) for w in works]
        width = max(len(t) for t in tables)
        table_tensor = torch.zeros(len(works), width, dtype=torch.int32)
        block_ids, offsets = [], []
        for i, (w, table) in enumerate(zip(works, tables)):
            table_tensor[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
            position = w.context_len - 1
            ids.append(token_ids[w.request_id][position])
            positions.append(position)
            producers.append((len(ids) - 1, w.request_id))
            block_ids.append(table[position // kv_pool.block_size])
            offsets.append(position % kv_pool.block_size)
        lens = torch.tensor([w.context_len for w in works], dtype=torch.int32)
        slots = (
            torch.tensor(block_ids, device=kv_pool.device),
            torch.tensor(offsets, device=kv_pool.device),
        )
        return _Decodes(
            (start, len(ids)), table_tensor.to(kv_pool.device), lens.to(kv_pool.device), slots
        )

    # ---- timing --------------------------------------------------------------------------------
    def _span(self, lane: Lane, task: Task, layer: int | None = None, sub_batch: int | None = None):
        return _Timed(self, lane, task, layer, sub_batch)


def _decodes_only(p: _Prepared) -> bool:
    """Whether a sub-batch holds device decodes only (what `FusedDecodeLayers` runs)."""
    return p.gpu is not None and not p.prefills and p.cpu is None and not p.prompt_rows


class _Timed:
    """Times one task on a lane (wall clock; on CUDA the stream is synchronised first, except
    for the host lane, which runs on the CPU)."""

    def __init__(self, executor: Executor, lane: Lane, task: Task, layer, sub_batch):
        self.ex, self.lane, self.task = executor, lane, task
        self.layer, self.sub_batch = layer, sub_batch

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.ex._cuda and self.lane != Lane.CPU:
            torch.cuda.current_stream(self.ex.device).synchronize()
        end = time.perf_counter()
        self.ex._spans.append(
            Span(
                self.lane,
                self.task,
                self.start - self.ex._t0,
                end - self.start,
                self.layer,
                self.sub_batch,
            )
        )
        return False
