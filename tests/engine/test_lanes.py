"""The executor and the timing model describe an iteration with the same spans."""

from __future__ import annotations

import threading

import pytest
import torch

from neo_engine.config import LoadSettings
from neo_engine.executor import Executor
from neo_engine.kv_cache import KVPool
from neo_engine.weights import random_weights
from neo_sim.costmodel import RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.lanes import Lane, Task, busy_by_lane
from neo_sim.scheduler.kv import KVManager
from neo_sim.scheduler.plan import DecodeWork, Mode, Plan, PrefillWork, SubBatch, Swap
from neo_sim.timing import TimingModel

# Copies that exist only between a real GPU and its host; on a CPU device they are no-ops.
DEVICE_COPIES = {Task.QKV, Task.ATTN_OUT, Task.KV_OFFLOAD}


def key(span):
    return span.lane, span.task, span.layer, span.sub_batch


@pytest.mark.parametrize("overlap", [True, False, None])
def test_executor_and_timing_model_emit_the_same_spans(overlap, monkeypatch):
    spec = LoadSettings("dummy:tiny").model_spec()
    cpu = torch.device("cpu")
    gpu_pool, host_pool = (KVPool(spec, 64, 8, torch.float32, cpu) for _ in range(2))
    workers = []
    new_worker = Executor._new_host_worker
    monkeypatch.setattr(
        Executor, "_new_host_worker", staticmethod(lambda: workers.append(1) or new_worker())
    )
    executor = Executor(
        spec,
        random_weights(spec, torch.float32, cpu),
        cpu,
        gpu_pool,
        host_pool,
        host_overlap=overlap,
    )
    # On a CPU device the lanes share the cores: by default they do not overlap.
    assert executor.host_overlap is bool(overlap)
    assert executor.host_threads == (
        max(1, torch.get_num_threads() // 2) if overlap else torch.get_num_threads()
    )
    kv = KVManager(64, 64, 8)
    lengths = {0: 20, 1: 30, 2: 24, 3: 17, 4: 12}
    for rid in (1, 2):
        kv.gpu.grow(rid, lengths[rid])
    for rid in (3, 4):
        kv.cpu.grow(rid, lengths[rid])
    kv.gpu.grow(0, lengths[0])
    victim = kv.gpu.grow(9, 16)
    parked = kv.cpu.grow(9, 16)
    plan = Plan(
        1,
        Mode.PIPELINED,
        (
            SubBatch(
                prefills=(PrefillWork(0, 0, lengths[0]),),
                gpu_decodes=(DecodeWork(1, 30), DecodeWork(2, 24)),
                cpu_decodes=(DecodeWork(3, 17),),
            ),
            SubBatch(cpu_decodes=(DecodeWork(4, 12),)),
        ),
        swap_out=(Swap(9, 16, tuple(victim), tuple(parked)),),
    )
    tokens = {rid: [1 + rid] * n for rid, n in lengths.items()}
    measured = executor.run(plan, tokens, kv).spans
    assert len(workers) == (1 if overlap else 0)  # inline: the host attention ran on this thread
    assert any(s.task == Task.WAIT for s in measured) is bool(overlap)
    # On a CPU device the host worker lives for one iteration: its OpenMP team, left alive,
    # would slow every later kernel of the calling thread (executor.py says why).
    assert not any(t.name.startswith("neo-host-attn") for t in threading.enumerate())
    assert any(s.lane == Lane.CPU for s in measured)
    executor.close()
    predicted = TimingModel(RooflineCostModel(spec, HW["t4"]), 8).run(plan, record=True).spans

    assert {key(s) for s in measured if s.task != Task.WAIT} == {
        key(s) for s in predicted if s.task not in DEVICE_COPIES
    }
    layers = spec.num_layers
    assert {s.layer for s in measured if s.task == Task.CPU_ATTN} == set(range(layers))
    assert {s.sub_batch for s in measured if s.task == Task.CPU_ATTN} == {0, 1}
    assert all(s.lane == Lane.CPU for s in measured if s.task == Task.CPU_ATTN)
    busy = busy_by_lane(measured)
    assert busy[Lane.GPU] > 0 and busy[Lane.CPU] > 0 and busy[Lane.D2H] > 0
    assert busy[Lane.H2D] == 0.0  # no swap in


def test_the_executor_refuses_swaps_out_that_overwrite_what_swaps_in_read():
    """Every swap out is copied before any swap in: a plan whose swap out writes a host block
    that its swap in reads would hand the request coming in another request's KV, so the
    executor refuses it before copying anything."""
    spec = LoadSettings("dummy:tiny").model_spec()
    cpu = torch.device("cpu")
    gpu_pool, host_pool = (KVPool(spec, 16, 8, torch.float32, cpu) for _ in range(2))
    executor = Executor(spec, random_weights(spec, torch.float32, cpu), cpu, gpu_pool, host_pool)
    plan = Plan(
        7,
        Mode.SEQUENTIAL,
        (SubBatch(),),
        swap_out=(Swap(0, 16, (0, 1), (5, 6)),),
        swap_in=(Swap(1, 16, (6, 7), (0, 1)),),
    )
    assert plan.host_blocks_overwritten == {6}
    host_pool.k.fill_(1.0)  # the device pool's blocks are zeros: a copy out would show
    with pytest.raises(RuntimeError, match=r"plan 7: .*host blocks \[6\]"):
        executor.run(plan, {}, KVManager(16, 16, 8))
    assert bool((host_pool.k == 1.0).all())  # nothing was copied
