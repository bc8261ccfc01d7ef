"""The host's memory read bandwidth, sampled through a run: a drift probe that tracks the engine.

A small decode step reads every weight from DRAM, so its time follows the memory bandwidth
the machine gives it. On the build VMs that bandwidth is not constant:
`benchmarks/results/bandwidth_drift.json` (AMD EPYC, 2 vCPUs) saw it range over 18-64 GB/s
within four minutes, with batch-1 decode steps against their prediction correlating 0.80
with its inverse and 0.08 with the compute-bound, cache-resident reference kernel
(`opbench.reference_kernel`). `neo-profile` records the bandwidth at profiling
time (`read_gbs`) and `neo-sim validate` samples it through every engine run
(`BandwidthTrace`), so that each iteration can be judged against the machine state it ran in.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

import torch

from neo_engine.host_threads import host_work

PROBE_BYTES = 256 * 2**20  # several times any L3 these VMs have: the sum streams from DRAM
PROBE_PASSES = 2  # the faster of two passes (the first can pay for page-table walks)
SAMPLE_EVERY_S = 5.0  # between engine steps: ~15 ms per probe, 0.3% of a run's wall time


class ReadProbe:
    """Times `torch.sum` over a buffer far larger than the caches: GB/s read, now. One
    probe costs ~2 x 5-8 ms here. `beside_gpu`: the calling thread drives a GPU, so the
    sums run on passing threads (`host_threads.host_work`)."""

    def __init__(
        self, num_bytes: int = PROBE_BYTES, passes: int = PROBE_PASSES, beside_gpu: bool = False
    ):
        self.beside_gpu = beside_gpu
        self.buffer = host_work(lambda: torch.ones(num_bytes // 4, dtype=torch.float32), beside_gpu)
        self.passes = passes

    def read_gbs(self) -> float:
        return host_work(self._read_gbs, self.beside_gpu)

    def _read_gbs(self) -> float:
        best = float("inf")
        for _ in range(self.passes):
            started = time.perf_counter()
            self.buffer.sum()
            best = min(best, time.perf_counter() - started)
        return self.buffer.numel() * 4 / best / 1e9


class BandwidthTrace:
    """Bandwidth samples `(clock time s, GB/s)` through a run: one at its start (unless taken
    before it), one whenever
    `every_s` of `clock` passed since the last (`maybe_sample`, called between engine steps),
    one in each idle wait long enough (`sample_while_idle`), and one at its end. Sampling
    between steps adds ~15 ms per `every_s` to the run's wall time (0.3% at 5 s); an idle
    wait costs nothing."""

    def __init__(
        self,
        clock: Callable[[], float],
        every_s: float = SAMPLE_EVERY_S,
        probe: ReadProbe | None = None,
        pause: Callable[[float], None] | None = None,
    ):
        """`pause(seconds)`, if given, is told how long each sample between steps took, so
        that the run's clock can leave it out (`LLMEngine.pause_clock`): the probe is the
        measurement's own work, not the engine's."""
        self.clock = clock
        self.every_s = every_s
        self.probe = probe or ReadProbe()
        self.pause = pause
        self.samples: list[tuple[float, float]] = []

    def sample(self, at: float | None = None) -> None:
        """One sample, stamped with the clock after it (or with `at`)."""
        gbs = self.probe.read_gbs()
        self.samples.append((self.clock() if at is None else at, gbs))

    def maybe_sample(self) -> None:
        if not self.samples or self.clock() - self.samples[-1][0] >= self.every_s:
            started = time.perf_counter()
            self.sample()
            if self.pause is not None:
                self.pause(time.perf_counter() - started)

    def sample_while_idle(self, idle_s: float) -> None:
        """Before an idle wait of `idle_s`: sample if the wait is several probes long and the
        last sample is over a second old (the caller then waits for what is left)."""
        if idle_s > 0.1 and (not self.samples or self.clock() - self.samples[-1][0] >= 1.0):
            self.sample()

    def at(self, times: Sequence[float]) -> list[float]:
        """The sample nearest in time to each of `times` (same clock): the bandwidth each
        iteration ran at, as near as the trace knows it."""
        if not self.samples:
            return [float("nan")] * len(times)
        stamps = [t for t, _ in self.samples]
        values = [v for _, v in self.samples]
        nearest = []
        for t in times:
            i = bisect_left(stamps, t)
            if i == len(stamps) or (i and t - stamps[i - 1] <= stamps[i] - t):
                i -= 1
            nearest.append(values[i])
        return nearest


def in_state(values: Sequence[float], reference: float, tolerance: float) -> list[bool]:
    """Which of `values` lie within `tolerance` (relative) of `reference`."""
    return [abs(v / reference - 1) <= tolerance for v in values]
