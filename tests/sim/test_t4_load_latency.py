"""The T4 load-latency study reads sustained rates as the paper does."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from experiments.t4_load_latency import keeps_up_rate, sustained_rate


def curve(latencies, served=None):
    rates = [1.0, 2.0, 3.0, 4.0][: len(latencies)]
    served = served or rates
    return pd.DataFrame({"rate": rates, "lat": latencies, "throughput_req_s": served})


def test_the_crossing_is_interpolated_between_the_last_rate_under_and_the_first_over():
    assert sustained_rate(curve([0.5, 0.8, 1.4]), 1.0, "lat") == pytest.approx(2 + 0.2 / 0.6)


def test_a_curve_that_never_crosses_gives_its_last_rate_and_one_over_at_once_none():
    assert sustained_rate(curve([0.5, 0.6]), 1.0, "lat") == 2.0
    assert math.isnan(sustained_rate(curve([1.5, 2.0]), 1.0, "lat"))


def test_the_keeps_up_reading_also_needs_the_rate_served():
    part = curve([0.5, 0.6, 0.7], served=[1.0, 1.5, 2.0])
    assert keeps_up_rate(part, 1.0, "lat", 0.9) == 1.0
    assert sustained_rate(part, 1.0, "lat") == 3.0
