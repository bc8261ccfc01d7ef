"""Attention of the three kinds a plan contains.

- `prefill_attention`: causal self-attention of one prompt (or one chunk of it, over the
  request's cached prefix);
- `device_decode_attention`: one query per request over its paged KV in the device pool;
- host decode attention: `neo_engine.cpu_kernel.decode_attention` over the host pool.
GQA is handled by grouping query heads over each KV head. Outputs are [T, heads * head_dim].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neo_engine.cpu_kernel import decode_attention as host_decode_attention
from neo_engine.cpu_kernel import flash_prefill_attention, flash_prefill_attention_ranges
from neo_engine.kv_cache import KVPool


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] of new tokens; prefix k/v [Hkv, P, D] already cached.

    SDPA gets 4-D [1, H, T, D] tensors: on a CPU, torch runs its flash kernel only for 4-D
    inputs and falls back to the math path (the whole T x T score matrix, ~6x slower at a
    2,000-token prompt) for 3-D ones. A whole bf16 prompt on a CPU with AVX512-BF16 (on AMX
    tiles where the CPU has them), or fp32 on one with AVX-512 or AVX2, goes to the compiled
    flash kernel instead (`cpu_kernel.flash_prefill_attention`;
    benchmarks/prefill_attention.py times them)."""
    t = q.shape[0]
    if prefix is None:
        native = flash_prefill_attention(q, k, v, scale)
        if native is not None:
            return native.reshape(t, -1)
    qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    if prefix is None:
        out = F.scaled_dot_product_attention(
            qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True
        )
    else:
        pk, pv = prefix
        p = pk.shape[1]
        kh = torch.cat([pk.to(kh.dtype).unsqueeze(0), kh], dim=2)
        vh = torch.cat([pv.to(vh.dtype).unsqueeze(0), vh], dim=2)
        key_pos = torch.arange(p + t, device=q.device)
        query_pos = torch.arange(t, device=q.device) + p
        mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True
        )
    return out[0].transpose(0, 1).reshape(t, -1)


def device_decode_attention(
    q: torch.Tensor,
    pool: KVPool,
    layer: int,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [B, Hq, D] over the device pool; tables [B, max_blocks] int32, lens [B] int32."""
    if pool.device.type == "cpu":
        # The CPU stands in for the GPU: the same in-place paged kernel serves both pools.
        out = host_decode_attention(
            host_query(q), pool.k[layer], pool.v[layer], tables, lens, scale
        )
        return out.to(q.dtype).reshape(q.shape[0], -1)
    return _gathered_decode_attention(q, pool, layer, tables, lens, scale)


def host_query(q: torch.Tensor) -> torch.Tensor:
    """q as the host kernel takes it: a bf16 query as it is (the kernel scores it natively and
    returns bf16, saving two casts per layer), any other dtype in fp32."""
    return q if q.dtype == torch.bfloat16 else q.float()


def _gathered_decode_attention(q, pool: KVPool, layer: int, tables, lens, scale):
    """Portable paged decode: gather each request's blocks, pad, and run SDPA with a mask."""
    batch, heads, dim = q.shape
    max_len = int(lens.max())
    nblocks = -(-max_len // pool.block_size)
    index = tables[:, :nblocks].long().to(q.device)
    kv_heads = pool.k.shape[2]

    def gather(cache: torch.Tensor) -> torch.Tensor:
        tiles = cache[layer][index]  # [B, n, Hkv, bs, D]
        return tiles.permute(0, 2, 1, 3, 4).reshape(batch, kv_heads, -1, dim)[:, :, :max_len]

    k, v = gather(pool.k), gather(pool.v)
    positions = torch.arange(max_len, device=q.device)
    mask = (positions.unsqueeze(0) < lens.to(q.device).unsqueeze(1)).view(batch, 1, 1, max_len)
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2), k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.reshape(batch, heads * dim)


# ---- the attention stage as the executor runs it: store the new K/V, then attend ----------------
# The profiler times these same functions, so a profile prices exactly what an iteration does.


def prefill_stage(
    pool: KVPool, layer: int, slots, table, start: int, q, k, v, scale: float, device: torch.device
) -> torch.Tensor:
    """Store a prompt chunk's K/V in its pool (device or host) and attend, causally."""
    pool.write(layer, slots, k, v)
    prefix = None
    if start:
        pk, pv = pool.gather(layer, table, start)
        prefix = (pk.to(device), pv.to(device))
    return prefill_attention(q, k, v, scale, prefix)


def whole_prompts_stage(
    layer: int, prompts: list[tuple[KVPool, tuple, tuple[int, int]]], q, k, v, scale: float, out
) -> bool:
    """`prefill_stage` of several whole prompts (no cached prefix), each (its pool, its slots,
    its rows of q/k/v/out; out [N, Hq x D]), in one call of the flash kernel: False, with
    nothing done, where that kernel does not apply (the caller then runs `prefill_stage` per
    prompt). Per prompt the same output as `prefill_stage`. One call instead of one per
    prompt: in the engine's prefill of 32 prompts of 128 tokens (SmolLM2, 960 calls per
    step) attention took 0.78x the time, the step 0.96x (side by side, ad hoc, 2026-12-04)."""
    ranges = [rows for _, _, rows in prompts]
    if not flash_prefill_attention_ranges(q, k, v, ranges, scale, out.view(q.shape)):
        return False
    for pool, slots, (a, b) in prompts:  # attention read the new k/v rows, not the pool
        pool.write(layer, slots, k[a:b], v[a:b])
    return True


def device_decode_stage(
    pool: KVPool, layer: int, slots, tables, lens, q, k, v, scale: float
) -> torch.Tensor:
    """Store each decode's new K/V in the device pool and attend over it."""
    pool.write(layer, slots, k, v)
    return device_decode_attention(q, pool, layer, tables, lens, scale)


def host_decode_stage(
    pool: KVPool, layer: int, slots, tables, lens, q, k, v, scale: float, threads: int
) -> torch.Tensor:
    """On the host: store the new K/V in the host pool and run the host kernel (fp32 sums;
    the output in q's dtype if bf16, else fp32)."""
    pool.write(layer, slots, k, v)
    out = host_decode_attention(
        host_query(q),
        pool.k[layer],
        pool.v[layer],
        tables,
        lens,
        scale,
        num_threads=threads,
    )
    return out.reshape(out.shape[0], -1)
