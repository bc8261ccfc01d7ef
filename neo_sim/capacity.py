"""KV-pool sizes from memory sizes: one formula for the simulator and the engine.

GPU pool: the device memory times a utilisation fraction (vLLM's `gpu_memory_utilization`),
minus what is already resident (weights; on a real device, measured), minus an activation
reserve for the largest iteration. Host pool: a size in GB, else a fraction of host memory.
The simulator feeds the formula a hardware spec's datasheet memory and the model's computed
weight bytes (`memory_of_hardware`); the engine feeds it the device's measured memory after
loading the weights. Explicit block counts in the scheduler config override both pools.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from neo_sim.errors import NeoError
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.scheduler import SchedulerConfig
from neo_sim.settings import check, setting
from neo_sim.units import GB, GiB


@dataclass(frozen=True)
class KVCacheSettings:
    """How KV pools are sized when the scheduler config leaves their block counts unset."""

    gpu_memory_utilization: float = setting(
        0.9,
        "fraction of GPU memory for weights, activations and KV (vLLM's gpu_memory_utilization)",
        low=0,
        high=1,
        low_open=True,
    )
    cpu_kv_gb: float | None = setting(
        None,
        "host KV pool size when --cpu-kv-blocks is unset; unset: --host-kv-fraction of host memory",
        unit="GB",
        low=0,
    )
    host_kv_fraction: float = setting(
        0.5,
        "fraction of host memory for the host KV pool when neither --cpu-kv-blocks nor "
        "--cpu-kv-gb is given (the rest: OS, weights staging, buffers)",
        low=0,
        high=1,
        low_open=True,
    )
    cpu_device_kv_gb: float = setting(
        1.0,
        "engine on a CPU device: the KV space of the CPU standing in for a GPU, which has no "
        "device memory to measure (as VLLM_CPU_KVCACHE_SPACE in vLLM's CPU backend)",
        unit="GB",
        low=0,
        low_open=True,
    )

    def __post_init__(self) -> None:
        check(self, "KV cache settings")


@dataclass(frozen=True)
class DeviceMemory:
    """The memory KV pools are carved from, in bytes.

    `device_bytes` is all GPUs of the tensor-parallel group together; None means a CPU device
    standing in for a GPU (the engine on a CPU-only machine). `resident_bytes` is what is
    already there before any KV: weights, and on a real device the runtime's own use.
    """

    device_bytes: float | None
    resident_bytes: float
    host_bytes: float
    tp: int = 1


def memory_of_hardware(hardware: HardwareSpec, model: ModelSpec) -> DeviceMemory:
    """The simulator's view: datasheet memory, the model's computed weight bytes."""
    return DeviceMemory(
        hardware.total_gpu_memory_bytes, model.weight_bytes, hardware.cpu.memory_bytes, hardware.tp
    )


def activation_reserve_bytes(model: ModelSpec, max_batch_tokens: int, tp: int = 1) -> float:
    """Peak activations of one iteration on one GPU of a `tp`-wide group, in bytes: per token,
    four hidden-size buffers (residual, normed input, attention and MLP outputs; every GPU holds
    them whole) and the MLP's gate/up intermediates (2 x intermediate_size, sharded 1/tp by
    tensor parallelism, as the weights are), plus 0.5 GiB for the CUDA context and allocator
    slack."""
    per_token = (4 * model.hidden_size + 2 * model.intermediate_size / tp) * model.dtype_bytes
    return max_batch_tokens * per_token + 0.5 * GiB


def device_kv_bytes(
    model: ModelSpec, memory: DeviceMemory, kv: KVCacheSettings, max_batch_tokens: int
) -> float:
    """Bytes the device KV pool may take (before rounding to blocks)."""
    if memory.device_bytes is None:
        return kv.cpu_device_kv_gb * GB
    return (
        memory.device_bytes * kv.gpu_memory_utilization
        - memory.resident_bytes
        - memory.tp * activation_reserve_bytes(model, max_batch_tokens, memory.tp)
    )


def host_kv_bytes(memory: DeviceMemory, kv: KVCacheSettings) -> float:
    if kv.cpu_kv_gb is not None:
        return kv.cpu_kv_gb * GB
    return memory.host_bytes * kv.host_kv_fraction


def resolve_pools(
    config: SchedulerConfig, kv: KVCacheSettings, model: ModelSpec, memory: DeviceMemory
) -> SchedulerConfig:
    """`config` with its unset pool sizes computed from memory; explicit counts are kept.
    `config` carries its policy's fixed settings (`scheduler.policy_config`): the activations
    kept out of the device pool are those of its largest iteration (`iteration_tokens`)."""
    block_bytes = config.block_size * model.kv_bytes_per_token
    gpu_blocks = config.num_gpu_blocks
    if (
        gpu_blocks is None
        and config.kv_chunk_tokens
        and not config.chunked_prefill_tokens
        and config.slo_ttft_s is None
    ):
        config = _chunk_where_it_buys_kv(config, kv, model, memory)
    if gpu_blocks is None:
        free = device_kv_bytes(model, memory, kv, config.iteration_tokens)
        if free < block_bytes:
            raise NeoError(
                f"{model.name} ({memory.resident_bytes / GiB:.1f} GiB resident) leaves no room "
                "for KV cache in device memory; give --gpu-kv-blocks or a bigger device"
            )
        gpu_blocks = int(free // block_bytes)
    cpu_blocks = config.num_cpu_blocks
    if cpu_blocks is None:
        cpu_blocks = int(host_kv_bytes(memory, kv) // block_bytes)
    return dataclasses.replace(config, num_gpu_blocks=gpu_blocks, num_cpu_blocks=cpu_blocks)


def _chunk_where_it_buys_kv(
    config: SchedulerConfig, kv: KVCacheSettings, model: ModelSpec, memory: DeviceMemory
) -> SchedulerConfig:
    """`config` with `kv_chunk_tokens` adopted as its prompt chunk if the smaller activation
    reserve enlarges the GPU pool by `kv_chunk_min_gain` or more, else unchanged (whole
    prompts, admitted faster). Never under a TTFT SLO (`resolve_pools` does not ask): a
    chunk's iteration admits about one 1,000-token prompt, the budget eight, and the bound is
    on first tokens (docs/architecture.md, "Adaptive", rule 6). A separate setting, not
    `chunked_prefill_tokens` itself, so that applying the policy's fixed settings again
    (`make_policy`) cannot undo the choice."""
    chunked = dataclasses.replace(config, chunked_prefill_tokens=config.kv_chunk_tokens)
    whole = device_kv_bytes(model, memory, kv, config.iteration_tokens)
    smaller = device_kv_bytes(model, memory, kv, chunked.iteration_tokens)
    return chunked if whole > 0 and smaller >= whole * (1 + config.kv_chunk_min_gain) else config
