"""Lanes and spans: one vocabulary for where and when an iteration's tasks run.

The timing model (predicted, `neo_sim.timing`) and the engine's executor (measured,
`neo_engine.executor`) describe an iteration alike: spans on four lanes, each span a task of
one layer and one sub-batch. So the fidelity report compares like with like, the profiler
reads a span's fields (not a label), and the plots and Chrome traces draw either. Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Lane(StrEnum):
    """Where a task runs. Each lane runs its tasks one at a time, in issue order."""

    GPU = "gpu"  # the device's compute stream (on a CPU-only machine: the thread standing in)
    CPU = "cpu"  # the host's attention worker
    H2D = "h2d"  # copies host -> device
    D2H = "d2h"  # copies device -> host


class Task(StrEnum):
    """What a span does (per layer and sub-batch unless noted)."""

    PRE = "pre"  # pre-projection: RMSNorm, QKV, rotary (GPU)
    GPU_ATTN = "gpu-attn"  # prefill and GPU-decode attention, KV store included (GPU)
    POST = "post"  # post-projection: O, residual, RMSNorm, MLP (GPU)
    QKV = "qkv"  # q/k/v of the sub-batch's CPU decodes to the host (D2H)
    CPU_ATTN = "cpu-attn"  # CPU-decode attention, KV append and launch included (CPU)
    ATTN_OUT = "attn-out"  # the CPU attention's output back to the device (H2D)
    KV_OFFLOAD = "kv-offload"  # fresh KV of CPU-placed prefills to host memory (D2H)
    SWAP_OUT = "swap-out"  # whole-request KV to the host, before the iteration (D2H)
    SWAP_IN = "swap-in"  # whole-request KV to the device, before the iteration (H2D)
    LM_HEAD = "lm-head"  # final norm, LM head and sampling, once per iteration (GPU)
    WAIT = "wait"  # measured only: the device lane idles until the host's output is ready
    LAYER = "layer"  # measured only: pre, device decode attention and post of one layer in one
    # call (a decode-only iteration on a CPU device, neo_engine/decode_layers.py) (GPU)


@dataclass(frozen=True)
class Span:
    """One task on one lane, in seconds from the start of its iteration."""

    lane: Lane
    task: Task
    start_s: float
    duration_s: float
    layer: int | None = None
    sub_batch: int | None = None

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def label(self) -> str:
        """`sb1 cpu-attn L3`: for plots and traces."""
        parts = [] if self.sub_batch is None else [f"sb{self.sub_batch}"]
        parts.append(self.task.value)
        if self.layer is not None:
            parts.append(f"L{self.layer}")
        return " ".join(parts)


def covered_s(spans: Iterable[Span]) -> float:
    """Seconds of an iteration in which some lane ran a task or waited (the union of the
    spans' intervals): the part of an iteration its tasks account for."""
    total, end = 0.0, float("-inf")
    for span in sorted(spans, key=lambda s: s.start_s):
        if span.end_s <= end:
            continue
        total += span.end_s - max(span.start_s, end)
        end = span.end_s
    return total


def busy_by_lane(spans: Iterable[Span]) -> dict[Lane, float]:
    """Seconds each lane worked (waiting is not work)."""
    busy = dict.fromkeys(Lane, 0.0)
    for span in spans:
        if span.task != Task.WAIT:
            busy[span.lane] += span.duration_s
    return busy
