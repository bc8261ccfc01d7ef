"""`neo-sim sweep`: a grid of runs (rates x policies x hosts x ...), in parallel.

The grid comes from the command line (--rates, --policies, comma-separated --hardware) or from
a TOML file (--grid) mapping run settings to values or lists, for example:

    hardware = ["a10g-g5.2xlarge", "a10g-g5.16xlarge"]
    policy = ["gpu-only", "neo"]
    rate = [1.0, 2.0, 4.0]
    input_len = 1000

Runs go to a local process pool by default (--workers N), or to a dask cluster with
--executor dask (a local one, or an existing one with --dask-address). Writes DIR/sweep.csv
(one row per run: settings and summary) and DIR/load_latency.html.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib

from tqdm import tqdm

from neo_sim.cli import common
from neo_sim.errors import NeoError
from neo_sim.runs import estimate
from neo_sim.sweeps import expand_grid, run_sweep
from neo_sim.workload import rate_value


def _rate(text: str) -> float:
    try:
        return rate_value(text)
    except ValueError:
        raise NeoError(f"--rates: expected numbers or 'inf', got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of simulations in parallel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  neo-sim sweep --hardware t4 --model llama-2-7b "
        "--policies gpu-only,neo --rates 0.5,1,2,4 --output runs/sweep",
    )
    p.add_argument("--hardware", default=None, help="preset(s) or profile(s), comma-separated")
    p.add_argument("--policies", default="gpu-only,neo")
    p.add_argument("--rates", default=None, help="comma-separated req/s values ('inf' allowed)")
    p.add_argument("--grid", default=None, help="TOML file of settings -> value or list")
    p.add_argument("--executor", choices=("process", "dask", "serial"), default="process")
    p.add_argument("--workers", type=common.positive_int, default=None)
    p.add_argument("--dask-address", default=None, help="scheduler address of a dask cluster")
    common.add_run_args(p, skip=("hardware", "policy"))
    common.add_output_arg(p)
    p.set_defaults(run=run)


def build_grid(args: argparse.Namespace) -> dict:
    grid: dict = {}
    if args.grid:
        try:
            with open(args.grid, "rb") as f:
                grid = tomllib.load(f)
        except FileNotFoundError:
            raise NeoError(f"{args.grid}: no such grid file") from None
        except tomllib.TOMLDecodeError as exc:
            raise NeoError(f"{args.grid}: invalid TOML ({exc})") from None
    if args.hardware:
        grid["hardware"] = [h.strip() for h in args.hardware.split(",") if h.strip()]
    if args.policies and "policy" not in grid:
        grid["policy"] = common.parse_policies(args.policies)
    if args.rates:
        grid["rate"] = [_rate(r.strip()) for r in args.rates.split(",") if r.strip()]
    if "hardware" not in grid:
        raise NeoError("give --hardware or a 'hardware' entry in --grid")
    return grid


def run(args: argparse.Namespace) -> int:
    grid = build_grid(args)
    first_hw = grid["hardware"][0] if isinstance(grid["hardware"], list) else grid["hardware"]
    base = common.run_spec_from_args(args, hardware=first_hw)
    specs = expand_grid(base, grid)
    common.announce_size(max(specs, key=lambda s: estimate(s).requests), runs=len(specs))
    print(f"sweep: {len(specs)} runs on {args.executor} executor")
    frame = run_sweep(
        specs,
        args.executor,
        args.workers,
        args.dask_address,
        progress=lambda it, total: tqdm(it, total=total, unit="run"),
    )
    columns = [
        "hardware",
        "policy",
        "rate",
        "throughput_req_s",
        "ttft_p50",
        "tpot_p50",
        "per_token_latency_p50",
    ]
    print(frame[[c for c in columns if c in frame]].to_string(index=False))
    if args.output:
        from neo_sim import plots

        args.output.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.output / "sweep.csv", index=False)
        common.write_json(
            args.output / "config.json",
            {"grid": grid, "base": dataclasses.asdict(base)},
        )
        one_host = frame["hardware"].nunique() == 1
        frame["series"] = frame["policy"] if one_host else frame["hardware"] + " " + frame["policy"]
        fig = plots.load_latency_figure(
            frame, group="series", title=f"load vs latency: {frame['model'].iloc[0]}"
        )
        plots.save_html(fig, args.output / "load_latency.html")
        print(f"results in {args.output}/ (sweep.csv, load_latency.html)")
    return 0
