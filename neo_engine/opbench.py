"""Timing the engine's own operators, one function per cost-model operator.

Each `time_*` runs the real engine code (`neo_engine.layers`, `.attention`, the host kernel,
pool copies) on one layer of the model with random weights and data of the right shapes, and
returns the median seconds of `repeats` synchronised runs after a warm-up. On CUDA, CUDA events
time the device; the host kernel and copies are timed by wall clock around a synchronisation.
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
