"""KV-cache capacities that follow from memory sizes, as a serving engine would size them.

GPU pool: the GPUs' memory times a utilisation fraction (vLLM's `gpu_memory_utilization`),
minus the weights and an activation reserve for the largest iteration. CPU pool: a fraction of
host memory. Flags override both, as the paper's artifact does.
"""

from __future__ import annotations

from dataclasses import dataclass

from neo_sim.errors import NeoError
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.units import GiB

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default
HOST_KV_FRACTION = 0.5  # leave the rest of host memory to the OS, weights staging, buffers


@dataclass(frozen=True)
class KVCapacity:
    num_gpu_blocks: int
    num_cpu_blocks: int
    block_size: int

    @property
    def gpu_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    @property
    def cpu_tokens(self) -> int:
        return self.num_cpu_blocks * self.block_size


def activation_reserve_bytes(model: ModelSpec, max_batch_tokens: int) -> float:
    """Peak activations of one iteration: the MLP intermediates and logits dominate."""
    per_token = (4 * model.hidden_size + 2 * model.intermediate_size) * model.dtype_bytes
    return max_batch_tokens * per_token + 0.5 * GiB  # + CUDA context and allocator slack


def default_capacity(
    model: ModelSpec,
    hardware: HardwareSpec,
    block_size: int = 16,
    max_batch_tokens: int = 4096,
    gpu_blocks: int | None = None,
    cpu_kv_bytes: float | None = None,
) -> KVCapacity:
    block_bytes = block_size * model.kv_bytes_per_token
    if gpu_blocks is None:
        free = (
            hardware.total_gpu_memory_bytes * GPU_MEMORY_UTILIZATION
            - model.weight_bytes
            - hardware.tp * activation_reserve_bytes(model, max_batch_tokens)
        )
        if free < block_bytes:
            raise NeoError(
                f"{model.name} ({model.weight_bytes / GiB:.1f} GiB of weights) leaves no room for "
                f"KV cache on {hardware.name}; give --gpu-kv-blocks or a bigger host"
            )
        gpu_blocks = int(free // block_bytes)
    if cpu_kv_bytes is None:
        cpu_kv_bytes = hardware.cpu.memory_bytes * HOST_KV_FRACTION
    if gpu_blocks < 0 or cpu_kv_bytes < 0:
        raise NeoError("KV capacities must be >= 0")
    return KVCapacity(int(gpu_blocks), int(cpu_kv_bytes // block_bytes), block_size)
