"""`neo-sim validate`: check neo-sim against the real engine on this machine.

The fidelity experiment (`neo_engine.fidelity`): the real engine serves a workload in real time
at three loads (offline, overload, unsaturated), neo-sim simulates the same arrivals with a
profile measured on this machine, and the report compares throughput, TTFT/TPOT/E2E,
per-iteration times and the latency distributions (fidelity.json).

The command needs both the engine and the simulator, so it lives in the engine and plugs into
`neo-sim` through the `neo_sim.commands` entry point (pyproject.toml): `neo_sim` never imports
`neo_engine`. This module stays light (no torch) so that `neo-sim --help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from neo_sim import settings
from neo_sim.scheduler import SchedulerConfig
from neo_sim.settings import check, setting
from neo_sim.workload import WorkloadSettings

SHIPPED_PROFILE = "profiles/cpu-2core-vm__small.json"


@dataclass(frozen=True)
class FidelitySettings:
    """The fidelity run: one workload, served by the engine and simulated by neo-sim."""

    model: str = setting("dummy:small", "model the engine serves (random weights are fine)")
    policies: str = setting("gpu-only,neo", "comma-separated policies to compare")
    profile: str | None = setting(
        None,
        "profile to simulate with (a warning if it was measured on another machine); unset: "
        f"one measured on this machine ({SHIPPED_PROFILE} or the cache), else one measured "
        "now with neo-profile --quick (~3 min) and cached",
    )
    output: str = setting("experiments/results/fidelity", "results folder")
    quick: bool = setting(
        False,
        "a smoke run (< 3 minutes): 24 requests offline and at 4 req/s, outputs ~12 tokens",
    )
    max_model_len: int = setting(512, "the engine's context length", unit="tokens", low=1)
    anchor_points: int = setting(
        3,
        "grid points per operator of the profile re-measured just before and after each "
        "engine run, to re-anchor the profile to the machine's speed then (0: off)",
        low=0,
    )
    requests: WorkloadSettings = field(
        default_factory=lambda: WorkloadSettings(
            num_requests=200, rate=3.0, input_len=64, output_len=24
        )
    )
    # A GPU pool of 30 blocks forces offload on `small`; the host pool holds the rest.
    scheduler: SchedulerConfig = field(
        default_factory=lambda: SchedulerConfig(num_gpu_blocks=30, num_cpu_blocks=2000)
    )

    def __post_init__(self) -> None:
        check(self, "fidelity settings")

    def resolved(self) -> FidelitySettings:
        """These settings with --quick applied."""
        if not self.quick:
            return self
        quick = dataclasses.replace(self.requests, num_requests=24, rate=4.0, output_len=12)
        return dataclasses.replace(self, requests=quick)


def add_arguments(p: argparse.ArgumentParser) -> None:
    settings.add_arguments(p, FidelitySettings)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="compare neo-sim with the real engine on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from neo_engine.fidelity import run_fidelity  # torch: only when the command runs

    return run_fidelity(settings.from_args(FidelitySettings, args).resolved())
