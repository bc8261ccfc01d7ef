"""Latency metrics, defined once (vLLM's serving-benchmark conventions)."""

import math

import pytest

from neo_sim.latency import Latency, RequestRecord


def test_latency_definitions():
    lat = Latency.of(arrival_s=1.0, first_token_s=1.5, finish_s=3.5, tokens=5)
    assert lat.ttft_s == 0.5 and lat.e2e_s == 2.5
    assert lat.tpot_s == pytest.approx(2.0 / 4) and lat.per_token_s == pytest.approx(0.5)
    one = Latency.of(0.0, 1.0, 1.0, 1)
    assert math.isnan(one.tpot_s) and one.per_token_s == 1.0
    unstarted = Latency.of(0.0, None, None, 0)
    assert math.isnan(unstarted.ttft_s) and math.isnan(unstarted.per_token_s)


def test_record_gathers_inter_token_gaps():
    record, itl = RequestRecord(request_id=0, arrival_s=0.0, prompt_len=4, output_len=3), []
    for t in (0.4, 0.5, 0.75):
        record.on_token(t, itl)
    record.finish_s = 0.75
    assert itl == pytest.approx([0.1, 0.25])
    assert record.latency() == Latency.of(0.0, 0.4, 0.75, 3)
    assert record.ran_on == "gpu"
