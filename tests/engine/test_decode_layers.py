"""A decode-only iteration's layers in one compiled call equal the stage-by-stage path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neo_engine.config import LoadSettings
from neo_engine.cpu_kernel import load_extension
from neo_engine.decode_layers import FusedDecodeLayers
from neo_engine.executor import Executor
from neo_engine.kv_cache import KVPool
from neo_engine.layers import SKINNY_ROWS_WITH_PREPACKED
from neo_engine.weights import can_prepack, prepack, random_weights
from neo_sim.lanes import Lane, Task
from neo_sim.scheduler.kv import KVManager
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, SubBatch

CPU = torch.device("cpu")
BLOCK = 16
POOL_BLOCKS = 256  # room for 73 requests of up to 70 tokens


def _executors(spec, dtype):
    """Two executors over one model, fused and stage by stage, each with its own KV pools."""
    weights = random_weights(spec, dtype, CPU, seed=3)
    for layer in weights.layers:  # norms other than ones, so that their weights count
        for norm in (layer.input_norm, layer.post_norm):
            norm.copy_(
                1 + 0.1 * torch.randn(norm.shape, generator=torch.Generator().manual_seed(1))
            )
    weights = prepack(weights)
    made = []
    for fuse in (True, False):
        pools = [KVPool(spec, POOL_BLOCKS, BLOCK, dtype, CPU) for _ in range(2)]
        made.append(Executor(spec, weights, CPU, *pools, fuse_decode_layers=fuse))
    return made


def _applies(dtype) -> bool:
    return load_extension() is not None and can_prepack(dtype, CPU)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "qkv-bias"])
@pytest.mark.parametrize("batch", [1, 5, 37, 73])
def test_fused_layers_give_the_stage_by_stage_logits_and_kv(dtype, bias, batch):
    if not _applies(dtype):
        pytest.skip(f"no compiled host kernels or no oneDNN prepacking for {dtype} here")
    spec = dataclasses.replace(LoadSettings("dummy:tiny").model_spec(), qkv_bias=bias)
    fused, staged = _executors(spec, dtype)
    assert fused.fused_layers is not None and staged.fused_layers is None
    # The batch sizes cover the skinny kernel's rows (1, on every CPU), oneDNN's (37) and
    # oneDNN's at padded row counts (73 runs at 76: `layers.blocked_rows`).
    assert SKINNY_ROWS_WITH_PREPACKED[dtype] < 37
    gen = torch.Generator().manual_seed(batch)
    lengths = {rid: int(torch.randint(3, 70, (1,), generator=gen)) for rid in range(batch)}
    tokens = {
        rid: torch.randint(0, spec.vocab_size, (n,), generator=gen).tolist()
        for rid, n in lengths.items()
    }
    results = []
    for executor in (fused, staged):
        kv = KVManager(POOL_BLOCKS, POOL_BLOCKS, BLOCK)
        for rid, n in lengths.items():
            kv.gpu.grow(rid, n)
        # prefill every prompt but its last token (stage by stage in both), then decode it
        prefill = Plan(
            0,
            Mode.SEQUENTIAL,
            (SubBatch(prefills=tuple(PrefillWork(r, 0, n - 1) for r, n in lengths.items())),),
        )
        executor.run(prefill, tokens, kv)
        decode = Plan(
            1,
            Mode.SEQUENTIAL,
            (SubBatch(gpu_decodes=tuple(DecodeWork(r, n) for r, n in lengths.items())),),
        )
        result = executor.run(decode, tokens, kv)
        results.append((result, executor.gpu_pool))
    (fused_result, fused_pool), (staged_result, staged_pool) = results
    assert fused_result.request_ids == staged_result.request_ids
    assert torch.equal(fused_result.logits, staged_result.logits)
    assert torch.equal(fused_pool.k, staged_pool.k) and torch.equal(fused_pool.v, staged_pool.v)
    # one span per layer on the device lane, laid end to end, in place of PRE/GPU_ATTN/POST
    layers = [s for s in fused_result.spans if s.task == Task.LAYER]
    assert [s.layer for s in layers] == list(range(spec.num_layers))
    assert all(s.lane == Lane.GPU and s.duration_s > 0 for s in layers)
    assert not any(s.task in (Task.PRE, Task.GPU_ATTN, Task.POST) for s in fused_result.spans)
    assert {s.task for s in staged_result.spans} >= {Task.PRE, Task.GPU_ATTN, Task.POST}


def test_plans_with_prefills_run_stage_by_stage():
    if not _applies(torch.float32):
        pytest.skip("no compiled host kernels or no oneDNN prepacking here")
    spec = LoadSettings("dummy:tiny").model_spec()
    fused, _ = _executors(spec, torch.float32)
    kv = KVManager(POOL_BLOCKS, POOL_BLOCKS, BLOCK)
    kv.gpu.grow(0, 20)
    kv.gpu.grow(1, 9)
    tokens = {0: [5] * 20, 1: [7] * 9}
    plan = Plan(
        0,
        Mode.SEQUENTIAL,
        (SubBatch(prefills=(PrefillWork(0, 0, 20),), gpu_decodes=(DecodeWork(1, 9),)),),
    )
    spans = fused.run(plan, tokens, kv).spans
    assert not any(s.task == Task.LAYER for s in spans)
    assert any(s.task == Task.PRE for s in spans)


def test_unprepacked_weights_are_not_fused():
    if load_extension() is None:
        pytest.skip("no compiled host kernels here")
    spec = LoadSettings("dummy:tiny").model_spec()
    weights = random_weights(spec, torch.float32, CPU)  # plain weights: `layers.linear`'s
    pool = KVPool(spec, 16, BLOCK, torch.float32, CPU)  # other paths, which this does not run
    assert FusedDecodeLayers.build(spec, weights, CPU, pool) is None
    packed = prepack(weights) if can_prepack(torch.float32, CPU) else None
    if packed is not None:
        assert FusedDecodeLayers.build(spec, packed, CPU, pool) is not None
        bf16_pool = KVPool(spec, 16, BLOCK, torch.bfloat16, CPU)  # KV in another dtype
        assert FusedDecodeLayers.build(spec, packed, CPU, bf16_pool) is None
