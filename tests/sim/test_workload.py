import math
import random
import statistics

import pytest

from experiments import SHARED
from neo_sim.errors import NeoError
from neo_sim.workload import WorkloadSettings, arrival_times, from_trace, read_trace, synthetic

TRACES = SHARED / "traces"
CODE_TRACE = TRACES / "azure_code_2023.csv"
CONV_TRACE = TRACES / "azure_conv_2023.csv"
needs_traces = pytest.mark.skipif(not CODE_TRACE.exists(), reason="shared traces not present")


def test_poisson_arrivals_last_at_n_over_rate_and_exponential_gaps():
    times = arrival_times(5000, 4.0, random.Random(1))
    assert times[-1] == pytest.approx(5000 / 4.0)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert cv == pytest.approx(1.0, abs=0.05)  # exponential: CV 1


def test_burstiness_controls_gap_variability():
    bursty = arrival_times(5000, 4.0, random.Random(1), burstiness=0.25)
    gaps = [b - a for a, b in zip([0.0, *bursty], bursty)]
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert cv == pytest.approx(2.0, rel=0.1)  # gamma shape k: CV = 1/sqrt(k)


def test_offline_rate_sends_all_at_zero():
    assert arrival_times(3, math.inf, random.Random(0)) == [0.0, 0.0, 0.0]


def test_synthetic_lengths_within_ten_percent_and_seeded():
    a = synthetic(500, 2.0, 1000, 200, seed=5)
    b = synthetic(500, 2.0, 1000, 200, seed=5)
    assert a == b
    assert all(900 <= r.prompt_len <= 1100 and 180 <= r.output_len <= 220 for r in a)
    assert synthetic(500, 2.0, 1000, 200, seed=6) != a


@pytest.mark.parametrize("rate,burst", [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_bad_rates_rejected(rate, burst):
    with pytest.raises(NeoError):
        arrival_times(10, rate, random.Random(0), burst)


@needs_traces
def test_azure_traces_parse_with_their_published_means():
    code = read_trace(CODE_TRACE)
    assert len(code) == 8819
    assert statistics.mean(r.prompt_len for r in code) == pytest.approx(2048, rel=0.01)
    conv = read_trace(CONV_TRACE)
    assert statistics.mean(r.output_len for r in conv) == pytest.approx(211, rel=0.01)


@needs_traces
def test_trace_replay_and_rescaling():
    replay = from_trace(CONV_TRACE, n=1000)
    assert replay[0].arrival_s == 0.0 and replay[-1].arrival_s > 100
    fast = from_trace(CONV_TRACE, n=1000, rate=20.0)
    assert fast[-1].arrival_s == pytest.approx(1000 / 20.0)
    assert [r.prompt_len for r in fast] == [r.prompt_len for r in replay]


def test_a_trace_window_replays_later_requests_from_its_own_first_arrival(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "num_prefill_tokens,num_decode_tokens,arrived_at\n10,5,0\n20,6,1\n30,7,3\n40,8,6\n"
    )
    window = from_trace(path, n=2, start=1)
    assert [(r.prompt_len, r.arrival_s) for r in window] == [(20, 0.0), (30, 2.0)]
    assert [r.prompt_len for r in from_trace(path, start=2)] == [30, 40]  # to the end
    with pytest.raises(NeoError, match="--trace-start 4 is past the trace's 4 requests"):
        from_trace(path, start=4)
    with pytest.raises(NeoError, match="applies to a trace workload"):
        WorkloadSettings(trace_start=5)


def test_untimed_trace_needs_a_rate(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n20,6\n")
    with pytest.raises(NeoError, match="--rate"):
        from_trace(path)
    reqs = from_trace(path, rate=1.0)
    assert [r.prompt_len for r in reqs] == [10, 20] and reqs[-1].arrival_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    "content,needle",
    [
        ("num_prefill_tokens\n10\n", "missing column"),
        ("num_prefill_tokens,num_decode_tokens\n10,abc\n", ":2: malformed row"),
        ("num_prefill_tokens,num_decode_tokens\n10,0\n", ":2:"),
        ("num_prefill_tokens,num_decode_tokens\n", "no requests"),
    ],
)
def test_malformed_traces_name_file_and_line(tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(NeoError, match=needle):
        read_trace(path)


def test_missing_trace_file():
    with pytest.raises(NeoError, match="no such trace"):
        read_trace("/nonexistent/trace.csv")
