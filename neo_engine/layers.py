"""The three stages of a Llama layer, as NEO splits them (docs/architecture.md, "What NEO does").

- `pre_projection`: RMSNorm, fused QKV projection, rotary embedding -> q, k, v;
- attention: in `neo_engine.attention` (prefill, device decode, host decode);
- `post_projection`: O projection, residual, RMSNorm, gated MLP, residual.
The executor runs these per layer and per sub-batch, on whichever lane the plan says.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from neo_engine.cpu_kernel import (
    fused_rms_norm,
    fused_rotary,
    fused_silu_mul,
    skinny_linear,
)
from neo_engine.weights import LAYER_GEMMS, LayerWeights, Linear, PrepackedWeight
from neo_sim.machine import cpu_features
from neo_sim.model import ModelSpec


def _skinny_rows_with_prepacked() -> dict[torch.dtype, int]:
    """With a prepacked weight, the skinny kernel only up to this many rows, per dtype: beyond
    it oneDNN's prepacked GEMM is as fast or faster. Measured beside each other on SmolLM2's
    shapes (30 layers' weights, far larger than the caches): bf16 on AVX512-BF16, the kernel
    1.5x faster at 1-2 rows, level at 4, 1.3-1.5x slower at 8-32; fp32 with AVX-512, the kernel
    1.2-1.3x faster at 1-2 rows, 1.2x slower at 3, 1.35-1.5x at 4-32; fp32 with oneDNN held to
    AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 on the same AMD EPYC, half the vector width for its tiles),
    the kernel 1.04-1.11x faster at 4-7 rows, 0.98x at 8, 0.94-0.96x at 12-16 (ad hoc,
    2026-12-04). The kernel streams the weights at the read bandwidth whatever the rows; the
    blocked GEMM's cost per row halves with twice the vector width, so the crossover sits at
    fewer rows on AVX-512. The bf16 hand-over holds in results/skinny_gemm_bfloat16.json
    (AVX512-BF16, 2026-12-07, over the `small` preset's weights): the kernel 1.5x and 1.75x
    oneDNN's speed at 1 and 2 rows, 0.94x at 4, 0.58-0.91x at 8-32. With AMX-BF16 oneDNN's
    bf16 GEMM multiplies up to 16 rows in one pass of its tiles: 1.09x the kernel's time at 1
    row, 0.82x at 2, 0.65x at 4 (results/skinny_gemm_bfloat16_amx.json, an Intel Xeon VM):
    the kernel keeps 1 row."""
    features = cpu_features()
    return {
        torch.bfloat16: 1 if features["amx_bf16"] else 4,
        torch.float32: 4 if features["avx512f"] else 8,
    }


SKINNY_ROWS_WITH_PREPACKED = _skinny_rows_with_prepacked()


def linear(x: torch.Tensor, weight: Linear) -> torch.Tensor:
    """x [M, in] @ weight[out, in]^T: F.linear's result.

    A prepacked weight (bf16 or fp32 on a CPU device, `weights.PrepackedWeight`) goes to
    oneDNN with its blocked copy, or for a row or few to the skinny kernel. Otherwise (torch
    without oneDNN's prepacking ops, or another dtype):

    Decode batches (few rows) on a CPU device go to the skinny-GEMM kernel, which streams the
    weights at the machine's read bandwidth. Past it, while the weights are most of the bytes
    the GEMM moves (M * (in + out) < out * in), the weight-major form (weight @ x^T)^T, which
    this CPU's BLAS runs faster than F.linear there (benchmarks/skinny_gemm.py); beyond that
    (prefills), F.linear: the weight-major form's transposed copy of the output then costs more
    than its layout saves (up to 1.4x slower at a 3,600-token prefill of SmolLM2's MLP here).
    The weight-major form is for fp32 only: in bf16, oneDNN's F.linear is as fast or faster at
    every M past the kernel (benchmarks/results/skinny_gemm_bfloat16.json) and needs no copy.
    """
    if isinstance(weight, PrepackedWeight):
        if x.shape[0] <= SKINNY_ROWS_WITH_PREPACKED[x.dtype]:
            out = skinny_linear(x, weight.weight)
            if out is not None:
                return out
        return _blocked_linear(x, weight)
    out = skinny_linear(x, weight)
    if out is not None:
        return out
    rows, (features_out, features_in) = x.shape[0], weight.shape
    weight_major = rows * (features_in + features_out) < features_out * features_in
    if weight_major and x.dtype == torch.float32:
        return torch.mm(weight, x.t()).t().contiguous()
    return F.linear(x, weight)


def linear_add(x: torch.Tensor, weight: Linear, residual: torch.Tensor) -> torch.Tensor:
    """residual + x @ weight^T (the layer's two residual adds). Where oneDNN's blocked GEMM
    runs (a prepacked weight past the skinny kernel's rows) the add is its output's post-op:
    sums and residual added in fp32, rounded once, with no second pass over [M, h] nor a
    fresh [M, h] tensor (a 32 x 128-token bf16 prefill of SmolLM2 spent 31-33 ms of ~700 in
    the separate adds on the AMX VM, torch's profiler; side by side 1.04x faster, paired
    median of 16 alternating runs on that noisy VM, ad hoc)."""
    if (
        isinstance(weight, PrepackedWeight)
        and x.shape[0] > SKINNY_ROWS_WITH_PREPACKED[x.dtype]
        and residual.dtype == x.dtype
        and residual.is_contiguous()
    ):
        return _blocked_linear(x, weight, residual)
    return residual + linear(x, weight)


EXACT_ROWS = 64  # up to this many rows oneDNN's GEMM runs at the rows it is given


def blocked_rows(rows: int) -> int:
    """The rows oneDNN's prepacked GEMM runs `rows` rows at: itself up to EXACT_ROWS (decode
    batches, which repeat step after step), then rounded up to one of 16 steps per octave
    (at most 1/16 more rows; 176 sizes up to 8,192 tokens).

    oneDNN builds (JIT-compiles) a GEMM for each new row count on its first call and caches
    it: on the AMX VM a bf16 GEMM of SmolLM2's shapes took 0.4-0.5 ms on its first call at
    2-17 rows, 1-1.3 ms at 33-73, 2.5-8 ms at 257-1,000, against 0.05-0.4 / 0.1-0.4 / 0.3-3 ms
    once built (fp32: ~0.5 ms more on a first call); a prefill-bearing step of the `small`
    preset with a new token count took 33-43 ms where the same step took 22-28 ms again
    (ad hoc, 2026-12-06). Served prompts make a new token count at nearly every
    prefill-bearing step, and the cache holds 1,024 GEMMs (ONEDNN_PRIMITIVE_CACHE_CAPACITY)
    at ~4 per row count, so past a few hundred distinct counts they would be built again and
    again. Rounded, the counts are few and each is built once, for at most 1/16 more rows."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 5)  # 16 steps from one power of two to the next
    return -(-rows // step) * step


def _blocked_linear(
    x: torch.Tensor, weight: PrepackedWeight, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """oneDNN's prepacked GEMM (plus `residual`, added as its output's post-op) at
    `blocked_rows` rows: the inputs padded with zero rows where that is more, the output's
    rows beyond x's left off (a view of its first rows, contiguous). Rows are independent in
    a GEMM, so the padding changes no other row's numbers."""
    rows = x.shape[0]
    padded = blocked_rows(rows)
    if padded != rows:
        x = _with_zero_rows(x, padded)
        residual = None if residual is None else _with_zero_rows(residual, padded)
    if residual is None:
        out = torch.ops.mkldnn._linear_pointwise(x, weight.blocked, None, "none", [], "")
    else:
        out = torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight.blocked, None, "add")
    return out if padded == rows else out[:rows]


def build_blocked_gemms(
    layer: LayerWeights, max_rows: int, budget_s: float = math.inf
) -> tuple[int, int]:
    """Build oneDNN's GEMMs of a layer's prepacked weights at every row count past
    EXACT_ROWS that `blocked_rows` gives up to `max_rows` (the tokens of an iteration), as the
    layers call them (QKV and gate/up plain, O and down with the residual add), on zero
    inputs: oneDNN keys a built GEMM by its shapes, not its weights, so one layer builds every
    layer's. Smallest first, until `budget_s` seconds have passed (a large model's GEMMs at
    thousands of rows take seconds each to run on a few cores; the sizes left are built when
    first used). Returns (row counts built, row counts there are); (0, 0) where the weights are
    not prepacked. What an engine does before serving (`LLMEngine.warm_up`)."""
    if not all(isinstance(getattr(layer, gemm), PrepackedWeight) for gemm in LAYER_GEMMS):
        return 0, 0
    sizes = sorted({blocked_rows(m) for m in range(EXACT_ROWS + 1, max_rows + 1)})
    hidden, intermediate = layer.o.shape[0], layer.down.shape[1]
    dtype = layer.input_norm.dtype
    deadline = time.perf_counter() + budget_s
    for built, rows in enumerate(sizes, start=1):
        h = torch.zeros(rows, hidden, dtype=dtype)
        linear(h, layer.qkv)
        linear_add(torch.zeros(rows, layer.o.shape[1], dtype=dtype), layer.o, h)
        linear(h, layer.gate_up)
        linear_add(torch.zeros(rows, intermediate, dtype=dtype), layer.down, h)
        if time.perf_counter() > deadline:
            return built, len(sizes)
    return len(sizes), len(sizes)


def _with_zero_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    out = t.new_empty((rows, *t.shape[1:]))
    out[: t.shape[0]] = t
    out[t.shape[0] :].zero_()
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    fused = fused_rms_norm(x, weight, eps)
    return fused if fused is not None else torch_rms_norm(x, weight, eps)


# torch's expressions of the fused ops: what runs where `cpu_kernel`'s fused op does not apply
# (another device or dtype, no compiled module); the tests and benchmarks.fused_ops compare
# the fused ops against them.
def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def torch_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x [..., D] with cos, sin broadcast to it."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def torch_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up of gate_up [..., 2I] = [gate | up]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class Rotary:
    """Rotary position embedding (rotate-half convention), with Llama-3.1 frequency scaling."""

    def __init__(self, spec: ModelSpec, device: torch.device):
        dim = spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        scaling = spec.rope_scaling or {}
        if scaling.get("rope_type", scaling.get("type")) == "llama3":
            inv_freq = _llama3_scaled(inv_freq, scaling)
        self.inv_freq = inv_freq.to(device)
        self.device = device
        self._cos = self._sin = torch.empty(0, dim, device=device)
        # The cos/sin rows of the last few positions tensors (one per sub-batch of an
        # iteration): every layer rotates q and k at the same positions, so an iteration
        # gathers them once instead of 2 x layers times (~80 us a call on a CPU).
        self._recent: list[tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor]] = []

    def _ensure(self, length: int) -> None:
        if self._cos.shape[0] >= length:
            return
        size = max(length, 2 * self._cos.shape[0], 256)
        t = torch.arange(size, dtype=torch.float64, device=self.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self._cos, self._sin = emb.cos().float(), emb.sin().float()

    def rows(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin [T, 1, head_dim] at `positions`, in `dtype` (positions are never written
        in place, so the same tensor object means the same positions)."""
        for seen, seen_dtype, cos, sin in self._recent:
            if seen is positions and seen_dtype == dtype:
                return cos, sin
        self._ensure(int(positions.max()) + 1 if positions.numel() else 1)
        cos = self._cos[positions].unsqueeze(1).to(dtype)
        sin = self._sin[positions].unsqueeze(1).to(dtype)
        self._recent = [(positions, dtype, cos, sin), *self._recent[:3]]
        return cos, sin

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, head_dim]; positions: [T]."""
        cos, sin = self.rows(positions, x.dtype)
        fused = fused_rotary(x, cos, sin)
        return fused if fused is not None else torch_rotary(x, cos, sin)


def _llama3_scaled(inv_freq: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Llama-3.1's piecewise rescaling of RoPE frequencies (long wavelengths slowed by factor)."""
    factor = cfg["factor"]
    low, high = cfg.get("low_freq_factor", 1.0), cfg.get("high_freq_factor", 4.0)
    old_len = cfg.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(medium, smoothed, scaled)


def pre_projection(
    spec: ModelSpec, w: LayerWeights, rotary: Rotary, hidden: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [T, h] -> q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D] (rotary applied), as views
    whose rows are strided (q and k share one rotated tensor, v is a slice of the projection):
    the host kernels and the KV write read them in place (heads contiguous within a row)."""
    x = rms_norm(hidden, w.input_norm, spec.rms_norm_eps)
    qkv = linear(x, w.qkv)
    if w.qkv_bias is not None:
        qkv = qkv + w.qkv_bias
    # q's and k's heads sit side by side in each row: one rotary pass over both (each head is
    # rotated on its own, so the values are those of one pass per tensor, in half the calls).
    heads, dim = spec.num_heads, spec.head_dim
    qk = qkv[:, : spec.q_size + spec.kv_size].view(-1, heads + spec.num_kv_heads, dim)
    qk = rotary(qk, positions)
    v = qkv[:, spec.q_size + spec.kv_size :].view(-1, spec.num_kv_heads, dim)
    return qk[:, :heads], qk[:, heads:], v


def post_projection(
    spec: ModelSpec, w: LayerWeights, attn_out: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """attn_out [T, Hq*D] and the layer's input -> the layer's output [T, h]."""
    h = linear_add(attn_out, w.o, residual)
    x = rms_norm(h, w.post_norm, spec.rms_norm_eps)
    gate_up = linear(x, w.gate_up)
    act = fused_silu_mul(gate_up)
    if act is None:
        act = torch_silu_mul(gate_up)
    return linear_add(act, w.down, h)
