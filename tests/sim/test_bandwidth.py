"""A measured profile at another memory read bandwidth (`neo_sim.bandwidth`), and a simulation
whose clock prices iterations with a cost model that changes over time (`clock_cost`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from neo_sim.bandwidth import at_bandwidth, streaming_efficiency
from neo_sim.errors import NeoError
from neo_sim.operators import operator
from neo_sim.opwork import work
from neo_sim.profile import Samples1D, load_profile
from neo_sim.profiled import ProfiledCostModel
from neo_sim.scheduler import SchedulerConfig
from neo_sim.simulator import simulate
from neo_sim.workload import RequestSpec

SHIPPED = Path(__file__).resolve().parents[2] / "profiles" / "cpu-2core-vm__small.json"
PROFILED_GBS = 50.0


@pytest.fixture(scope="module")
def profile():
    """The shipped CPU profile, stamped as measured at PROFILED_GBS (it predates the probe)."""
    shipped = load_profile(SHIPPED)
    machine = {**shipped.provenance.machine, "read_gbs": PROFILED_GBS}
    return dataclasses.replace(
        shipped, provenance=dataclasses.replace(shipped.provenance, machine=machine)
    )


def _linear_points(profile):
    s = profile.samples["linear"]
    assert isinstance(s, Samples1D)
    return [(x, t, work("linear", profile.model, x).num_bytes) for x, t in zip(s.xs, s.seconds)]


def test_streaming_efficiency_is_the_best_fraction_of_the_bandwidth_a_sample_reached(profile):
    efficiency = streaming_efficiency(profile)
    assert set(efficiency) == set(profile.samples)
    best = max(b / t / (PROFILED_GBS * 1e9) for _, t, b in _linear_points(profile))
    assert efficiency["linear"] == pytest.approx(best)
    assert 0 < efficiency["linear"] < 1  # the projections stream from DRAM, below the probe


def test_at_the_profiled_bandwidth_or_above_the_profile_is_unchanged(profile):
    for gbs in (PROFILED_GBS, 2 * PROFILED_GBS):
        again = at_bandwidth(profile, gbs)
        for op, s in profile.samples.items():
            if isinstance(s, Samples1D):
                assert again.samples[op].seconds == pytest.approx(s.seconds, rel=1e-12)
            else:
                for row, same in zip(s.seconds, again.samples[op].seconds):
                    assert same == pytest.approx(row, rel=1e-12)


def test_at_a_lower_bandwidth_a_sample_slows_only_where_its_bytes_no_longer_fit(profile):
    """Half the bandwidth: the sample that streamed at the operator's best doubles; one that
    read at under half that rate (bound by compute or overheads) keeps its time; each takes
    max(its time, bytes / (efficiency x bandwidth))."""
    half = at_bandwidth(profile, PROFILED_GBS / 2)
    efficiency = streaming_efficiency(profile)["linear"]
    points = _linear_points(profile)
    slowed = half.samples["linear"].seconds
    rates = [b / t for _, t, b in points]
    fastest = rates.index(max(rates))
    assert slowed[fastest] == pytest.approx(2 * points[fastest][1])
    for (_, t, b), new in zip(points, slowed):
        assert new == pytest.approx(max(t, b / (efficiency * PROFILED_GBS / 2 * 1e9)))
        if b / t < max(rates) / 2:
            assert new == t
    # The 2-D decode attention follows the same rule.
    attn = profile.samples["gpu_decode_attn"]
    spec = operator("gpu_decode_attn")
    eff = streaming_efficiency(profile)["gpu_decode_attn"]
    b, c = attn.batch[-1], attn.context_len[-1]
    t = attn.seconds[-1][-1]
    nbytes = work("gpu_decode_attn", profile.model, *spec.from_axes(b, c)).num_bytes
    expected = max(t, nbytes / (eff * PROFILED_GBS / 2 * 1e9))
    assert half.samples["gpu_decode_attn"].seconds[-1][-1] == pytest.approx(expected)


def test_a_profile_without_a_measured_bandwidth_is_refused(profile):
    shipped = load_profile(SHIPPED)
    with pytest.raises(NeoError, match="read_gbs"):
        at_bandwidth(shipped, 30.0)
    with pytest.raises(NeoError, match="> 0"):
        at_bandwidth(profile, 0.0)


def test_the_clock_cost_prices_iterations_while_the_policy_plans_with_the_run_cost(profile):
    """`clock_cost`: the clock takes each iteration's time from the cost model returned for
    its start; the policy still plans with `cost`. A constant clock cost equals giving the
    policy the planning cost and the simulation the slow one; a clock that turns slow half
    way lands between the two."""
    from neo_sim.scheduler import make_policy

    cost = ProfiledCostModel(profile)
    slow = ProfiledCostModel(at_bandwidth(profile, PROFILED_GBS / 3))
    config = SchedulerConfig(num_gpu_blocks=40, num_cpu_blocks=400, max_batch_tokens=512)
    workload = [RequestSpec(i, 0.05 * i, 60, 12) for i in range(30)]
    fast_run = simulate("neo", config, cost, workload)
    slow_clock = simulate("neo", config, cost, workload, clock_cost=lambda t: slow)
    planned_fast = simulate(make_policy("neo", config, cost), config, slow, workload)
    finish = lambda r: max(q.finish_s for q in r.metrics.requests)  # noqa: E731
    assert finish(slow_clock) == pytest.approx(finish(planned_fast), rel=1e-12)
    assert finish(slow_clock) > finish(fast_run)
    midway = finish(fast_run) / 2
    switching = simulate(
        "neo", config, cost, workload, clock_cost=lambda t: cost if t < midway else slow
    )
    assert finish(fast_run) < finish(switching) < finish(slow_clock)
