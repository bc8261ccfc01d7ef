"""Derived profiles: a roofline cost model sampled on the profiler's grids.

For hardware that is not at hand (the paper's T4, A10G and H100 hosts) a profile is derived
from datasheet peaks and cited efficiency factors instead of measured. It has the same schema
as a measured profile, with `provenance.kind = "derived"` and the sources of every figure, so
every tool treats the two alike and the README can compare them.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from neo_sim import __version__
from neo_sim.costmodel import Efficiencies, RooflineCostModel
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.profile import Profile, Provenance, Samples1D, Samples2D, make_profile


def geometric_grid(low: int, high: int, per_octave: int = 2) -> list[int]:
    """Integers from low to high, `per_octave` points per doubling (denser where curves bend)."""
    points, x = {low, high}, float(low)
    step = 2 ** (1 / per_octave)
    while x < high:
        points.add(int(round(x)))
        x *= step
    return sorted(p for p in points if low <= p <= high)


@dataclass(frozen=True)
class Grids:
    """Where operators are sampled (the profiler measures on the same kind of grids)."""

    num_tokens: Sequence[int] = tuple(geometric_grid(1, 16384))
    prompt_len: Sequence[int] = tuple(geometric_grid(16, 32768))
    num_seqs: Sequence[int] = tuple(geometric_grid(1, 1024))
    copy_bytes: Sequence[int] = tuple(geometric_grid(4096, 2**30, 1))
    batch: Sequence[int] = tuple(geometric_grid(1, 512, 1))
    context_len: Sequence[int] = tuple(geometric_grid(16, 32768, 1))


def sample_cost_model(cost, grids: Grids) -> tuple[dict[str, Samples1D | Samples2D], float]:
    """Evaluate a cost model on grids: the samples of a profile, and its launch cost."""
    samples: dict[str, Samples1D | Samples2D] = {
        "linear": Samples1D(
            tuple(grids.num_tokens), tuple(cost.linear(n) for n in grids.num_tokens)
        ),
        "prefill_attn": Samples1D(
            tuple(grids.prompt_len), tuple(cost.prefill_attn([n]) for n in grids.prompt_len)
        ),
        "lm_head": Samples1D(tuple(grids.num_seqs), tuple(cost.lm_head(n) for n in grids.num_seqs)),
        "h2d": Samples1D(tuple(grids.copy_bytes), tuple(cost.h2d(n) for n in grids.copy_bytes)),
        "d2h": Samples1D(tuple(grids.copy_bytes), tuple(cost.d2h(n) for n in grids.copy_bytes)),
        "gpu_decode_attn": Samples2D(
            tuple(grids.batch),
            tuple(grids.context_len),
            tuple(
                tuple(cost.gpu_decode_attn(b * c, b) for c in grids.context_len)
                for b in grids.batch
            ),
        ),
        "cpu_decode_attn": Samples2D(
            tuple(grids.batch),
            tuple(grids.context_len),
            tuple(
                tuple(cost.cpu_decode_attn(b, b * c) for c in grids.context_len)
                for b in grids.batch
            ),
        ),
    }
    return samples, cost.launch


def derive_profile(
    model: ModelSpec,
    hardware: HardwareSpec,
    efficiencies: Efficiencies | None = None,
    grids: Grids | None = None,
    name: str | None = None,
    notes: str = "",
) -> Profile:
    """A `derived` profile: the roofline model of `hardware` sampled for `model`."""
    eff = efficiencies or Efficiencies()
    cost = RooflineCostModel(model, hardware, eff)
    samples, launch = sample_cost_model(cost, grids or Grids())
    sources = [f"{k}: {v}" for k, v in hardware.sources.items()]
    sources += [f"gpu.{k}: {v}" for k, v in hardware.gpu.sources.items()]
    sources += [f"cpu.{k}: {v}" for k, v in hardware.cpu.sources.items()]
    sources += [f"efficiency {k}: {v}" for k, v in eff.sources.items()]
    provenance = Provenance(
        "derived",
        datetime.date.today().isoformat(),
        f"neo-sim {__version__} (neo_sim.derive)",
        notes or "roofline: datasheet peaks x efficiency factors; not a measurement",
        tuple(sources),
        {"efficiencies": {k: v for k, v in vars(eff).items() if k != "sources"}},
    )
    return make_profile(
        name or f"{hardware.name}__{model.name}", hardware, model, provenance, samples, launch
    )


# The paper's hosts and models (issue: shipped profiles), as derived profiles.
SHIPPED = [
    ("t4", "llama-2-7b"),
    *((f"a10g-g5.{size}", "llama-3-8b") for size in ("2xlarge", "4xlarge", "8xlarge", "16xlarge")),
    ("h100", "llama-2-7b"),
    ("h100", "llama-3-8b"),
    ("h100x8", "llama-3-70b"),
]
DERIVED_NOTE = (
    "DERIVED, not measured: the roofline of this host's datasheet figures (see hardware.sources) "
    "times efficiency factors (provenance.machine.efficiencies), each inside a cited published "
    "measurement or labelled an assumption (the 'efficiency' lines of provenance.sources), "
    "sampled on the profiler's grids. Calibrate against a profile measured with neo-profile on "
    "the real hardware before trusting absolute times."
)


def main(argv: list[str] | None = None) -> int:
    """Write the shipped derived profiles: python -m neo_sim.derive [--output profiles]."""
    import argparse
    from pathlib import Path

    from neo_sim.hardware import resolve_hardware
    from neo_sim.model import resolve_model
    from neo_sim.profile import save_profile

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--output", type=Path, default=Path("profiles"))
    args = p.parse_args(argv)
    for host, model in SHIPPED:
        profile = derive_profile(
            resolve_model(model),
            resolve_hardware(host),
            name=f"{host}__{model}",
            notes=DERIVED_NOTE,
        )
        print(save_profile(profile, args.output / f"{host}__{model}.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
