"""Timing the engine's own operators, one function per cost-model operator.

Each `time_*` runs the real engine code (`neo_engine.layers`, `.attention`, the host kernel,
pool copies) on one layer of the model with random weights and data of the right shapes, and
returns the median seconds of `repeats` synchronised runs after a warm-up. On CUDA, CUDA events
time the device; the host kernel and copies are timed by wall clock around a synchronisation.

`InSituBench` measures the per-layer operators a second way, the one profiles use: it runs the
engine's executor on synthetic plans over a few layers and reads the per-layer lane timings the
executor records. Operators then run as they do when serving, with other layers' weights
streaming through the caches between them, which a loop over one operator cannot reproduce
(measured here: a small decode attention stage took 0.05 ms in a hot loop, 0.10 ms in the
engine, 0.13-0.18 ms after a cache flush).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from neo_engine.attention import device_decode_stage, host_decode_stage, prefill_stage
from neo_engine.kv_cache import KVPool
from neo_engine.layers import Rotary, linear, post_projection, pre_projection, rms_norm
from neo_engine.weights import random_weights
from neo_sim.model import ModelSpec


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


@dataclass
class OpBench:
    """One layer of `spec` on `device`, ready to time every operator."""

    spec: ModelSpec
    device: torch.device
    repeats: int = 5
    block_size: int = 16
    host_threads: int | None = None

    def __post_init__(self) -> None:
        one_layer = self.spec.__class__(**{**self.spec.to_dict(), "num_layers": 1})
        self.dtype = getattr(torch, self.spec.dtype)
        self.kv_dtype = getattr(torch, self.spec.kv_dtype)
        self.w = random_weights(one_layer, self.dtype, self.device)
        self.layer = self.w.layers[0]
        self.rotary = Rotary(self.spec, self.device)
        self.scale = self.spec.head_dim**-0.5
        self._pools: dict[tuple[str, int], KVPool] = {}
        self._host = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        self._host.shutdown()

    def _time(self, fn) -> float:
        return _median_time(fn, self.device, self.repeats)

    # ---- per layer ---------------------------------------------------------------------------
    def time_linear(self, num_tokens: int) -> float:
        s = self.spec
        x = torch.randn(num_tokens, s.hidden_size, device=self.device, dtype=self.dtype)
        attn = torch.randn(num_tokens, s.q_size, device=self.device, dtype=self.dtype)
        positions = torch.arange(num_tokens, device=self.device) % s.max_position_embeddings

        def run():
            pre_projection(s, self.layer, self.rotary, x, positions)
            post_projection(s, self.layer, attn, x)

        return self._time(run)

    def time_prefill_attn(self, prompt_len: int) -> float:
        """Store a prompt's K/V in the paged device pool, then attend (the engine's stage)."""
        s = self.spec
        pool, _, _ = self._decode_inputs(True, 1, prompt_len)
        table = list(range(-(-prompt_len // self.block_size)))
        slots = pool.slots(table, 0, prompt_len)
        q = torch.randn(prompt_len, s.num_heads, s.head_dim, device=self.device, dtype=self.dtype)
        k = torch.randn(
            prompt_len, s.num_kv_heads, s.head_dim, device=self.device, dtype=self.dtype
        )
        return self._time(
            lambda: prefill_stage(pool, 0, slots, table, 0, q, k, k, self.scale, self.device)
        )

    def _decode_inputs(self, on_device: bool, batch: int, context_len: int):
        """A one-layer pool holding `batch` requests of `context_len` tokens, scattered."""
        blocks_per = -(-context_len // self.block_size)
        needed = batch * blocks_per
        key = ("device" if on_device else "host", needed)
        pool = self._pools.get(key)
        if pool is None:
            self._pools.clear()  # one pool at a time: memory
            device = self.device if on_device else torch.device("cpu")
            one_layer = self.spec.__class__(**{**self.spec.to_dict(), "num_layers": 1})
            pool = KVPool(one_layer, needed, self.block_size, self.kv_dtype, device)
            pool.k.normal_()
            pool.v.normal_()
            self._pools[key] = pool
        gen = torch.Generator().manual_seed(batch * 7919 + context_len)
        tables = torch.randperm(needed, generator=gen).view(batch, blocks_per).int().contiguous()
        lens = torch.full((batch,), context_len, dtype=torch.int32)
        return pool, tables.to(pool.device), lens.to(pool.device)

    def _decode_stage_inputs(self, on_device: bool, batch: int, context_len: int):
        s = self.spec
        pool, tables, lens = self._decode_inputs(on_device, batch, context_len)
        device = pool.device
        position = context_len - 1
        block_rows = tables[:, position // self.block_size].long()
        slots = (block_rows, torch.full((batch,), position % self.block_size, device=device))
        dev = self.device if on_device else torch.device("cpu")
        q = torch.randn(batch, s.num_heads, s.head_dim, device=dev, dtype=self.dtype)
        k = torch.randn(batch, s.num_kv_heads, s.head_dim, device=dev, dtype=self.dtype)
        return pool, tables, lens, slots, q, k

    def time_gpu_decode_attn(self, batch: int, context_len: int) -> float:
        pool, tables, lens, slots, q, k = self._decode_stage_inputs(True, batch, context_len)
        return self._time(
            lambda: device_decode_stage(pool, 0, slots, tables, lens, q, k, k, self.scale)
        )

    def time_cpu_decode_attn(self, batch: int, context_len: int) -> float:
        pool, tables, lens, slots, q, k = self._decode_stage_inputs(False, batch, context_len)
        threads = self.host_threads or torch.get_num_threads()
        return _median_time(
            lambda: host_decode_stage(pool, 0, slots, tables, lens, q, k, k, self.scale, threads),
            torch.device("cpu"),
            self.repeats,
        )

    def time_copy(self, num_bytes: int, to_device: bool) -> float:
        cuda = self.device.type == "cuda"
        host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=cuda)
        dev = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
        if to_device:
            return self._time(lambda: dev.copy_(host, non_blocking=cuda))
        return self._time(lambda: host.copy_(dev, non_blocking=cuda))

    def time_launch(self) -> float:
        """Fixed cost of issuing one layer's host attention: hand a task to the host worker
        thread and wait for its result (what the executor does per sub-batch and layer)."""
        return _median_time(
            lambda: self._host.submit(lambda: None).result(),
            torch.device("cpu"),
            max(self.repeats, 50),
        )

    # ---- per iteration -----------------------------------------------------------------------
    def time_lm_head(self, num_seqs: int) -> float:
        s = self.spec
        x = torch.randn(num_seqs, s.hidden_size, device=self.device, dtype=self.dtype)

        def run():
            logits = linear(rms_norm(x, self.w.norm, s.rms_norm_eps), self.w.lm_head).float()
            torch.argmax(logits, dim=-1).cpu()

        return self._time(run)


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
    ):
        from neo_engine.executor import Executor

        self.spec = spec.__class__(**{**spec.to_dict(), "num_layers": min(layers, spec.num_layers)})
        self.device = device
        self.repeats = repeats
        self.block_size = block_size
        dtype, kv_dtype = getattr(torch, spec.dtype), getattr(torch, spec.kv_dtype)
        self.weights = random_weights(self.spec, dtype, device)
        self.dtype, self.kv_dtype = dtype, kv_dtype
        self.host_threads = host_threads
        self._executor = None
        self._capacity = 0
        self._Executor = Executor

    def _executor_for(self, blocks: int):
        if self._executor is None or blocks > self._capacity:
            if self._executor is not None:
                self._executor.close()
            self._capacity = max(blocks, 2 * self._capacity, 64)
            gpu = KVPool(self.spec, self._capacity, self.block_size, self.kv_dtype, self.device)
            cpu = KVPool(
                self.spec, self._capacity, self.block_size, self.kv_dtype, torch.device("cpu")
            )
            self._executor = self._Executor(
                self.spec, self.weights, self.device, gpu, cpu, self.host_threads
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()

    def _run(self, plan, lengths: dict[int, int], on_gpu: dict[int, bool]) -> dict[str, float]:
        """Median over repeats of the per-layer time of each stage (seconds per layer)."""
        from neo_sim.scheduler.kv import KVManager, blocks_for

        need = sum(blocks_for(n, self.block_size) for n in lengths.values())
        executor = self._executor_for(need)
        kv = KVManager(self._capacity, self._capacity, self.block_size)
        for rid, n in lengths.items():
            kv.pool(on_gpu[rid]).grow(rid, n)
        tokens = {rid: [1 + (rid + i) % 200 for i in range(n)] for rid, n in lengths.items()}
        executor.run(plan, tokens, kv)  # warm-up
        runs: dict[str, list[float]] = {}
        for _ in range(self.repeats):
            stages: dict[str, list[float]] = {}
            for e in executor.run(plan, tokens, kv).events:
                stage = e.name.split(" L")[0].split(" ", 1)[-1]
                stages.setdefault(stage, []).append(e.duration_s)
            for stage, values in stages.items():
                per_layer = statistics.median(values) if stage != "lm-head" else sum(values)
                runs.setdefault(stage, []).append(per_layer)
        return {stage: statistics.median(v) for stage, v in runs.items()}

    def decode(self, batch: int, context_len: int, on_gpu: bool = True) -> dict[str, float]:
        """A sequential plan of `batch` decodes over `context_len` tokens each."""
        from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, SubBatch

        work = tuple(DecodeWork(i, context_len) for i in range(batch))
        sb = SubBatch(gpu_decodes=work) if on_gpu else SubBatch(cpu_decodes=work)
        return self._run(
            Plan(1, Mode.SEQUENTIAL, (sb,)),
            dict.fromkeys(range(batch), context_len),
            dict.fromkeys(range(batch), on_gpu),
        )

    def prefill(self, prompt_len: int) -> dict[str, float]:
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
        return st["pre"] + st["post"]

    def time_prefill_attn(self, prompt_len: int) -> float:
        return self.prefill(prompt_len)["attn"]

    def time_gpu_decode_attn(self, batch: int, context_len: int) -> float:
        return self.decode(batch, context_len)["attn"]

    def time_cpu_decode_attn(self, batch: int, context_len: int) -> float:
        return self.decode(batch, context_len, on_gpu=False)["cpu-attn"]

    def time_lm_head(self, num_seqs: int) -> float:
        return self.decode(num_seqs, self.block_size)["lm-head"]
