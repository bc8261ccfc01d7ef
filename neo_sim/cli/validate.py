"""`neo-sim validate`: check neo-sim against the real engine on this machine.

Runs the fidelity experiment (neo_engine.fidelity): the real engine serves a Poisson workload
in real time, neo-sim simulates the same arrivals with a profile measured on this machine, and
the report compares throughput, TTFT/TPOT/E2E and per-iteration times. This is the one command
of neo-sim that needs the engine (validation needs both sides).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="compare neo-sim with the real engine on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a smoke run (< 3 minutes)")
    p.add_argument("--profile", default=None, help="profile measured on this machine")
    p.add_argument("--policies", default="gpu-only,neo")
    p.add_argument("--output", default="experiments/results/fidelity")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from neo_engine.fidelity import main  # lazily: the engine is needed only here

    argv = ["--policies", args.policies, "--output", args.output, "--seed", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    if args.profile:
        argv += ["--profile", args.profile]
    return main(argv)
