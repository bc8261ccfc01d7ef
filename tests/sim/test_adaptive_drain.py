"""Adaptive's rule 7, the drain: once arrivals stop, the finite queue goes longest output
first, and GPU residents near their end trade places with requests off the GPU that have more
to go, where the copies cost less than the drain they save (docs/architecture.md, rule 7)."""

from __future__ import annotations

import math

import pytest

from neo_sim.runs import RunSpec, execute
from neo_sim.scheduler import Mode, Plan, Request
from neo_sim.scheduler.adaptive import AdaptivePolicy, _margin
from neo_sim.scheduler.request import RequestState
from neo_sim.workload import RequestSpec
from tests.sim.test_apex_adaptive import _a10g_cell, _g5_2xlarge_policy


def test_the_margin_is_the_drains_economic_order_quantity():
    """sqrt(2 W c / h): 8,000 tokens off the GPU, 15 ms copies, 46 ms steps: ~72 tokens; four
    times the work or copies twice as dear raise it by 2x and 1.41x; no step, no exchange."""
    m = _margin(8000, 0.015, 0.046)
    assert m == pytest.approx(72.2, abs=0.1)
    assert _margin(32000, 0.015, 0.046) == pytest.approx(2 * m)
    assert _margin(8000, 0.030, 0.046) == pytest.approx(math.sqrt(2) * m)
    assert _margin(8000, 0.015, 0.0) == math.inf


def test_arrivals_stop_after_a_silence_a_poisson_stream_rarely_shows():
    """Ten arrivals 1 s apart: stopped once no other has come for ln(100) = 4.6 mean gaps
    (a Poisson stream at that rate is that silent with probability 1%). Arrivals all at one
    instant (offline) have stopped as soon as the clock moves past it."""
    policy = _g5_2xlarge_policy()
    policy.add([Request(i, 100, 10, arrival_s=float(i)) for i in range(10)])
    assert not policy._arrivals_stopped(9.0 + 4.5)
    assert policy._arrivals_stopped(9.0 + 4.7)
    offline = _g5_2xlarge_policy()
    offline.add([Request(i, 100, 10, arrival_s=0.0) for i in range(3)])
    assert not offline._arrivals_stopped(0.0)
    assert offline._arrivals_stopped(1e-6)


def test_under_a_ttft_slo_arrivals_stop_after_a_silence_rare_over_the_whole_stream():
    """Ten arrivals 1 s apart under a TTFT SLO: a silence a Poisson stream shows after any of
    its ten gaps with probability 1% (ln(100 x 10) = 6.9 mean gaps), not after one."""
    policy = _g5_2xlarge_policy(slo_ttft_s=1.0)
    policy.add([Request(i, 100, 10, arrival_s=float(i)) for i in range(10)])
    assert not policy._arrivals_stopped(9.0 + 4.7)
    assert not policy._arrivals_stopped(9.0 + 6.8)
    assert policy._arrivals_stopped(9.0 + 7.0)


@pytest.mark.parametrize(
    ("gap_s", "settings", "first"),
    [
        (0.0, {}, 1),  # all at once, the clock past them: longest output first
        (0.5, {}, 0),  # arrivals still coming (0.5 s apart, 0.1 s ago): first come
        (0.0, {"slo_tpot_s": 1.0}, 0),  # under an SLO the rule does not act
    ],
)
def test_once_arrivals_stop_the_queue_goes_longest_output_first(gap_s, settings, first):
    """Three 600-token prompts (one fits the 1,024-token budget) with 10, 300 and 50 output
    tokens."""
    policy = _g5_2xlarge_policy(**settings)
    outputs = (10, 300, 50)
    policy.add([Request(i, 600, n, arrival_s=i * gap_s) for i, n in enumerate(outputs)])
    (prefill,) = policy.step(2 * gap_s + 0.1).prefills
    assert prefill.request_id == first


def test_longest_output_first_shortens_an_offline_batch_whose_long_output_came_last(
    monkeypatch,
):
    """g5.2xlarge, a GPU pool of 4,000 tokens and no host pool, nine requests of 1000 + 100
    tokens and one of 1000 + 900 last, all at once: first come, first served starts the long
    one last, to decode alone for 800 iterations; started first it decodes beside the
    others."""
    spec = RunSpec.of(
        hardware="a10g-g5.2xlarge",
        model="llama-3-8b",
        policy="adaptive-whole",
        num_gpu_blocks=4000 // 16,
        num_cpu_blocks=0,
        timeline_iterations=0,
    )
    workload = [RequestSpec(i, 0.0, 1000, 100) for i in range(9)]
    workload.append(RequestSpec(9, 0.0, 1000, 900))
    ordered = execute(spec, workload).summary["duration_s"]
    monkeypatch.setattr(AdaptivePolicy, "_arrivals_stopped", lambda self, now: False)
    in_arrival_order = execute(spec, workload).summary["duration_s"]
    assert ordered < 0.9 * in_arrival_order


def test_in_the_drain_residents_near_their_end_trade_places_with_host_residents():
    """g5.2xlarge, 1000/400 offline (a policy-map cell): the last host residents waited for
    GPU room until the GPU's own residents finished, and then decoded with the GPU batch
    emptying (docs/architecture.md, "Where an offline cell's last seconds go"); traded for
    the residents nearest their end, the batch stays full to the last seconds. Priced out
    (copies dearer than any drain saves) the rule trades nothing."""
    cell = _a10g_cell("a10g-g5.2xlarge", output_len=400)
    spec = cell.with_(policy="adaptive", iteration_records=True)
    traded = execute(spec)
    swaps = traded.iterations[["swap_out", "swap_in"]]
    assert ((swaps.swap_out > 0) & (swaps.swap_in > 0)).any()  # exchanges: both in one plan
    with pytest.MonkeyPatch.context() as m:
        m.setattr(AdaptivePolicy, "_copy_s", lambda self, leaving, joining: math.inf)
        untraded = execute(spec)
    swaps = untraded.iterations[["swap_out", "swap_in"]]
    assert not ((swaps.swap_out > 0) & (swaps.swap_in > 0)).any()
    assert traded.summary["throughput_tok_s"] > 1.03 * untraded.summary["throughput_tok_s"]


def test_under_a_ttft_slo_the_drains_trades_raise_goodput_without_costing_first_tokens(
    monkeypatch,
):
    """g5.4xlarge, 1000/800 at 1.08 req/s (150% of gpu-only's capacity) under the TTFT map's
    bound (0.457 s): nearly every request gets its first token in time under every
    offloading policy, so goodput is set by when the last one ends; the trades shorten that
    end. Without them adaptive read 0.974x neo's goodput (the TTFT map's worst cell)."""
    spec = _a10g_cell("a10g-g5.4xlarge", rate=1.0832).with_(policy="adaptive", slo_ttft_s=0.457)
    traded = execute(spec).summary
    monkeypatch.setattr(AdaptivePolicy, "_exchanges_for_the_drain", False)
    untraded = execute(spec).summary
    assert traded["goodput_req_s"] > 1.03 * untraded["goodput_req_s"]
    assert traded["slo_met_share"] >= untraded["slo_met_share"]


@pytest.mark.parametrize(
    ("settings", "trades"),
    [({}, True), ({"slo_ttft_s": 5.0}, True), ({"slo_tpot_s": 1.0}, False)],
)
def test_an_exchange_moves_each_request_whole_and_the_resident_takes_the_others_place(
    settings, trades
):
    """Two GPU residents with 3 tokens to go, one parked request with 301 (on the critical
    path: the drain's 307 tokens over two slots are 153.5 a slot), a GPU pool too full to take
    the parked one back (the swap-in watermark): after the exchange the parked one is on the
    GPU with its KV there only, and a resident parked in its place with its KV on the host
    only. Under a TTFT SLO too (every first token is out); not under a TPOT SLO."""
    policy, now = _prefilled_then_parked(59, (4, 4, 302), parked=(2,), **settings)
    near_end, parked = policy.requests[0], policy.requests[2]
    if not trades:
        policy.now = now + 1.0  # arrivals have stopped: only the SLO keeps the trade out
        assert policy._arrivals_stopped(policy.now)
        assert policy._exchange() == ((), ())
        return
    plan = policy.step(now + 1.0)
    assert [s.request_id for s in plan.swap_out] == [0]
    assert [s.request_id for s in plan.swap_in] == [2]
    assert parked.state == RequestState.RUNNING_GPU and near_end.state == RequestState.SWAPPED
    assert policy.kv.gpu.holds(2) and not policy.kv.cpu.holds(2)
    assert policy.kv.cpu.holds(0) and not policy.kv.gpu.holds(0)
    assert sorted(d.request_id for d in plan.gpu_decodes) == [1, 2]


def test_an_exchanges_swaps_out_never_write_what_its_swaps_in_read():
    """Two pairs trade in one plan (three GPU residents with 3 tokens to go, two parked
    requests with 301): the executor copies every swap out before any swap in, so the host
    blocks the swaps out write must not be those the swaps in read. Moved pair by pair, the
    second resident's KV went to the host blocks the first parked request's swap in had just
    freed (the pool hands out the last freed first), overwriting that KV before it was copied
    in: in the engine that request then decoded over the other's KV."""
    policy, now = _prefilled_then_parked(95, (4, 4, 4, 302, 302), parked=(3, 4))
    policy.now = now + 1.0  # arrivals have stopped
    assert policy._arrivals_stopped(policy.now)
    outs, ins = policy._exchange()  # (a step would swap the parked ones in first: room)
    assert len(outs) == len(ins) == 2
    assert not Plan(policy.step_index, Mode.SEQUENTIAL, (), outs, ins).host_blocks_overwritten


def test_no_trade_for_a_request_off_the_critical_path(monkeypatch):
    """One GPU resident with 3 tokens to go and two parked requests with 301: the drain is
    605 tokens for one slot, more than either parked one has left, so whatever the order they
    end when it does, and none trades (`_tokens_per_slot`); held to no such path the
    resident would trade."""
    policy, now = _prefilled_then_parked(64, (4, 302, 302), parked=(1, 2))
    policy.now = now + 1.0  # arrivals have stopped
    assert policy._arrivals_stopped(policy.now)
    assert policy._exchange() == ((), ())
    monkeypatch.setattr(AdaptivePolicy, "_tokens_per_slot", staticmethod(lambda *_: 0.0))
    outs, ins = policy._exchange()
    assert [s.request_id for s in outs] == [0] and len(ins) == 1


def test_trading_only_for_the_critical_path_keeps_requests_ending(monkeypatch):
    """g5.4xlarge, 1000/400 offline at the CLI's 4,096-token budget (a cell of the budget-4096
    policy map): trading for any request with more to go, with 160 requests off the GPU
    beside its 40, sent residents near their end off the GPU, where they waited, and no
    request ended from 53 s to 93 s: 0.984x neo's throughput. Trading only for requests on
    the run's critical path: above neo's."""
    spec = _a10g_cell("a10g-g5.4xlarge", output_len=400).with_(max_batch_tokens=4096)
    neo = execute(spec.with_(policy="neo")).summary["throughput_tok_s"]
    critical = execute(spec.with_(policy="adaptive")).summary["throughput_tok_s"]
    monkeypatch.setattr(AdaptivePolicy, "_tokens_per_slot", staticmethod(lambda *_: 0.0))
    any_longer = execute(spec.with_(policy="adaptive")).summary["throughput_tok_s"]
    assert any_longer < 0.99 * neo < neo < critical
    assert critical > 1.03 * any_longer


def _prefilled_then_parked(
    num_gpu_blocks: int, output_lens: tuple[int, ...], parked: tuple[int, ...], **settings
) -> tuple[AdaptivePolicy, float]:
    """adaptive-whole on g5.2xlarge (`_g5_2xlarge_policy`, a host pool of 1,000 blocks and a
    GPU pool of `num_gpu_blocks`) with one 300-token prompt per entry of `output_lens`, all
    arrived at 0 and prefilled on the GPU; then the requests `parked` parked by hand (their
    KV to the host). Returns the policy and its clock (past every arrival)."""
    policy = _g5_2xlarge_policy(num_gpu_blocks=num_gpu_blocks, num_cpu_blocks=1000, **settings)
    policy.add([Request(i, 300, n, arrival_s=0.0) for i, n in enumerate(output_lens)])
    now = 0.0
    while policy.waiting or len(policy.gpu_running) < len(output_lens):
        plan = policy.step(now)
        policy.complete(plan)
        now += plan.predicted_s
    for request_id in parked:
        r = policy.requests[request_id]
        policy._move_kv(r, to_gpu=False)
        del policy.gpu_running[request_id]
        policy.swapped[request_id] = r
        r.state = RequestState.SWAPPED
    return policy, now
