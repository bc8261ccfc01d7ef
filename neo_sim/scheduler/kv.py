"""Block accounting for the GPU and CPU KV pools.

The scheduler owns block ids, not just counts: the engine reads a request's block table from
here to find its KV, so the simulator and the engine share one allocator. Allocation and free
are O(blocks touched); usage is kept as a running count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import repeat


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockPool:
    """A fixed pool of KV blocks of `block_size` tokens, with per-request block tables."""

    def __init__(self, num_blocks: int, block_size: int, name: str):
        if num_blocks < 0 or block_size < 1:
            raise ValueError(f"{name} pool: need num_blocks >= 0 and block_size >= 1")
        self.name = name
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks if self.num_blocks else 0.0

    def holds(self, request_id: int) -> bool:
        return request_id in self._tables

    def table(self, request_id: int) -> list[int]:
        return self._tables.get(request_id, [])

    @property
    def tables(self) -> Mapping[int, list[int]]:
        """Each request's block table, read-only by contract (`grow`, `free` change them)."""
        return self._tables

    def num_blocks_of(self, request_id: int) -> int:
        return len(self._tables.get(request_id, ()))

    def num_blocks_of_each(self, request_ids: Iterable[int]) -> int:
        """`sum(map(num_blocks_of, request_ids))`, at C speed."""
        return sum(map(len, map(self._tables.get, request_ids, repeat(()))))

    def extra_blocks(self, request_id: int, num_tokens: int) -> int:
        """Blocks to add so that `request_id` holds `num_tokens` tokens."""
        extra = blocks_for(num_tokens, self.block_size) - len(self._tables.get(request_id, ()))
        return extra if extra > 0 else 0

    def grow(self, request_id: int, num_tokens: int) -> list[int]:
        """Extend the request's table to hold `num_tokens`; returns the new block ids."""
        table = self._tables.get(request_id)
        extra = -(-num_tokens // self.block_size) - (len(table) if table else 0)
        if extra <= 0:
            return []
        if extra > len(self._free):
            raise RuntimeError(f"{self.name} pool exhausted: need {extra}, have {len(self._free)}")
        new = [self._free.pop() for _ in range(extra)]
        if table is None:
            self._tables[request_id] = new
            return list(new)
        table.extend(new)
        return new

    def grow_each(self, works: Iterable[tuple[int, int]]) -> None:
        """`grow(request_id, num_tokens)` of each of `works` in turn, in one loop: a decode
        adds a block only when its context crosses a block boundary, and this runs for every
        decode of every iteration."""
        tables, bs = self._tables, self.block_size
        for request_id, num_tokens in works:
            table = tables.get(request_id)
            extra = -(-num_tokens // bs) - (len(table) if table else 0)
            if extra > 0:
                self.grow(request_id, num_tokens)

    def add_block(self, request_id: int) -> int:
        """Append one block to the request's table (what `grow` does when a context crosses
        a block boundary); returns its id."""
        if not self._free:
            raise RuntimeError(f"{self.name} pool exhausted: need 1, have 0")
        block = self._free.pop()
        self._tables.setdefault(request_id, []).append(block)
        return block

    def free(self, request_id: int) -> list[int]:
        """Release all blocks of the request; returns them (the engine may copy from them)."""
        blocks = self._tables.pop(request_id, [])
        self._free.extend(reversed(blocks))
        return blocks


class KVManager:
    """The two pools together, with whole-request moves between them (swaps)."""

    def __init__(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int):
        self.block_size = block_size
        self.gpu = BlockPool(num_gpu_blocks, block_size, "GPU")
        self.cpu = BlockPool(num_cpu_blocks, block_size, "CPU")

    def pool(self, on_gpu: bool) -> BlockPool:
        return self.gpu if on_gpu else self.cpu

    def move(self, request_id: int, num_tokens: int, to_gpu: bool) -> tuple[list[int], list[int]]:
        """Move a request's KV (`num_tokens` tokens) to the other pool: (src, dst) blocks."""
        src_pool, dst_pool = (self.cpu, self.gpu) if to_gpu else (self.gpu, self.cpu)
        dst = dst_pool.grow(request_id, num_tokens)
        src = src_pool.free(request_id)
        return src, dst

    def free(self, request_id: int) -> None:
        self.gpu.free(request_id)
        self.cpu.free(request_id)
