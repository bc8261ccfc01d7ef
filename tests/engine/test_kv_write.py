"""`KVPool.write` through the compiled `write_kv` stores exactly what torch's indexed
assignment stores, for every cache dtype, and refuses slots outside the pool."""

from __future__ import annotations

import pytest
import torch

from neo_engine import cpu_kernel
from neo_engine.kv_cache import KVPool
from neo_sim.model import PRESETS

pytestmark = pytest.mark.skipif(
    cpu_kernel.load_extension() is None, reason="no C++ toolchain: torch fallbacks only"
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_equals_indexed_assignment(dtype):
    spec = PRESETS["smollm2-135m"]
    pool = KVPool(spec, num_blocks=12, block_size=16, dtype=dtype, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    tokens = 40
    blocks = torch.randint(0, 12, (tokens,), generator=gen)
    offsets = torch.randperm(16 * 3, generator=gen)[:tokens] % 16  # some slots repeat a block
    k = torch.randn(tokens, spec.num_kv_heads, spec.head_dim, generator=gen)
    v = torch.randn(tokens, spec.num_kv_heads, spec.head_dim, generator=gen)
    expected_k, expected_v = pool.k[3].clone(), pool.v[3].clone()
    for t in range(tokens):  # one token at a time: the last write of a slot wins, as in torch
        expected_k[blocks[t], :, offsets[t], :] = k[t].to(dtype)
        expected_v[blocks[t], :, offsets[t], :] = v[t].to(dtype)
    pool.write(3, (blocks, offsets), k, v)  # fp32 k/v: cast to the cache's dtype first
    assert torch.equal(pool.k[3], expected_k) and torch.equal(pool.v[3], expected_v)
    assert not pool.k[2].any() and not pool.k[4].any()  # other layers untouched


def test_a_slot_outside_the_pool_is_refused():
    spec = PRESETS["smollm2-135m"]
    pool = KVPool(
        spec, num_blocks=2, block_size=16, dtype=torch.float32, device=torch.device("cpu")
    )
    k = torch.zeros(1, spec.num_kv_heads, spec.head_dim)
    with pytest.raises(RuntimeError, match="out of range"):
        pool.write(0, (torch.tensor([2]), torch.tensor([0])), k, k)


def test_rows_strided_like_the_projections_views_are_written_as_they_read():
    """The engine writes k and v as views of its fused projection (rows strided by the other
    heads): the same cache contents as their contiguous copies give."""
    spec = PRESETS["smollm2-135m"]
    heads, dim = spec.num_kv_heads, spec.head_dim
    gen = torch.Generator().manual_seed(2)
    fused = torch.randn(9, (spec.num_heads + 2 * heads) * dim, generator=gen).bfloat16()
    k = fused[:, spec.q_size : spec.q_size + spec.kv_size].view(-1, heads, dim)
    v = fused[:, spec.q_size + spec.kv_size :].view(-1, heads, dim)
    assert not k.is_contiguous() and not v.is_contiguous()
    slots = (torch.arange(9) % 4, torch.arange(9))
    pools = [
        KVPool(spec, num_blocks=4, block_size=16, dtype=torch.bfloat16, device=torch.device("cpu"))
        for _ in range(2)
    ]
    pools[0].write(1, slots, k, v)
    pools[1].write(1, slots, k.contiguous(), v.contiguous())
    assert pools[0].k[1].any() and torch.equal(pools[0].k[1], pools[1].k[1])
    assert torch.equal(pools[0].v[1], pools[1].v[1])
