"""The scheduler shared by the simulator and the engine. Pure Python: no torch, no simpy.

Policies, by name (`make_policy`):
- `gpu-only`: vLLM-like FCFS continuous batching with swap preemption (NEO's baseline);
- `vllm-256`, `vllm-512`: the same with chunked prefill at that token budget;
- `neo`: asymmetric pipelining + load-aware scheduling;
- `symmetric`: two equal sub-batches (strawman);
- `full-offload`: all decode attention and KV on the CPU (FastDecode-like strawman).
"""

from __future__ import annotations

import dataclasses

from neo_sim.costmodel import CostModel
from neo_sim.errors import NeoError
from neo_sim.scheduler.base import Policy, SchedulerConfig
from neo_sim.scheduler.gpu_only import GpuOnlyPolicy
from neo_sim.scheduler.neo import NeoPolicy
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, SubBatch, Swap
from neo_sim.scheduler.request import Device, Request, RequestState
from neo_sim.scheduler.strawmen import FullOffloadPolicy, SymmetricPolicy

POLICIES: dict[str, tuple[type[Policy], int]] = {
    "gpu-only": (GpuOnlyPolicy, 0),
    "vllm-256": (GpuOnlyPolicy, 256),
    "vllm-512": (GpuOnlyPolicy, 512),
    "neo": (NeoPolicy, 0),
    "symmetric": (SymmetricPolicy, 0),
    "full-offload": (FullOffloadPolicy, 0),
}


def make_policy(name: str, config: SchedulerConfig, cost: CostModel) -> Policy:
    """Build the policy `name` over `config` and `cost`; NeoError for unknown names."""
    try:
        cls, chunk = POLICIES[name]
    except KeyError:
        raise NeoError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}") from None
    if chunk:
        config = dataclasses.replace(config, chunked_prefill_tokens=chunk)
    policy = cls(config, cost)
    policy.name = name
    return policy


__all__ = [
    "POLICIES",
    "Policy",
    "SchedulerConfig",
    "make_policy",
    "GpuOnlyPolicy",
    "NeoPolicy",
    "SymmetricPolicy",
    "FullOffloadPolicy",
    "Plan",
    "SubBatch",
    "PrefillWork",
    "DecodeWork",
    "Swap",
    "Mode",
    "Request",
    "RequestState",
    "Device",
]
