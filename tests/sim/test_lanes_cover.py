"""`covered_s`: the part of an iteration its spans account for (the rest is the engine's
untimed work, which a measured profile's host overhead prices)."""

from neo_sim.lanes import Lane, Span, Task, covered_s


def test_overlapping_spans_count_once_and_gaps_not_at_all():
    spans = [
        Span(Lane.GPU, Task.PRE, 0.0, 1.0),
        Span(Lane.CPU, Task.CPU_ATTN, 0.5, 1.0),  # overlaps the device lane: 0.5 s more
        Span(Lane.GPU, Task.WAIT, 1.5, 0.25),  # waiting for the host is accounted for too
        Span(Lane.GPU, Task.POST, 2.0, 0.5),  # after a 0.25 s gap
        Span(Lane.D2H, Task.QKV, 2.1, 0.1),  # inside the last span
    ]
    assert covered_s(spans) == 2.25
    assert covered_s(reversed(spans)) == 2.25  # in any order
    assert covered_s([]) == 0.0
