"""Timing the engine's own operators, the way `neo-profile` measures them.

`InSituBench` measures the per-layer operators (projections, attention stages, LM head): it
runs the engine's executor on synthetic plans over a few layers and reads the per-layer lane
timings the executor records. Operators then run as they do when serving, with other layers'
weights streaming through the caches between them, which a loop over one operator cannot
reproduce (measured here: a small decode attention stage took 0.04-0.05 ms in a hot loop,
0.10-0.13 ms in the engine, 0.13-0.18 ms after a cache flush).

`CopyBench` times what runs outside the layers: host<->device copies and the hand-off of a
layer's attention to the host worker thread. Both report medians of synchronised runs (CUDA
events on a GPU).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from neo_engine.config import LoadSettings
from neo_engine.kv_cache import KVPool
from neo_engine.weights import can_prepack, random_weights
from neo_engine.weights import prepack as prepack_in_place
from neo_sim.lanes import Task
from neo_sim.model import ModelSpec
from neo_sim.profile import FusedDecodeSaving, HostOverhead


def _median_time(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int,
    min_total_s: float = 0.1,
    max_repeats: int = 25,
) -> float:
    """Median of synchronised runs: at least `repeats`, more for fast ops (until ~min_total_s),
    since this machine's timing jitter is +-15% run to run."""
    fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    once = max(time.perf_counter() - t0, 1e-6)
    repeats = min(max(repeats, math.ceil(min_total_s / once)), max(repeats, max_repeats))
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_kernel(spec: ModelSpec, repeats: int = 200) -> Callable[[], float]:
    """A fixed piece of the engine's work, timed alone: one layer's QKV projection of 4 tokens
    (the model's shapes, fp32 whatever the engine's dtype: a fixed yardstick). Returns a
    function giving its median time in ms now. `neo-profile` records it in a measured profile
    (`reference_kernel_ms`) and `neo-sim validate` times it before and after each run: the
    ratios are this machine's drift since profiling and over each run; a profile measured at
    another speed biases every prediction by as much."""
    x = torch.randn(4, spec.hidden_size)
    w = torch.randn(spec.hidden_size, spec.q_size + 2 * spec.kv_size)

    def median_ms() -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(x, w)
            times.append(time.perf_counter() - started)
        return 1e3 * statistics.median(times)

    return median_ms


class CopyBench:
    """Copies between host and device, and the per-layer host hand-off."""

    def __init__(self, device: torch.device, repeats: int = 5):
        self.device = device
        self.repeats = repeats
        self._host = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self._host.shutdown()

    def time_copy(self, num_bytes: int, to_device: bool) -> float:
        cuda = self.device.type == "cuda"
        host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=cuda)
        dev = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
        if to_device:
            return _median_time(
                lambda: dev.copy_(host, non_blocking=cuda), self.device, self.repeats
            )
        return _median_time(lambda: host.copy_(dev, non_blocking=cuda), self.device, self.repeats)

    def time_launch(self) -> float:
        """Fixed cost of issuing one layer's host attention: hand a task to the host worker
        thread and wait for its result (what the executor does per sub-batch and layer)."""
        return _median_time(
            lambda: self._host.submit(lambda: None).result(),
            torch.device("cpu"),
            max(self.repeats, 50),
        )


class InSituBench:
    """Per-layer operator times read from the executor running synthetic plans."""

    def __init__(
        self,
        spec: ModelSpec,
        device: torch.device,
        repeats: int = 3,
        layers: int = 4,
        block_size: int = 16,
        host_threads: int | None = None,
        host_overlap: bool | None = None,
        prepack: bool = True,
    ):
        from neo_engine.executor import Executor

        self.spec = spec.__class__(**{**spec.to_dict(), "num_layers": min(layers, spec.num_layers)})
        self.device = device
        self.repeats = repeats
        self.block_size = block_size
        dtype, kv_dtype = getattr(torch, spec.dtype), getattr(torch, spec.kv_dtype)
        self.weights = random_weights(self.spec, dtype, device)
        if prepack and can_prepack(dtype, device):  # as the engine runs them (prepack_weights)
            prepack_in_place(self.weights)
        self.dtype, self.kv_dtype = dtype, kv_dtype
        self.host_threads = host_threads
        self.host_overlap = host_overlap
        self._executor = None
        self._fused = None  # the executor's `FusedDecodeLayers`; None where it does not fuse
        self._capacity = 0
        self._Executor = Executor

    def _executor_for(self, blocks: int):
        if self._executor is None or blocks > self._capacity:
            if self._executor is not None:
                self._executor.close()
            self._capacity = max(blocks, 2 * self._capacity, 64)
            gpu = KVPool(self.spec, self._capacity, self.block_size, self.kv_dtype, self.device)
            cpu = KVPool(  # pinned beside a GPU, as the engine's (and zeroed off this thread)
                self.spec,
                self._capacity,
                self.block_size,
                self.kv_dtype,
                torch.device("cpu"),
                pin=self.device.type == "cuda",
            )
            self._executor = self._Executor(
                self.spec,
                self.weights,
                self.device,
                gpu,
                cpu,
                self.host_threads,
                self.host_overlap,
            )
            # The stages are timed one by one (PRE, GPU_ATTN, POST), as the operators are
            # priced; the fused layers run only where `fused_decode` asks for them.
            self._fused = self._executor.fused_layers
            self._executor.fused_layers = None
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()

    def _run(self, plan, lengths: dict[int, int], on_gpu: dict[int, bool]) -> dict[Task, float]:
        """Per-layer time of each task (seconds per layer): in each run, the mean over the
        layers (an iteration sums its layers, so their mean is what it pays; on this VM the
        per-layer times are right-skewed: their median read ~5% under the mean in an engine
        run, 2026-12-04, ad hoc), then the median over runs (a run that something else
        interrupted does not move it)."""
        from neo_sim.scheduler.kv import KVManager, blocks_for

        need = sum(blocks_for(n, self.block_size) for n in lengths.values())
        executor = self._executor_for(need)
        kv = KVManager(self._capacity, self._capacity, self.block_size)
        for rid, n in lengths.items():
            kv.pool(on_gpu[rid]).grow(rid, n)
        tokens = {rid: [1 + (rid + i) % 200 for i in range(n)] for rid, n in lengths.items()}
        executor.run(plan, tokens, kv)  # warm-up
        runs: dict[Task, list[float]] = {}
        for _ in range(self.repeats):
            by_task: dict[Task, list[float]] = {}
            for span in executor.run(plan, tokens, kv).spans:
                by_task.setdefault(span.task, []).append(span.duration_s)
            for task, values in by_task.items():
                per_layer = statistics.fmean(values) if task != Task.LM_HEAD else sum(values)
                runs.setdefault(task, []).append(per_layer)
        return {task: statistics.median(v) for task, v in runs.items()}

    def decode(self, batch: int, context_len: int, on_gpu: bool = True) -> dict[Task, float]:
        """A sequential plan of `batch` decodes over `context_len` tokens each."""
        from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, SubBatch

        work = tuple(DecodeWork(i, context_len) for i in range(batch))
        sb = SubBatch(gpu_decodes=work) if on_gpu else SubBatch(cpu_decodes=work)
        return self._run(
            Plan(1, Mode.SEQUENTIAL, (sb,)),
            dict.fromkeys(range(batch), context_len),
            dict.fromkeys(range(batch), on_gpu),
        )

    def fused_decode(self, batch: int, context_len: int) -> float | None:
        """Per-layer seconds of `decode(batch, context_len)` run as the engine runs a
        decode-only iteration on this device, each layer in one call (`Task.LAYER`); None
        where the engine does not fuse (another device, dtype or build)."""
        self._executor_for(0)
        if self._fused is None:
            return None
        self._executor.fused_layers = self._fused
        try:
            return self.decode(batch, context_len)[Task.LAYER]
        finally:
            self._executor.fused_layers = None

    def prefill(self, prompt_len: int) -> dict[Task, float]:
        """A sequential plan of one whole prompt."""
        from neo_sim.scheduler.plan import Mode, Plan, PrefillWork, SubBatch

        plan = Plan(1, Mode.SEQUENTIAL, (SubBatch(prefills=(PrefillWork(0, 0, prompt_len),)),))
        return self._run(plan, {0: prompt_len}, {0: True})

    # per-layer operators, in the profile's terms
    def time_linear(self, num_tokens: int) -> float:
        if num_tokens <= 256:  # a batch of decodes of short context: linear dominates
            st = self.decode(num_tokens, self.block_size)
        else:
            st = self.prefill(num_tokens)
        return st[Task.PRE] + st[Task.POST]

    def time_prefill_attn(self, prompt_len: int) -> float:
        return self.prefill(prompt_len)[Task.GPU_ATTN]

    def time_gpu_decode_attn(self, batch: int, context_len: int) -> float:
        return self.decode(batch, context_len)[Task.GPU_ATTN]

    def time_cpu_decode_attn(self, batch: int, context_len: int) -> float:
        return self.decode(batch, context_len, on_gpu=False)[Task.CPU_ATTN]

    def time_lm_head(self, num_seqs: int) -> float:
        """The LM head GEMM and the greedy sampling of its logits, as the operator covers them
        (the engine samples after the executor's forward pass)."""
        return self.decode(num_seqs, self.block_size)[Task.LM_HEAD] + self.time_sampling(num_seqs)

    def time_sampling(self, num_seqs: int) -> float:
        """Median seconds of `sample_rows` choosing greedy tokens from num_seqs rows of logits
        (float32 on the profiled device, as the executor hands them over)."""
        from neo_engine.sampling import SamplingParams, sample_rows

        logits = torch.randn(num_seqs, self.spec.vocab_size, device=self.device)
        params = [SamplingParams(temperature=0)] * num_seqs
        generators = [None] * num_seqs

        def sampling() -> object:
            return sample_rows(logits, params, generators)

        return _median_time(sampling, self.device, self.repeats)


HOST_OVERHEAD_BATCHES = (1, 4, 16, 64)  # decode batch sizes the engine's host work is read at


def measure_host_overhead(
    load: LoadSettings,
    host_overlap: str = "auto",
    batches: tuple[int, ...] = HOST_OVERHEAD_BATCHES,
    steps: int = 8,
) -> HostOverhead:
    """The engine's own work per step beyond the operators a profile times
    (`IterationLog.untimed_s`: scheduling, bookkeeping and detokenizing between forward
    passes, and the forward pass's time outside its timed tasks: embedding lookup, building
    the inputs, dispatch between layers) as `HostOverhead(fixed_s, per_seq_s)`. Priced without
    the forward pass's share (`HOST_OVERHEAD_ACCOUNTING` 1), the fidelity workload's decode
    steps on the `small` preset spent ~0.45 ms (4-6%) outside any timed task and its
    prefill-bearing ones ~0.7 ms (2026-12-05, ad hoc), one reason neo-sim's saturated
    throughput read high in most fidelity runs (docs/fidelity.md). Here: a real `LLMEngine`
    on the profiled model (`load`) decodes greedy requests at each of `batches`, `steps`
    decode-only steps each; the median of that work per batch size, then a least-squares line
    (terms clamped at 0). gpu-only plans with ample GPU KV: NEO's pricing of its host
    candidates, which the simulator runs itself, is not in it."""
    from neo_engine.config import EngineConfig
    from neo_engine.engine import LLMEngine
    from neo_engine.sampling import SamplingParams
    from neo_sim.scheduler.kv import blocks_for

    prompt_len, new_tokens = 8, steps + 2  # the first step prefills
    block_size = 16
    blocks = max(batches) * blocks_for(prompt_len + new_tokens, block_size) + 8
    engine = LLMEngine(
        EngineConfig.of(
            load.model,
            device=load.device,
            dtype=load.dtype,
            kv_dtype=load.kv_dtype,
            seed=load.seed,
            policy="gpu-only",
            max_model_len=prompt_len + new_tokens,
            host_overlap=host_overlap,
            gpu_kv_blocks=blocks,
            cpu_kv_blocks=8,
            block_size=block_size,
        )
    )
    try:
        engine.warm_up(build_gemms=False)  # its decode steps run no GEMM past 64 rows
        engine.keep_iteration_log = True
        params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
        points = []
        for batch in batches:
            first = len(engine.iterations)
            for i in range(batch):
                engine.add_request([1 + (i + j) % 100 for j in range(prompt_len)], params)
            while engine.has_unfinished():
                engine.step()
            host = [
                it.untimed_s
                for it in engine.iterations[first:]
                if it.plan.num_seqs == batch and not it.plan.prefills
            ]
            if host:
                points.append((batch, statistics.median(host)))
    finally:
        engine.close()
    if not points:
        raise RuntimeError("the engine ran no decode-only step to read its host work from")
    return HostOverhead(*_per_sequence_line(points))


FUSED_SAVING_BATCHES = (1, 4, 16, 64)  # decode batch sizes the fused layers' saving is read at


def measure_fused_decode_saving(
    bench: InSituBench,
    batches: tuple[int, ...] = FUSED_SAVING_BATCHES,
    rounds: int = 3,
) -> FusedDecodeSaving | None:
    """What the engine saves per layer where it runs a decode-only iteration's layers in one
    call each (`decode_layers.FusedDecodeLayers`) against the stages one by one, as the
    profile's operators are timed (`neo_sim.profile.FusedDecodeSaving`): at each of
    `batches` decodes of a block's tokens (the `linear` operator's decode points), the
    stages' sum less the fused layer's time, each the median of `rounds` runs taken in
    turn; then a least-squares line (terms clamped at 0). None where the engine does not fuse
    (`InSituBench.fused_decode`)."""
    context = bench.block_size
    if bench.fused_decode(1, context) is None:  # also the fused layers' first, untimed run
        return None
    points = []
    for batch in batches:
        staged, fused = [], []
        for _ in range(rounds):
            stages = bench.decode(batch, context)
            staged.append(stages[Task.PRE] + stages[Task.GPU_ATTN] + stages[Task.POST])
            fused.append(bench.fused_decode(batch, context))
        points.append((batch, statistics.median(staged) - statistics.median(fused)))
    return FusedDecodeSaving(*_per_sequence_line(points))


def _per_sequence_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (fixed, per sequence) seconds through (sequences, seconds) points, both
    clamped at 0."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    slope = max(0.0, slope)
    return max(0.0, mean_y - slope * mean_x), slope
