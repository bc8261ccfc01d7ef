"""Plan: what one iteration runs, as decided by a policy's `step()`.

A plan has one sub-batch (sequential mode; fused mode when that one sub-batch runs CPU decodes
beside GPU work, APEX's asynchronous overlap) or two (asymmetric pipelining: sub-batch 0
carries prefills and GPU decodes, sub-batch 1 CPU decodes only, with some CPU decodes possibly
in sub-batch 0 too). Timing model and executor run every mode the same way: sub-batch by
sub-batch, each layer's host attention overlapping whatever device work follows it. A plan
also lists the swaps to perform before the iteration and the scheduler's predicted duration.
Plans are frozen and compare by value: the simulator and the engine must produce equal plans
from equal inputs.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from neo_sim.scheduler.request import Device, Request


class Mode(StrEnum):
    SEQUENTIAL = "sequential"  # one sub-batch (GPU work only, or CPU decodes only)
    PIPELINED = "pipelined"  # two sub-batches, asymmetric pipelining (NEO)
    FUSED = "fused"  # one sub-batch: CPU decodes' host attention beside its GPU attention (APEX)


@dataclass(frozen=True)
class PrefillWork:
    """Compute tokens [start, end) of a request whose KV is written to `kv_device`."""

    request_id: int
    start: int
    end: int
    kv_device: Device = Device.GPU

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


class DecodeWork(NamedTuple):
    """One decode step attending over `context_len` tokens (the new token included).

    A named tuple, not a frozen dataclass: the scheduler makes one per decode per iteration
    (NEO's greedy step prices a hundred), and a tuple is built in a third of the time. It is
    as immutable and compares by value; `Plan.record()` writes it as a mapping."""

    request_id: int
    context_len: int


# `new_tuple(DecodeWork, (request_id, context_len))` is `DecodeWork(request_id, context_len)`
# in half the time (the named tuple's own `__new__` is a Python call): for the loops that make
# one per resident per iteration.
new_tuple = tuple.__new__


def decode_works(requests: Iterable[Request]) -> list[DecodeWork]:
    """`DecodeWork(r.request_id, r.seq_len)` of each of `requests`, built by `new_tuple`: the
    scheduler lists every resident's decode every iteration."""
    return [new_tuple(DecodeWork, (r.request_id, r.prompt_len + r.num_generated)) for r in requests]


def context_tokens(decodes: Iterable[DecodeWork]) -> int:
    """Total context of `decodes` (the decode attention's tokens), summed at C speed: the
    scheduler and the timing model sum every iteration's decodes."""
    return sum(map(_CONTEXT_LEN, decodes))


def request_ids_of(decodes: Iterable[DecodeWork]) -> list[int]:
    return list(map(_REQUEST_ID, decodes))


_REQUEST_ID, _CONTEXT_LEN = operator.itemgetter(0), operator.itemgetter(1)  # DecodeWork fields


@dataclass(frozen=True)
class SubBatch:
    prefills: tuple[PrefillWork, ...] = ()
    gpu_decodes: tuple[DecodeWork, ...] = ()
    cpu_decodes: tuple[DecodeWork, ...] = ()

    @property
    def num_tokens(self) -> int:
        """Iteration width: tokens through the linear layers."""
        return (
            sum(p.num_tokens for p in self.prefills) + len(self.gpu_decodes) + len(self.cpu_decodes)
        )

    @property
    def num_seqs(self) -> int:
        return len(self.prefills) + len(self.gpu_decodes) + len(self.cpu_decodes)

    @property
    def request_ids(self) -> tuple[int, ...]:
        return (
            *(p.request_id for p in self.prefills),
            *request_ids_of(self.gpu_decodes),
            *request_ids_of(self.cpu_decodes),
        )

    @property
    def decodes_only(self) -> bool:
        return decodes_only(self.prefills, self.gpu_decodes, self.cpu_decodes)

    def __bool__(self) -> bool:
        return bool(self.prefills or self.gpu_decodes or self.cpu_decodes)


def decodes_only(
    prefills: Sequence[PrefillWork],
    gpu_decodes: Sequence[DecodeWork],
    cpu_decodes: Sequence[DecodeWork],
) -> bool:
    """Device decodes and nothing else. Alone in its plan, such a sub-batch is what an engine
    on a CPU device runs one layer per call (neo_engine/decode_layers.py), which saves the cost
    model's `fused_decode_saving` a layer (`SubBatch.decodes_only`, and the scheduler's
    estimate of a sub-batch under construction)."""
    return bool(gpu_decodes) and not prefills and not cpu_decodes


@dataclass(frozen=True)
class Swap:
    """Move a request's KV between pools before the iteration: copy src blocks to dst blocks."""

    request_id: int
    num_tokens: int
    src_blocks: tuple[int, ...]
    dst_blocks: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    step: int
    mode: Mode
    sub_batches: tuple[SubBatch, ...]
    swap_out: tuple[Swap, ...] = ()  # GPU -> CPU
    swap_in: tuple[Swap, ...] = ()  # CPU -> GPU
    recomputed: tuple[int, ...] = ()  # preempted by dropping KV: back to waiting
    predicted_s: float = 0.0  # the scheduler's estimate of the iteration's duration
    slack_s: tuple[float, ...] = ()  # per-layer slack of each sub-batch (pipelined plans)
    forced_ids: tuple[int, ...] = ()  # CPU decodes included by the starvation bound

    @property
    def is_empty(self) -> bool:
        """No request computes this iteration (it may still move or drop KV)."""
        return not any(self.sub_batches)

    @property
    def changes_books(self) -> bool:
        """The plan moved or dropped some KV, work or not: the next step sees a new state."""
        return bool(self.swap_out or self.swap_in or self.recomputed)

    @property
    def host_blocks_overwritten(self) -> set[int]:
        """Host blocks that a swap in of this plan reads and a swap out of it writes: the
        executor copies every swap out, then every swap in, so such a block would hand the
        swap in another request's KV. Always empty (the executor refuses a plan with any)."""
        if not (self.swap_out and self.swap_in):
            return set()
        written = {b for s in self.swap_out for b in s.dst_blocks}
        return {b for s in self.swap_in for b in s.src_blocks if b in written}

    @property
    def num_seqs(self) -> int:
        return sum(sb.num_seqs for sb in self.sub_batches)

    @property
    def num_tokens(self) -> int:
        return sum(sb.num_tokens for sb in self.sub_batches)

    @property
    def request_ids(self) -> tuple[int, ...]:
        return tuple(rid for sb in self.sub_batches for rid in sb.request_ids)

    @property
    def prefills(self) -> tuple[PrefillWork, ...]:
        return tuple(p for sb in self.sub_batches for p in sb.prefills)

    @property
    def gpu_decodes(self) -> tuple[DecodeWork, ...]:
        return tuple(d for sb in self.sub_batches for d in sb.gpu_decodes)

    @property
    def cpu_decodes(self) -> tuple[DecodeWork, ...]:
        return tuple(d for sb in self.sub_batches for d in sb.cpu_decodes)

    def record(self) -> dict[str, Any]:
        """The plan as JSON-ready mappings (`dataclasses.asdict` keeps named tuples as
        tuples, which JSON would write as lists)."""
        data = dataclasses.asdict(self)
        for sb, out in zip(self.sub_batches, data["sub_batches"]):
            out["gpu_decodes"] = [d._asdict() for d in sb.gpu_decodes]
            out["cpu_decodes"] = [d._asdict() for d in sb.cpu_decodes]
        return data

    def describe(self) -> str:
        """One line for logs and the `plan` demo."""
        parts = []
        for i, sb in enumerate(self.sub_batches):
            gp = sum(1 for p in sb.prefills if p.kv_device == Device.GPU)
            parts.append(
                f"sb{i}[prefill {gp} gpu + {len(sb.prefills) - gp} cpu "
                f"({sum(p.num_tokens for p in sb.prefills)} tok), "
                f"gpu-decode {len(sb.gpu_decodes)}, cpu-decode {len(sb.cpu_decodes)}]"
            )
        swaps = f", swap out {len(self.swap_out)} / in {len(self.swap_in)}"
        return (
            f"step {self.step} {self.mode.value}: "
            + " ".join(parts)
            + swaps
            + f", predicted {self.predicted_s * 1e3:.2f} ms"
        )
