"""The engine's settings, one frozen dataclass per group; `neo-serve`, `neo-profile` and
`LLM(...)` build their flags and keyword arguments from them (`neo_sim.settings`).

The scheduler's settings are `neo_sim.scheduler.SchedulerConfig` and the KV sizing settings
`neo_sim.capacity.KVCacheSettings`, the very classes the simulator uses. The engine changes
exactly one of their defaults, here, for the reason given at `ENGINE_KV`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from neo_sim import settings
from neo_sim.capacity import KVCacheSettings
from neo_sim.machine import native_bf16
from neo_sim.model import ModelRef, ModelSpec, parse_model_arg
from neo_sim.scheduler import POLICIES, RENAMED, SchedulerConfig
from neo_sim.settings import check, setting
from neo_sim.units import canonical_dtype

# The engine's only departure from the simulator's defaults: the host KV pool is 2 GB, not
# half of host memory. The engine allocates the pool when it starts (on CUDA pinned, which
# locks the memory and takes seconds per GB); the simulator allocates nothing and models a
# serving host that dedicates half its memory to KV.
ENGINE_KV = KVCacheSettings(cpu_kv_gb=2.0)
# `host_overlap` -> the executor's flag (None: `executor.default_host_overlap` decides)
HOST_OVERLAP: dict[str, bool | None] = {"auto": None, "yes": True, "no": False}

DEFAULT_MAX_MODEL_LEN = 4096  # cap on the default context: the model's own, at most this


def default_max_model_len(spec: ModelSpec) -> int:
    """The context an engine serves when max_model_len is unset (tokens): the model's own, at
    most DEFAULT_MAX_MODEL_LEN and at most its sliding window (beyond which neo_engine's full
    attention would differ from the model's)."""
    window = spec.sliding_window
    return int(min(spec.max_position_embeddings, DEFAULT_MAX_MODEL_LEN, window or math.inf))


@dataclass(frozen=True)
class LoadSettings:
    """What model to load, where, and in which precision."""

    model: str = setting(
        help="checkpoint directory (config.json + *.safetensors), model preset, or "
        "dummy:PRESET (random weights)"
    )
    device: str = setting(
        "cpu", "where weights, linear layers and the device KV pool live", choices=("cpu", "cuda")
    )
    dtype: str | None = setting(
        None,
        "compute dtype; unset: on a CPU device bfloat16 where the CPU has native bf16 (AMX or "
        "AVX512-BF16), else float32; on CUDA the model's own",
    )
    kv_dtype: str | None = setting(None, "KV cache dtype; unset: the compute dtype")
    seed: int = setting(0, "seed of random weights and of sampling without its own seed")
    prepack_weights: bool = setting(
        True,
        "on a CPU device in bf16 or fp32, also keep each GEMM weight in oneDNN's blocked layout "
        "(weights.PrepackedWeight): faster GEMMs past a few rows, twice the weights' memory",
    )

    def __post_init__(self) -> None:
        check(self, "load settings")
        for name in ("dtype", "kv_dtype"):
            value = getattr(self, name)
            if value is not None:  # a name ("bf16", "float32") or a torch dtype (torch.float32)
                text = str(value).removeprefix("torch.")
                object.__setattr__(self, name, canonical_dtype(text))  # NeoError if unknown

    def model_ref(self) -> ModelRef:
        """The model's spec in the precision these settings give it, and its checkpoint."""
        ref = parse_model_arg(self.model)
        default = ref.spec.dtype
        if self.device == "cpu":
            default = "bfloat16" if native_bf16() else "float32"
        dtype = canonical_dtype(self.dtype or default)
        spec = ref.spec.with_dtype(dtype, canonical_dtype(self.kv_dtype or dtype))
        return dataclasses.replace(ref, spec=spec)

    def model_spec(self) -> ModelSpec:
        return self.model_ref().spec

    def dtype_reason(self) -> str:
        """Why the compute dtype is what it is, in words for logs and /metrics."""
        if self.dtype is not None:
            return "set by dtype"
        if self.device == "cpu":
            native = native_bf16()
            if native:
                return f"cpu device default: this CPU has native bf16 ({native})"
            return "cpu device default: this CPU has no native bf16 (AMX, AVX512-BF16)"
        return "the model's own dtype"


@dataclass(frozen=True)
class EngineConfig:
    """Everything an `LLMEngine` is built from."""

    load: LoadSettings
    policy: str = setting("neo", "scheduling policy", choices=tuple(POLICIES), renamed=RENAMED)
    max_model_len: int | None = setting(
        None,
        f"longest prompt + output; unset: the model's context, at most {DEFAULT_MAX_MODEL_LEN}",
        unit="tokens",
        low=1,
    )
    profile: str | None = setting(
        None, "profile JSON for the scheduler's cost model; unset: a quick probe of this machine"
    )
    host_threads: int | None = setting(
        None,
        "threads of the host attention kernel; unset: torch's thread count, or half of it on a "
        "CPU device whose lanes overlap (they share its cores)",
        low=1,
    )
    host_overlap: str = setting(
        "auto",
        "run the host attention beside the device's work (yes) or on the calling thread where "
        "the device lane reaches it (no); auto: yes with a GPU, no on a CPU device (the lanes "
        "share its cores, and overlapping them makes them contend)",
        choices=tuple(HOST_OVERLAP),
    )
    clock: str = setting(
        "wall",
        "the scheduler's clock: wall time, or the sum of its own predictions (tests of "
        "decision equality with the simulator)",
        choices=("wall", "predicted"),
        cli=False,
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv: KVCacheSettings = field(default_factory=lambda: ENGINE_KV)

    def __post_init__(self) -> None:
        check(self, "engine config")

    @classmethod
    def of(cls, model: str, **flat: Any) -> EngineConfig:
        """A config from flat settings: `EngineConfig.of("dummy:tiny", gpu_kv_blocks=8)`."""
        return settings.build(cls, flat, model=model)
