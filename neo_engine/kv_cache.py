"""KV caches: a paged pool on the device and a paged pool in host memory.

Both pools share one layout, [layers, blocks, kv_heads, block_size, head_dim], so a swap copies
whole blocks between them. Block ids come from the scheduler's allocator (`neo_sim.scheduler.kv`):
the engine only stores and moves bytes. On CUDA the host pool is pinned, so copies can be
asynchronous; on a CPU-only machine both pools live in RAM and the "device" one stands in for
GPU memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neo_engine.cpu_kernel import load_extension
from neo_engine.host_threads import on_passing_thread
from neo_sim.model import ModelSpec


class KVPool:
    def __init__(
        self,
        spec: ModelSpec,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        pin: bool = False,
    ):
        shape = (spec.num_layers, num_blocks, spec.num_kv_heads, block_size, spec.head_dim)
        self.block_size = block_size
        self.device = device
        if device.type == "cpu":
            self.k, self.v = cpu_tensor(shape, dtype, pin), cpu_tensor(shape, dtype, pin)
        else:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def slots(
        self, table: Sequence[int], start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, offset) of token positions [start, end) of a request with this block table."""
        positions = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[positions // self.block_size]
        return blocks.to(self.device), (positions % self.block_size).to(self.device)

    def write(
        self, layer: int, slots: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Store k, v [T, kv_heads, head_dim] at the given slots of one layer (in RAM through
        the compiled `write_kv`, a copy per token and head, where it is built)."""
        blocks, offsets = slots
        dtype, device = self.k.dtype, self.device
        if not (k.dtype == v.dtype == dtype and k.device == v.device == device):
            # converted where they are, then moved: a blocking copy from a GPU that also
            # converts does it on the CPU, with a thread team (neo_engine/host_threads.py)
            k, v = k.to(dtype=dtype).to(device=device), v.to(dtype=dtype).to(device=device)
        module = load_extension() if self.device.type == "cpu" else None
        if module is not None and blocks.dtype == offsets.dtype == torch.int64:
            # Rows may be strided (views of the fused projection); heads must be contiguous.
            module.write_kv(self.k[layer], self.v[layer], blocks, offsets, _heads(k), _heads(v))
            return
        self.k[layer][blocks, :, offsets, :] = k
        self.v[layer][blocks, :, offsets, :] = v

    def gather(
        self, layer: int, table: Sequence[int], length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `length` tokens of a request: k, v [kv_heads, length, head_dim]."""
        n = -(-length // self.block_size)
        index = torch.tensor(list(table[:n]), dtype=torch.long, device=self.device)
        heads, dim = self.k.shape[2], self.k.shape[4]

        def pick(cache: torch.Tensor) -> torch.Tensor:
            tile = cache[layer].index_select(0, index)  # [n, H, bs, D]
            return tile.permute(1, 0, 2, 3).reshape(heads, -1, dim)[:, :length]

        return pick(self.k), pick(self.v)


def copy_blocks(
    src: KVPool,
    dst: KVPool,
    src_blocks: Sequence[int],
    dst_blocks: Sequence[int],
    non_blocking: bool = False,
) -> None:
    """Move whole blocks (all layers) between pools: the bytes of a swap."""
    if not src_blocks:
        return
    s = torch.tensor(list(src_blocks), dtype=torch.long, device=src.device)
    d = torch.tensor(list(dst_blocks), dtype=torch.long, device=dst.device)
    for cache_src, cache_dst in ((src.k, dst.k), (src.v, dst.v)):
        moved = cache_src.index_select(1, s).to(dst.device, non_blocking=non_blocking)
        cache_dst.index_copy_(1, d, moved.to(cache_dst.dtype))


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask Linux for 2 MiB pages under a large CPU tensor (before it is first touched).

    A KV tile is one 4 KiB page; random tiles then cost a TLB miss each. Transparent huge pages
    in `madvise` mode need this call; it is a no-op elsewhere. Returns whether it applied.
    """
    if tensor.device.type != "cpu" or tensor.nbytes < 4 * 2**20:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        huge = 2**21
        start = (tensor.data_ptr() + huge - 1) & ~(huge - 1)
        end = (tensor.data_ptr() + tensor.nbytes) & ~(huge - 1)
        if end <= start:
            return False
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 14) == 0
    except (OSError, AttributeError):
        return False


def cpu_tensor(shape, dtype: torch.dtype, pin: bool = False) -> torch.Tensor:
    """A zeroed CPU tensor, on huge pages where the OS allows (pinned memory when asked: the
    host pool beside a GPU, zeroed on a passing thread, since the thread that drives the GPU
    must keep no OpenMP team of its own, `host_threads`)."""
    if pin:
        return on_passing_thread(lambda: torch.zeros(shape, dtype=dtype, pin_memory=True))
    t = torch.empty(shape, dtype=dtype)
    advise_huge_pages(t)
    return t.zero_()


def _heads(x: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] with each row's heads contiguous, as `write_kv` reads it (a copy only if
    they are not)."""
    return x if x.stride(2) == 1 and x.stride(1) == x.shape[2] else x.contiguous()
