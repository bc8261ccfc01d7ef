"""The skinny decode GEMM against a float64 reference, and where `linear` uses it."""

from __future__ import annotations

import pytest
import torch

from neo_engine import cpu_kernel
from neo_engine.cpu_kernel import SKINNY_MAX_ROWS, skinny_linear
from neo_engine.layers import linear


@pytest.mark.parametrize(
    "rows, k, n",
    [
        (1, 768, 2048),
        (3, 768, 1280),  # a partial x-row tile
        (4, 2048, 768),
        (7, 40, 9),  # K under one vector, N not a multiple of the 4-row tile
        (13, 100, 30),  # K with a scalar tail
        (SKINNY_MAX_ROWS, 576, 1536),  # SmolLM2's width, the largest batch it takes
    ],
)
def test_matches_float64(rows, k, n):
    gen = torch.Generator().manual_seed(rows * 1000 + k + n)
    x = torch.randn(rows, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    out = skinny_linear(x.float(), w.float())
    assert out is not None and out.shape == (rows, n)
    ref = x @ w.T
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_declines_what_it_does_not_cover():
    x, w = torch.randn(2, 16), torch.randn(8, 16)
    assert skinny_linear(torch.randn(SKINNY_MAX_ROWS + 1, 16), w) is None  # prefill-sized
    assert skinny_linear(x.double(), w.double()) is None
    assert skinny_linear(x.half(), w.half()) is None


def test_linear_gives_the_same_numbers_with_and_without_the_kernel(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 96, generator=gen), torch.randn(40, 96, generator=gen)
    fast = linear(x, w)
    monkeypatch.setattr(cpu_kernel, "load_extension", lambda: None)
    slow = linear(x, w)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-5)
    assert torch.allclose(slow, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)
