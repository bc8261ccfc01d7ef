"""A measured profile at another memory read bandwidth than the one it was measured at.

The machines `neo-profile` measures are not steady: on the 2-vCPU build VMs the memory read
bandwidth ranged over 18-64 GB/s within minutes (`benchmarks/results/bandwidth_drift.json`),
and a small decode step, which streams every weight from DRAM, slowed with it while
compute-bound steps did not. A measured profile records the bandwidth at profiling
(`provenance.machine["read_gbs"]`: a sum over 256 MiB, `neo_engine.bandwidth.ReadProbe`).

The model: each operator reads its bytes (`opwork.work`) at up to a fixed fraction of the
machine's read bandwidth, its *streaming efficiency*: the highest fraction any of its samples
reached at profiling (its kernels at their best; e.g. one layer's projections of one token
read their weights at 0.71 of the probe's bandwidth on the AVX512-BF16 VM,
`experiments/results/fidelity_fast_profile/profile.json`). At another
bandwidth a sample takes

    max(its measured time, its bytes / (efficiency x bandwidth))

so an operator that streamed at its best slows in proportion to the bandwidth lost, and one
that was bound by compute or overheads slows only once the bandwidth can no longer feed it (a
batch of 5 decodes through oneDNN read its weights at 0.36 of the probe's bandwidth in the same
profile and did not slow when the probe fell by a third). A bandwidth above the one at
profiling leaves the profile as measured: what else bounded an operator then is not known. No
constant is fitted: the efficiencies and the times are the profile's own. `neo-sim validate`
runs neo-sim with its clock on the profile at the bandwidth sampled through the engine run
(its "bandwidth-tracked" rows) to separate the machine's state from the cost model's error.
"""

from __future__ import annotations

import dataclasses

from neo_sim.errors import NeoError
from neo_sim.model import ModelSpec
from neo_sim.operators import operator
from neo_sim.opwork import work
from neo_sim.profile import Profile, Samples1D, Samples2D


def profiled_read_gbs(profile: Profile) -> float:
    """The memory read bandwidth (GB/s) the profile was measured at; NeoError if it has none
    (derived profiles, and measured ones from before neo-profile recorded it)."""
    gbs = profile.provenance.machine.get("read_gbs")
    if not gbs:
        raise NeoError(
            f"profile {profile.name} records no memory read bandwidth (read_gbs): re-measure "
            "it with neo-profile"
        )
    return float(gbs)


def _points(op: str, samples: Samples1D | Samples2D) -> list[tuple[tuple[float, ...], float]]:
    """(operator arguments, seconds) of every sample of `op`."""
    spec = operator(op)
    if isinstance(samples, Samples1D):
        return [(spec.from_axes(x), t) for x, t in zip(samples.xs, samples.seconds)]
    return [
        (spec.from_axes(b, c), t)
        for b, row in zip(samples.batch, samples.seconds)
        for c, t in zip(samples.context_len, row)
    ]


def streaming_efficiency(profile: Profile) -> dict[str, float]:
    """Per operator, the highest fraction of the profiled read bandwidth any of its samples
    read its bytes at (bytes / seconds / bandwidth). Above 1 for an operator whose samples
    stay in the caches (small copies): the bandwidth then never binds it."""
    bytes_per_s = profiled_read_gbs(profile) * 1e9
    return {
        op: max(
            (work(op, profile.model, *args).num_bytes / seconds / bytes_per_s)
            for args, seconds in _points(op, samples)
            if seconds > 0
        )
        for op, samples in profile.samples.items()
    }


def at_bandwidth(profile: Profile, read_gbs: float) -> Profile:
    """`profile` on the same machine with the memory read bandwidth at `read_gbs` (GB/s): each
    sample is max(its time, its bytes / (its operator's streaming efficiency x read_gbs)).
    The fits stay: extrapolation is relative to the grid's edge (as in `Profile.rescaled`)."""
    if not read_gbs > 0:
        raise NeoError(f"memory read bandwidth must be > 0 GB/s, got {read_gbs}")
    efficiency = streaming_efficiency(profile)
    bytes_per_s = read_gbs * 1e9
    model: ModelSpec = profile.model

    def floor_s(op: str, args: tuple[float, ...]) -> float:
        return work(op, model, *args).num_bytes / (efficiency[op] * bytes_per_s)

    samples: dict[str, Samples1D | Samples2D] = {}
    for op, s in profile.samples.items():
        spec = operator(op)
        if isinstance(s, Samples1D):
            seconds = tuple(max(t, floor_s(op, spec.from_axes(x))) for x, t in zip(s.xs, s.seconds))
            samples[op] = Samples1D(s.xs, seconds)
        else:
            rows = tuple(
                tuple(max(t, floor_s(op, spec.from_axes(b, c))) for c, t in zip(s.context_len, row))
                for b, row in zip(s.batch, s.seconds)
            )
            samples[op] = Samples2D(s.batch, s.context_len, rows)
    return dataclasses.replace(profile, samples=samples)
