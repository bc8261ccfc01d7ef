"""NEO-specific behaviour: offloading under KV pressure, slack, and the starvation bound."""

from __future__ import annotations

import math
import random

import pytest

from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS
from neo_sim.runs import RunSpec, execute
from neo_sim.scheduler import Device, Mode, Request, SchedulerConfig, make_policy
from neo_sim.scheduler.base import Policy
from neo_sim.scheduler.gpu_only import GpuOnlyPolicy
from neo_sim.scheduler.neo import NeoPolicy


def run_load(policy, rng, steps: int, rate_per_step: float, prompt=(300, 440), out=(20, 300)):
    """Sustained load: Poisson-ish arrivals per step; returns the longest wait (in steps)
    between two progress steps of any CPU-resident request, and the plans."""
    next_id, longest, plans = 0, 0, []
    last_seen: dict[int, int] = {}
    for step in range(1, steps + 1):
        for _ in range(int(rate_per_step) + (rng.random() < rate_per_step % 1)):
            policy.add(Request(next_id, rng.randint(*prompt), rng.randint(*out)))
            next_id += 1
        plan = policy.step()
        plans.append(plan)
        ran = {d.request_id for d in plan.cpu_decodes} | {p.request_id for p in plan.prefills}
        for rid in policy.cpu_running:
            if rid in ran or rid not in last_seen:
                last_seen[rid] = step
            longest = max(longest, step - last_seen[rid])
        for rid in list(last_seen):
            if rid not in policy.cpu_running:
                del last_seen[rid]
        policy.complete(plan)
    return longest, plans


def t4_config(**overrides):
    base = dict(
        num_gpu_blocks=54,
        num_cpu_blocks=4000,
        max_batch_tokens=832,
        max_batch_size=256,
        max_num_seqs=512,
    )
    return SchedulerConfig(**(base | overrides))


def test_neo_offloads_under_kv_pressure_and_beats_gpu_only_offline():
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    results = {}
    for name in ("gpu-only", "neo"):
        policy = make_policy(name, t4_config(), cost)
        rng = random.Random(7)
        policy.add(Request(i, rng.randint(330, 410), rng.randint(30, 60)) for i in range(120))
        clock, cpu_decodes, pipelined = 0.0, 0, 0
        while policy.has_work:
            plan = policy.step(clock)
            clock += plan.predicted_s
            cpu_decodes += len(plan.cpu_decodes)
            pipelined += plan.mode == Mode.PIPELINED
            policy.complete(plan)
        results[name] = (120 / clock, cpu_decodes, pipelined)
    assert results["gpu-only"][1] == 0 and results["gpu-only"][2] == 0
    assert results["neo"][1] > 0 and results["neo"][2] > 0
    assert results["neo"][0] > 2 * results["gpu-only"][0]


def test_cpu_placement_follows_fcfs_once_one_prompt_goes_to_cpu():
    from neo_sim.scheduler.base import Budget

    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    policy = make_policy("neo", t4_config(num_gpu_blocks=60, max_batch_tokens=4096), cost)
    # 400 tokens fit the 960-token GPU pool, 700 more do not: the second prompt goes to the CPU,
    # and the third (small enough for the GPU) follows it there, for fairness (step 3).
    policy.add([Request(0, 400, 10), Request(1, 700, 10), Request(2, 20, 10)])
    placed = [(r.request_id, d) for r, d in policy._admit(Budget(256, 4096))]
    assert placed == [(0, Device.GPU), (1, Device.CPU), (2, Device.CPU)]


def test_chunked_prompts_keep_their_pool_and_a_host_prompt_an_iteration_holds_goes_whole():
    """With 64-token chunks: a prompt cut at the end of a step's budget goes on, first in line,
    in the pool its first chunk chose; a host-placed prompt that one iteration holds whole is
    not cut (it waits a step rather than be committed to the host by a chunk), while a longer
    one goes to the host in chunks, each within the iteration's 64 tokens."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = t4_config(num_gpu_blocks=4, block_size=16, chunked_prefill_tokens=64)
    policy = make_policy("neo", config, cost)
    policy.add([Request(0, 40, 30), Request(1, 50, 4), Request(2, 150, 4), Request(3, 30, 4)])
    works: dict[int, list] = {}
    while policy.has_work:
        plan = policy.step()
        assert plan.num_tokens <= 64
        for p in plan.prefills:
            works.setdefault(p.request_id, []).append((p.start, p.end, p.kv_device))
            if p.end < policy.requests[p.request_id].seq_len:
                assert policy.waiting[0].request_id == p.request_id
        policy.complete(plan)
    assert works[0] == [(0, 40, Device.GPU)]
    assert works[1] == [(0, 50, Device.CPU)]  # 24 tokens were left in the first step
    chunks = works[2]
    assert len(chunks) > 2 and {d for *_, d in chunks} == {Device.CPU}
    assert [s for s, *_ in chunks[1:]] == [e for _, e, _ in chunks[:-1]] and chunks[-1][1] == 150


def test_a_prompt_part_way_through_its_chunks_stays_first_when_a_resident_is_recomputed():
    """With no host pool, a GPU resident that cannot grow is recomputed and queued again;
    the prompt whose first chunks hold most of the GPU pool stays ahead of it, so it finishes
    and frees the pool (queued behind it, neither could ever run: found by the property tests,
    hypothesis's falsifying example)."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = t4_config(
        num_gpu_blocks=44,
        num_cpu_blocks=0,
        block_size=4,
        max_batch_size=8,
        max_num_seqs=20,
        max_batch_tokens=64,
        cpu_prefill_min_tokens=0,
        max_cpu_wait_steps=1,
        chunked_prefill_tokens=64,
    )
    lengths = [(1, 1), (1, 1), (1, 33), (1, 1), (77, 25), (1, 1), (1, 1), (91, 3), (1, 1)]
    lengths += [(33, 32), (103, 2), (136, 1)] + [(1, 1)] * 15
    policy = make_policy("neo", config, cost)
    policy.add(Request(i, prompt, new) for i, (prompt, new) in enumerate(lengths))
    recomputed = 0
    for _ in range(500):
        if not policy.has_work:
            break
        plan = policy.step()
        recomputed += len(plan.recomputed)
        policy.complete(plan)
    assert recomputed and not policy.has_work


def _slow_launch_cost():
    # A host whose per-layer CPU launch cost is huge: pipelining rarely pays, so the artifact's
    # rule (run the sequential plan when it serves more) leaves CPU-resident requests idle.
    return RooflineCostModel(MODELS["llama-2-7b"], HW["t4"], Efficiencies(launch_s=6e-3))


def test_starvation_bound_holds_under_sustained_load(monkeypatch):
    """With the artifact's placement (every request that leaves or overflows the GPU becomes
    a host resident), the bound still gets each one a token every `bound` iterations."""
    monkeypatch.setattr(NeoPolicy, "_host_admissions", lambda self, candidates: len(candidates))
    monkeypatch.setattr(NeoPolicy, "_host_pays_for_swapped", lambda self, victim: True)
    bound = 8
    policy = make_policy("neo", t4_config(max_cpu_wait_steps=bound), _slow_launch_cost())
    longest, plans = run_load(policy, random.Random(3), steps=600, rate_per_step=0.25)
    assert any(p.forced_ids for p in plans), "scenario should exercise the bound"
    assert longest <= bound + 1


def test_without_the_bound_cpu_requests_starve():
    policy = make_policy("neo", t4_config(max_cpu_wait_steps=10**9), _slow_launch_cost())
    longest, _ = run_load(policy, random.Random(3), steps=600, rate_per_step=0.25)
    assert longest > 50, "the artifact's rule should starve CPU requests in this scenario"


def test_pipelined_plan_slack_and_prediction_are_consistent():
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    policy = make_policy("neo", t4_config(), cost)
    rng = random.Random(1)
    _, plans = run_load(policy, rng, steps=200, rate_per_step=1.0)
    pipelined = [p for p in plans if p.mode == Mode.PIPELINED]
    assert pipelined
    for p in pipelined:
        assert len(p.sub_batches) == 2 and not p.sub_batches[1].prefills
        assert not p.sub_batches[1].gpu_decodes
        assert p.forced_ids or min(p.slack_s) >= 0
        assert p.predicted_s > 0


def test_a_full_host_pool_is_unblocked_not_reported_as_a_stall():
    """GPU pool too small for any resident, host pool full of CPU decodes that each need one
    more block: NEO drops the newest one's KV (it recomputes later) and the rest go on. The
    simulator once took that KV-only plan for a stall."""
    import math

    from neo_sim.runs import RunSpec, execute

    spec = RunSpec.of(
        hardware="t4",
        model="llama-2-7b",
        policy="neo",
        rate=math.inf,
        num_requests=30,
        input_len=150,
        output_len=200,
        gpu_kv_blocks=20,
        cpu_kv_blocks=60,
        iteration_records=True,
    )
    out = execute(spec)
    assert out.summary["completed"] == 30
    assert (out.requests["preemptions"] > 0).any()


@pytest.mark.parametrize("which", ["roofline", "shipped t4 profile", "t4 on llama-3-8b (scaled)"])
def test_greedy_offers_price_exactly_what_the_builders_would(which):
    """NEO's greedy loop prices "one more CPU decode on the target sub-batch" incrementally
    (`CpuDecodeOffers`): after any sequence of kept and rejected offers, an offer is kept
    exactly when both slacks of builders with the decode added are non-negative or it is
    forced, the next target is the sub-batch with more slack, and `apply` must leave the
    builders holding exactly the kept decodes, in order, priced as the builders price them. On the
    roofline and on profiled cost models, inside their grid and beyond it (contexts to 3,000
    tokens, batches past the grid's largest), where `cpu_decode_attn_at` binds a batch's row."""
    from neo_sim.catalog import resolve_target
    from neo_sim.scheduler.estimate import CpuDecodeOffers, SubBatchBuilder, slacks
    from neo_sim.scheduler.plan import DecodeWork, PrefillWork

    if which == "roofline":
        cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    else:
        cost = resolve_target("t4", "llama-2-7b" if "shipped" in which else "llama-3-8b").cost
    rng = random.Random(3)
    kept_any = rejected_any = forced_any = False
    for _ in range(20):
        pairs = []  # (the builders the offers price, mirrors mutated the slow way)
        prompt = rng.choice((64, 400, 1500))
        for _ in range(2):
            pair = (SubBatchBuilder(cost), SubBatchBuilder(cost))
            pair[0].add_prefill(PrefillWork(0, 0, prompt))
            for rid in range(1, 4):
                pair[0].add_gpu_decode(DecodeWork(rid, 100 * rid))
            pairs.append(pair)
        (b0, b1), (m0, m1) = pairs
        offers = CpuDecodeOffers(b0, b1)
        needs_block = set()
        for rid in range(100, 100 + rng.randint(1, 300)):
            work, force = DecodeWork(rid, rng.randint(10, 3000)), rng.random() < 0.1
            growth = rng.choice((0, 1))
            if growth:
                needs_block.add(rid)
            mirror = (m0, m1)[offers.target]
            mirror.add_cpu_decode(work)
            expected = slacks(m0, m1)
            keep = force or min(expected) >= 0
            before = offers.num_kept
            forced = offers.offer_in_turn(
                [work], [force], _host_pool({rid: work.context_len - 16 * growth}), 1, 1
            )
            assert offers.num_kept - before == keep and forced == ([rid] if keep and force else [])
            if keep:
                assert offers.target == (1 if expected[1] > expected[0] else 0)
                kept_any, forced_any = True, forced_any or min(expected) < 0
            else:
                mirror.pop_cpu_decode()
                rejected_any = True
        # Those kept that need a block are listed on their own sub-batch (commit grows them).
        assert offers.growing == tuple(
            [d for d in k if d.request_id in needs_block] for k in offers.kept
        )
        offers.apply()
        assert (b0.freeze(), b1.freeze()) == (m0.freeze(), m1.freeze())
        assert (b0.times(), b1.times()) == (m0.times(), m1.times())
    assert kept_any and rejected_any and forced_any  # every branch was exercised


def _host_pool(held_tokens: dict[int, int]):
    """A host pool of 16-token blocks where each request holds the blocks of its tokens (the
    offers count a decode's new blocks from them)."""
    from neo_sim.scheduler.kv import BlockPool, blocks_for

    pool = BlockPool(sum(blocks_for(max(0, n), 16) for n in held_tokens.values()), 16, "CPU")
    for rid, tokens in held_tokens.items():
        pool.grow(rid, max(0, tokens))
    return pool


def test_greedy_offers_skip_rules():
    """`offer_in_turn`'s skips, each on its own: a decode not overdue and at least as long as
    one already rejected is not priced, one whose blocks exceed those still free is skipped
    (and does not use them), `room` caps the kept ones, and an overdue one is kept even where
    its slack turns negative (returned as forced)."""
    from neo_sim.catalog import resolve_target
    from neo_sim.scheduler.estimate import CpuDecodeOffers, SubBatchBuilder
    from neo_sim.scheduler.plan import DecodeWork, PrefillWork

    cost = resolve_target("t4", "llama-2-7b").cost

    def offers() -> CpuDecodeOffers:
        b0, b1 = SubBatchBuilder(cost), SubBatchBuilder(cost)
        b0.add_prefill(PrefillWork(0, 0, 300))
        return CpuDecodeOffers(b0, b1)

    def offer(o: CpuDecodeOffers, decodes: list, blocks_free: int, room: int) -> list[int]:
        works, overdue, growth = zip(*decodes)
        held = {w.request_id: w.context_len - 16 * g for w, g in zip(works, growth)}
        return o.offer_in_turn(works, overdue, _host_pool(held), blocks_free, room)

    huge = 10**6  # a context no slack can hide
    o = offers()
    assert (
        offer(o, [(DecodeWork(1, huge), False, 0), (DecodeWork(2, huge + 1), False, 0)], 10, 10)
        == []
    )
    assert o.num_kept == 0
    o = offers()  # the same longer decode, overdue: kept, forced
    assert offer(
        o, [(DecodeWork(1, huge), False, 0), (DecodeWork(2, huge + 1), True, 0)], 10, 10
    ) == [2]
    assert [d.request_id for d in o.kept[0] + o.kept[1]] == [2]
    o = offers()  # a shorter one after a rejection is still priced
    offer(o, [(DecodeWork(1, huge), False, 0), (DecodeWork(2, 50), False, 0)], 10, 10)
    assert [d.request_id for d in o.kept[0] + o.kept[1]] == [2]
    o = offers()  # blocks: 3 free; the second needs 3 more than remain, the third fits
    offer(
        o,
        [
            (DecodeWork(1, 50), False, 2),
            (DecodeWork(2, 50), False, 2),
            (DecodeWork(3, 50), False, 1),
        ],
        3,
        10,
    )
    assert [d.request_id for d in o.kept[0] + o.kept[1]] == [1, 3]
    # The kept ones that need blocks reach the builders, which commit grows only those.
    assert o.growing == o.kept  # both need blocks
    o.apply()
    b0, b1 = o.builders
    assert (b0.cpu_decodes_growing, b1.cpu_decodes_growing) == (b0.cpu_decodes, b1.cpu_decodes)
    (b0 if b0.cpu_decodes else b1).pop_cpu_decode()  # unknown after a pop
    assert None in (b0.cpu_decodes_growing, b1.cpu_decodes_growing)
    o = offers()  # room for two
    offer(o, [(DecodeWork(i, 50), False, 0) for i in range(1, 6)], 10, 2)
    assert o.num_kept == 2


# Llama-3.1-70B on two H100s, all requests at once: a host whose CPU attention is slow next to
# its GPUs, where a host resident that cannot pay for itself costs the most.
H100X2_70B_OFFLINE = dict(
    hardware="h100x2",
    model="llama-3.1-70b",
    rate=math.inf,
    max_batch_tokens=8192,
    timeline_iterations=0,
)


def test_a_prompt_goes_to_the_host_only_where_the_host_pays_for_it(monkeypatch):
    """Llama-3.1-70B on two H100s, long prompts: host attention is slow next to the GPUs.
    Placing every prompt that overflows the GPU pool on the host (the artifact's rule) fills
    the host with residents that the starvation bound then forces into plans slower than the
    GPU's own; with the host-pays test those prompts wait for GPU KV, as under gpu-only."""
    spec = RunSpec.of(**H100X2_70B_OFFLINE, input_len=2600, output_len=300, num_requests=100)
    gpu_only = execute(spec.with_(policy="gpu-only")).summary["throughput_tok_s"]
    neo = execute(spec.with_(policy="neo")).summary
    assert neo["throughput_tok_s"] >= 0.99 * gpu_only
    assert neo["forced_time_share"] < 0.005
    monkeypatch.setattr(NeoPolicy, "_host_admissions", lambda self, candidates: len(candidates))
    artifact = execute(spec.with_(policy="neo")).summary
    assert artifact["throughput_tok_s"] < 0.97 * gpu_only
    assert artifact["forced_time_share"] > 0.01
    assert neo["cpu_served_fraction"] < artifact["cpu_served_fraction"] / 10


def test_a_request_swapped_out_where_the_host_cannot_pay_is_parked(monkeypatch):
    """2x H100 + 70B, outputs that outgrow the GPU pool: a request swapped out of it waits,
    parked, for GPU room (as under gpu-only) instead of becoming a host resident that the
    starvation bound then forces into plans slower than the GPU's own."""
    spec = RunSpec.of(
        **H100X2_70B_OFFLINE,
        input_len=1000,
        output_len=300,
        num_requests=400,
        max_num_seqs=1024,
        max_batch_size=512,
    )
    gpu_only = execute(spec.with_(policy="gpu-only")).summary["throughput_tok_s"]
    neo = execute(spec.with_(policy="neo")).summary
    assert neo["throughput_tok_s"] >= 0.99 * gpu_only
    assert neo["forced_time_share"] == 0
    monkeypatch.setattr(NeoPolicy, "_host_pays_for_swapped", lambda self, victim: True)
    resident = execute(spec.with_(policy="neo")).summary
    assert resident["throughput_tok_s"] < 0.99 * gpu_only
    assert resident["forced_time_share"] > 0.01


def test_residents_keep_their_full_blocks_summed():
    """`Residents.full_blocks` equals the blocks of every resident's full length, recounted,
    after any sequence of sets, replacements, deletions and pops; other mutators refuse."""
    from neo_sim.scheduler.base import Residents

    rng = random.Random(2)
    residents = Residents(16)
    for _ in range(500):
        rid = rng.randrange(20)
        op = rng.random()
        if op < 0.5:
            residents[rid] = Request(rid, rng.randint(1, 300), rng.randint(1, 100))
        elif op < 0.75 and rid in residents:
            del residents[rid]
        else:
            residents.pop(rid, None)
        assert residents.full_blocks == sum(-(-r.max_seq_len // 16) for r in residents.values())
    with pytest.raises(TypeError):
        residents.update({})


@pytest.mark.parametrize("name", ["gpu-only", "neo", "apex", "adaptive"])
def test_a_parked_request_returns_once_the_batch_has_a_slot_for_it(monkeypatch, name):
    """Five requests decode on the GPU and a sixth is parked (swapped out, not a host
    resident); the GPU pool and the batch (8 slots) have room for it, so the next step brings
    it back. NEO's step hands `_swap_in_parked` the budget its running decodes have left, which
    the parked-request check then compared with the running count again: 5 + 1 > 8 - 5 kept
    it parked until at most 3 decoded (the one H100 with long prompts at 150% on the SLO map:
    adaptive 0.985x the best rival)."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    policy = make_policy(name, t4_config(num_gpu_blocks=200, max_batch_size=8), cost)
    monkeypatch.setattr(NeoPolicy, "_host_pays_for_swapped", lambda self, victim: False)
    policy.add(Request(i, 16, 50) for i in range(6))
    while len(policy.gpu_running) < 6 or any(r.is_prefilling for r in policy.gpu_running.values()):
        policy.complete(policy.step())
    parked = policy.gpu_running[5]
    swap = policy._move_to_cpu(parked) if name != "gpu-only" else policy._preempt(parked)
    assert swap is not None and 5 in policy.swapped and len(policy.gpu_running) == 5
    plan = policy.step()
    assert [s.request_id for s in plan.swap_in] == [5]
    assert 5 in policy.gpu_running


@pytest.mark.parametrize("name", ["neo", "adaptive"])
def test_the_kept_next_token_count_equals_a_recount_at_every_call(monkeypatch, name):
    """`_gpu_blocks_after_growth` keeps step 1's count of the GPU residents' next-token blocks
    for the rest of the step (until a swap-in rebuilds `gpu_running` or `_commit` grows it):
    under sustained load on a small GPU pool, with swaps out and back in and chunked prompts,
    every call it answers equals a count taken afresh, and the kept count is used."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = t4_config(num_gpu_blocks=120, chunked_prefill_tokens=256)
    policy = make_policy(name, config, cost)
    kept = NeoPolicy._gpu_blocks_after_growth
    calls = {"asked": 0, "kept": 0}

    def checked(self):
        recount = (
            self.kv.gpu.num_used
            + self._next_token_growth(self.kv.gpu, self.gpu_running.values())[0]
        )
        calls["kept"] += self._next_growth[0] == self.step_index
        calls["asked"] += 1
        answer = kept(self)
        assert answer == recount
        return answer

    monkeypatch.setattr(NeoPolicy, "_gpu_blocks_after_growth", checked)
    _, plans = run_load(policy, random.Random(5), steps=400, rate_per_step=0.6)
    assert any(p.swap_in for p in plans) and any(p.swap_out for p in plans)
    assert calls["kept"] > calls["asked"] / 2 > 100


def _books_under_load(policy) -> list:
    """Each step's plan and the GPU pool's block tables after it, under a seeded stream of
    prompts (300 steps)."""
    rng = random.Random(7)
    seen = []
    for step in range(300):
        if rng.random() < 0.6:
            policy.add(Request(step, rng.randint(200, 440), rng.randint(20, 300)))
        plan = policy.step()
        seen.append((plan, {k: list(v) for k, v in policy.kv.gpu.tables.items()}))
        policy.complete(plan)
    return seen


@pytest.mark.parametrize("name", ["neo", "apex", "adaptive", "adaptive-whole", "symmetric"])
def test_growing_only_the_decodes_that_cross_a_block_keeps_every_block_id(monkeypatch, name):
    """`_commit` grows only the GPU decodes that step 1 counted as crossing a block boundary
    (`_decodes_that_grow`) where the plan decodes every resident counted, else each decode:
    under sustained load on a small GPU pool (swaps both ways, chunked prompts) the plans,
    their swaps' block ids included, and every block table after each step are those of
    growing each decode, and the shortcut is taken in most steps."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    chunk = 0 if name == "symmetric" else 256  # the strawman prefills whole prompts
    config = t4_config(num_gpu_blocks=120, chunked_prefill_tokens=chunk, block_size=4)
    taken: list[bool] = []
    grown = NeoPolicy._decodes_that_grow

    def recorded(self, chosen):
        growing = grown(self, chosen)
        taken.append(growing is not None)
        return growing

    monkeypatch.setattr(NeoPolicy, "_decodes_that_grow", recorded)
    shortcut = _books_under_load(make_policy(name, config, cost))
    monkeypatch.setattr(NeoPolicy, "_decodes_that_grow", lambda self, chosen: None)
    assert shortcut == _books_under_load(make_policy(name, config, cost))
    assert any(p.swap_in for p, _ in shortcut) and any(p.swap_out for p, _ in shortcut)
    assert sum(taken) > len(taken) / 2


def test_gpu_only_grows_only_the_decodes_that_cross_a_block(monkeypatch):
    """gpu-only grows only the decodes that its pass over the GPU residents found crossing a
    block boundary, and keeps `_preempt_until_decodes_fit`'s pass for `_schedule_running`
    where it preempted none and none came back: the plans (swaps' block ids included) and
    every block table are those of a fresh pass growing each decode, under preemptions and
    swap-ins on a small GPU pool."""
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    config = t4_config(num_gpu_blocks=200, block_size=4)  # gpu-only: a request fits the GPU
    schedule = GpuOnlyPolicy._schedule_running
    passed = GpuOnlyPolicy._resident_decodes
    taken: list[bool] = []

    def recorded(self, batch, budget, residents):
        taken.append(residents is not None)
        return schedule(self, batch, budget, residents)

    def each(self, batch, budget, residents):
        return schedule(self, batch, budget, None)

    def growing_each(pool, requests):
        # The reference: each decode grown, its blocks counted as every other policy does.
        residents = passed(pool, requests)
        decodes = [r for r in requests if not r.is_prefilling]
        assert residents.need == Policy._next_token_growth(pool, decodes)[0]
        assert residents.prefilling == [r for r in requests if r.is_prefilling]
        return residents._replace(growing=residents.works)

    monkeypatch.setattr(GpuOnlyPolicy, "_schedule_running", recorded)
    shortcut = _books_under_load(make_policy("gpu-only", config, cost))
    monkeypatch.setattr(GpuOnlyPolicy, "_schedule_running", each)
    monkeypatch.setattr(GpuOnlyPolicy, "_resident_decodes", staticmethod(growing_each))
    assert shortcut == _books_under_load(make_policy("gpu-only", config, cost))
    assert any(p.swap_in for p, _ in shortcut) and any(p.swap_out for p, _ in shortcut)
    assert sum(taken) > len(taken) / 2
