"""The host decode-attention kernel against a float64 reference on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from neo_engine.cpu_kernel import decode_attention, load_extension, reference_decode_attention


def case(batch, q_heads, kv_heads, head_dim, block_size, lens, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    blocks_per = max(-(-n // block_size) for n in lens)
    num_blocks = batch * blocks_per + 3
    k64 = torch.randn(
        num_blocks, kv_heads, block_size, head_dim, generator=gen, dtype=torch.float64
    )
    v64 = torch.randn(
        num_blocks, kv_heads, block_size, head_dim, generator=gen, dtype=torch.float64
    )
    tables = torch.randperm(num_blocks, generator=gen)[: batch * blocks_per]
    tables = tables.view(batch, blocks_per).int().contiguous()
    q64 = torch.randn(batch, q_heads, head_dim, generator=gen, dtype=torch.float64)
    lens_t = torch.tensor(lens, dtype=torch.int32)
    scale = 1 / math.sqrt(head_dim)
    ref = reference_decode_attention(q64, k64, v64, tables, lens_t, scale, dtype=torch.float64)
    out = decode_attention(
        q64.float(), k64.to(dtype).contiguous(), v64.to(dtype).contiguous(), tables, lens_t, scale
    )
    return ((out.double() - ref).norm() / ref.norm()).item()


SHAPES = [
    (3, 4, 4, 64, 16, [1, 17, 50]),  # MHA, a single-token context, partial blocks
    (4, 8, 2, 128, 16, [100, 33, 64, 7]),  # GQA 4:1
    (2, 9, 3, 64, 4, [31, 9]),  # SmolLM2's 3:1 grouping
    (5, 32, 8, 128, 32, [300, 257, 5, 64, 129]),  # Llama-3 style
    (2, 4, 1, 40, 8, [23, 40]),  # head_dim not a multiple of 16 (scalar tail)
    (2, 8, 1, 64, 16, [33, 70]),  # 8 query heads per KV head: the bf16 values' widest pass
    (2, 16, 1, 64, 16, [40, 7]),  # 16 per KV head: two such passes
]


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_kv_matches_float64(shape):
    assert case(*shape, torch.float32) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_fp16_kv_matches_float64(shape):
    assert case(*shape, torch.float16) < 2e-3


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_bf16_kv_matches_float64(shape):
    assert case(*shape, torch.bfloat16) < 1.5e-2  # bf16 keeps 8 bits of mantissa


def test_kernel_is_the_compiled_one_here():
    # A fresh clone must build the extension on this machine (gcc and headers are present).
    assert load_extension() is not None


def test_fallback_path_gives_the_same_numbers(monkeypatch):
    import neo_engine.cpu_kernel as ck

    fast = case(*SHAPES[1], torch.float16)
    monkeypatch.setattr(ck, "load_extension", lambda: None)
    slow = case(*SHAPES[1], torch.float16)
    assert slow < 2e-3 and fast < 2e-3


def bf16_case(batch, q_heads, kv_heads, head_dim, block_size, lens, seed=0):
    """bf16 KV and a query that is bf16 too (a bf16 model's, widened: the native dot-product
    path where the build has AVX512-BF16), against float64 of the same bf16 numbers."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per = max(-(-n // block_size) for n in lens)
    num_blocks = batch * blocks_per + 3
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k = torch.randn(*shape, generator=gen).bfloat16()
    v = torch.randn(*shape, generator=gen).bfloat16()
    tables = torch.randperm(num_blocks, generator=gen)[: batch * blocks_per]
    tables = tables.view(batch, blocks_per).int().contiguous()
    q = torch.randn(batch, q_heads, head_dim, generator=gen).bfloat16().float()
    lens_t = torch.tensor(lens, dtype=torch.int32)
    scale = 1 / math.sqrt(head_dim)
    ref = reference_decode_attention(
        q.double(), k.double(), v.double(), tables, lens_t, scale, dtype=torch.float64
    )
    out = decode_attention(q, k, v, tables, lens_t, scale)
    widened = decode_attention(q + 1e-6, k, v, tables, lens_t, scale)  # not bf16: fp32 path
    return ((out.double() - ref).norm() / ref.norm()).item(), out, widened


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_query_and_kv_match_float64_of_the_same_numbers(shape):
    """Products of bf16 numbers are exact in fp32: only fp32 summation error remains, whichever
    path scores the keys; and the path taken for a bf16 query agrees with the widening one."""
    error, out, widened = bf16_case(*shape)
    assert error < 1e-5
    torch.testing.assert_close(out, widened, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float32])
def test_a_bf16_query_viewed_from_the_projection_gives_the_widened_result_rounded(kv_dtype):
    """The engine hands a bf16 model's query over as it is: bf16, a view of its fused q/k
    projection (rows strided by both). The output is bf16 and equals, bit for bit, the fp32
    result for the same query widened to fp32, rounded once to bf16 (torch's cast)."""
    gen = torch.Generator().manual_seed(7)
    batch, q_heads, kv_heads, head_dim, block_size, lens = 4, 9, 3, 64, 16, [1, 40, 17, 64]
    blocks_per = max(-(-n // block_size) for n in lens)
    num_blocks = batch * blocks_per + 2
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k = torch.randn(*shape, generator=gen).to(kv_dtype)
    v = torch.randn(*shape, generator=gen).to(kv_dtype)
    tables = torch.randperm(num_blocks, generator=gen)[: batch * blocks_per]
    tables = tables.view(batch, blocks_per).int().contiguous()
    lens_t = torch.tensor(lens, dtype=torch.int32)
    qk = torch.randn(batch, q_heads + kv_heads, head_dim, generator=gen).bfloat16()
    q = qk[:, :q_heads]  # rows strided by q_heads + kv_heads heads
    assert not q.is_contiguous()
    out = decode_attention(q, k, v, tables, lens_t, 0.125)
    widened = decode_attention(q.float().contiguous(), k, v, tables, lens_t, 0.125)
    assert out.dtype == torch.bfloat16 and torch.equal(out, widened.bfloat16())
    reference = reference_decode_attention(q, k, v, tables, lens_t, 0.125)
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=1e-2)
