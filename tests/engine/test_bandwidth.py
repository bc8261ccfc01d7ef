"""The memory bandwidth probe and its trace through a run (neo_engine/bandwidth.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class CountingProbe:
    def __init__(self) -> None:
        self.calls = 0

    def read_gbs(self) -> float:
        self.calls += 1
        return 10.0 * self.calls


def test_the_probe_reads_a_positive_bandwidth():
    from neo_engine.bandwidth import ReadProbe

    gbs = ReadProbe(num_bytes=8 * 2**20, passes=2).read_gbs()
    assert math.isfinite(gbs) and gbs > 0


def test_the_trace_samples_on_its_period_and_in_long_idle_waits():
    from neo_engine.bandwidth import BandwidthTrace

    clock = FakeClock()
    trace = BandwidthTrace(clock, every_s=5.0, probe=CountingProbe())
    trace.maybe_sample()  # the first call always samples
    clock.t = 4.9
    trace.maybe_sample()  # not yet due
    clock.t = 5.0
    trace.maybe_sample()
    clock.t = 5.5
    trace.sample_while_idle(2.0)  # the last sample is under a second old
    clock.t = 6.5
    trace.sample_while_idle(0.05)  # too short a wait to probe in
    trace.sample_while_idle(2.0)
    trace.sample(at=100.0)
    assert trace.samples == [(0.0, 10.0), (5.0, 20.0), (6.5, 30.0), (100.0, 40.0)]
    # Each time gets the sample nearest to it (ties to the earlier one).
    assert trace.at([-1.0, 2.5, 2.6, 6.0, 90.0, 200.0]) == [10.0, 10.0, 20.0, 30.0, 40.0, 40.0]
    assert all(math.isnan(x) for x in BandwidthTrace(clock, probe=CountingProbe()).at([1.0]))


def test_samples_between_steps_are_left_out_of_the_run_clock():
    """`pause` hears how long each sample between steps took (the engine's clock then skips
    it: `LLMEngine.pause_clock`); samples in idle waits and at the ends are not reported."""
    from neo_engine.bandwidth import BandwidthTrace
    from neo_engine.config import EngineConfig
    from neo_engine.engine import LLMEngine

    paused: list[float] = []
    clock = FakeClock()
    trace = BandwidthTrace(clock, every_s=5.0, probe=CountingProbe(), pause=paused.append)
    trace.maybe_sample()
    clock.t = 3.0
    trace.sample_while_idle(2.0)
    trace.sample()
    assert len(paused) == 1 and paused[0] >= 0
    engine = LLMEngine(
        EngineConfig.of("dummy:tiny", device="cpu", max_model_len=64, num_gpu_blocks=8)
    )
    before = engine.now()
    engine.pause_clock(100.0)
    assert engine.now() < before - 99.0
    engine.close()


def test_mape_in_the_profiled_state_keeps_the_iterations_that_ran_in_it():
    from neo_engine.fidelity import mape_in_state

    iterations = pd.DataFrame(
        {
            "measured_s": [1.1, 1.0, 1.3, 1.3],
            "timing_model_s": [1.0, 1.0, 1.0, 1.0],
            "read_gbs": [50.0, 54.0, 32.0, 33.0],  # two fast, two slow
        }
    )
    state = mape_in_state(iterations, profile_gbs=52.0)
    assert state == {"mape": pytest.approx((0.1 / 1.1 + 0.0) / 2), "share": 0.5}
    assert mape_in_state(iterations, profile_gbs=None) is None
    assert mape_in_state(iterations, profile_gbs=100.0) == {"mape": None, "share": 0.0}
