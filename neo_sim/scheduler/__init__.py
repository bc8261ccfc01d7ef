"""The scheduler shared by the simulator and the engine. Pure Python: no torch, no simpy.

Policies, by name (`make_policy`; each policy class lists its names in `variants`):
- `gpu-only`: vLLM-like FCFS continuous batching with swap preemption (NEO's baseline);
- `vllm-256`, `vllm-512`: the same with chunked prefill at that token budget;
- `neo`: asymmetric pipelining + load-aware scheduling (`neo-unbounded`: no starvation bound);
- `apex`: APEX's fused batches (host attention beside GPU attention, no split), NEO's
  pipelining or GPU-only, whichever predicts more requests/s per iteration;
- `adaptive`: ours: APEX's choice with host sets sized by predicted requests/s, host residents
  served before new host prompts while the host lags, within a TPOT SLO when one is set, and
  prompts in 1024-token chunks where they buy GPU KV (`adaptive-whole`: whole prompts);
- `symmetric`: two equal sub-batches (strawman);
- `full-offload`: all decode attention and KV on the CPU (FastDecode-like strawman).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from neo_sim.costmodel import CostModel
from neo_sim.errors import NeoError
from neo_sim.scheduler.base import Policy, SchedulerConfig
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, SubBatch, Swap
from neo_sim.scheduler.request import Device, Request, RequestState


def _discover() -> dict[str, tuple[type[Policy], dict]]:
    """Every policy of this package: each Policy subclass names its variants (a name and the
    config settings it fixes) in `variants`. A new policy is one module here, no list to edit."""
    classes: list[type[Policy]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in vars(module).values():
            own = isinstance(cls, type) and issubclass(cls, Policy) and "variants" in vars(cls)
            if own and cls.__module__ == module.__name__:
                classes.append(cls)
    found: dict[str, tuple[type[Policy], dict]] = {}
    for cls in sorted(classes, key=lambda c: c.listing_rank):  # stable: module order on ties
        for name, fixed in cls.variants.items():
            if name in found:
                raise TypeError(f"policy name {name!r} is defined twice")
            found[name] = (cls, dict(fixed))
    return found


POLICIES: dict[str, tuple[type[Policy], dict]] = _discover()
# Names that were policies once, and what they are called now (2026-12-06: adaptive's chunked
# form took its name; the whole-prompt form is adaptive-whole).
RENAMED = {"adaptive-chunked": "adaptive"}


def require_policy(name: str) -> None:
    """NeoError unless `name` is a policy: naming the policies, or a renamed one's new name."""
    if name in POLICIES:
        return
    if name in RENAMED:
        raise NeoError(f"policy {name!r} is now named {RENAMED[name]!r}")
    raise NeoError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")


def policy_config(name: str, config: SchedulerConfig) -> SchedulerConfig:
    """`config` with the settings the policy `name` fixes (vllm-256: chunked prefill), as its
    KV pools must be sized (`neo_sim.capacity`: activations for `iteration_tokens`); NeoError
    for unknown names and for chunked prefill asked of a policy that prefills whole prompts."""
    require_policy(name)
    cls, fixed = POLICIES[name]
    if fixed:
        _refuse_overrides(name, config, fixed)
        config = dataclasses.replace(config, **fixed)
    if (config.chunked_prefill_tokens or config.kv_chunk_tokens) and not cls.chunks_prompts:
        chunking = ", ".join(n for n, (c, _) in POLICIES.items() if c.chunks_prompts)
        raise NeoError(
            f"chunked_prefill_tokens applies to {chunking}; policy {name} prefills whole "
            "prompts (leave it at 0)"
        )
    return config


def _refuse_overrides(name: str, config: SchedulerConfig, fixed: dict) -> None:
    """NeoError where `config` asks for another value of a setting the policy `name` fixes
    (vllm-256 with chunked_prefill_tokens=512): the policy's value would silently win."""
    defaults = SchedulerConfig()
    for field, value in fixed.items():
        asked = getattr(config, field)
        if asked != value and asked != getattr(defaults, field):
            variants = [n for n, (c, f) in POLICIES.items() if c is POLICIES[name][0] and not f]
            instead = f"; {variants[0]} takes {field} as given" if variants else ""
            raise NeoError(f"policy {name} fixes {field}={value} (asked {asked}){instead}")


def make_policy(name: str, config: SchedulerConfig, cost: CostModel) -> Policy:
    """Build the policy `name` over `config` and `cost`; NeoError for unknown names."""
    config = policy_config(name, config)
    cls, _ = POLICIES[name]
    policy = cls(config, cost)
    policy.name = name
    return policy


__all__ = [
    "POLICIES",
    "Policy",
    "SchedulerConfig",
    "make_policy",
    "policy_config",
    "require_policy",
    "RENAMED",
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
