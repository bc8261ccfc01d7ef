"""Derived profiles: a roofline cost model sampled on the profiler's grids.

For hardware that is not at hand (the paper's T4, A10G and H100 hosts) a profile is derived
from datasheet peaks and cited efficiency factors instead of measured. It has the same schema
as a measured profile, with `provenance.kind = "derived"` and the sources of every figure, so
every tool treats the two alike and the README can compare them.
"""

from __future__ import annotations

import datetime

from neo_sim import __version__
from neo_sim.costmodel import CostModel, Efficiencies, RooflineCostModel
from neo_sim.grids import DERIVED, Grids, samples_on
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.profile import Profile, Provenance, make_profile


def sample_cost_model(cost: CostModel, grids: Grids = DERIVED):
    """Evaluate a cost model on grids: the samples of a profile, and its launch cost."""
    samples = samples_on(grids, lambda op, point: cost.evaluate(op.name, *op.from_axes(*point)))
    return samples, cost.launch


def derive_profile(
    model: ModelSpec,
    hardware: HardwareSpec,
    efficiencies: Efficiencies | None = None,
    grids: Grids = DERIVED,
    name: str | None = None,
    notes: str = "",
) -> Profile:
    """A `derived` profile: the roofline model of `hardware` sampled for `model`."""
    eff = efficiencies or Efficiencies()
    cost = RooflineCostModel(model, hardware, eff)
    samples, launch = sample_cost_model(cost, grids)
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


# The paper's hosts and models, as derived profiles (shipped in profiles/).
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
