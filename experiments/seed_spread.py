"""How much of adaptive's margin on the policy map is the arrival seed's: its edge cells re-run
over several seeds.

The policy map (`experiments/policy_map.py`) runs each cell once, with one seed. A cell's
throughput is that of a finite run (200 requests), so it depends on the order in which a
policy happens to finish its longest requests, and a small difference in one iteration's
plan sends two policies down different trajectories. This script takes the committed map's
cells where adaptive is below 0.99x or at least 1.05x the best of gpu-only, neo and apex
(issue 13's two targets), re-runs those four policies there with seeds 0..N-1 (the seed
draws the synthetic workloads' lengths and the Poisson arrivals; a trace replay's lengths
and arrival times do not depend on it, so in a trace cell seed k replays the trace's window
that starts k x requests in, `trace_start`) and reports, per cell, adaptive / best rival at
each seed, and the ratio of the means over seeds.

With `--slo-map` it does the same for the SLO map (`experiments/slo_map.py`): its edge cells by
goodput, each re-run with the cell's TPOT bound from the committed map set for every policy;
with `--slo-ttft-map` for the TTFT SLO map (`experiments.slo_map --slo ttft`), with its TTFT
bounds.

With `--policy P` it judges policy P (default adaptive; e.g. adaptive-whole) instead: P's
edge cells, P and the three rivals re-run.

Run: python -m experiments.seed_spread [--slo-map | --slo-ttft-map] [--policy P] [--seeds 5]
[--workers N]
Writes experiments/results/seed_spread/{results.csv,report.md} (with --slo-map:
experiments/results/seed_spread_slo/, with --slo-ttft-map: seed_spread_slo_ttft/; with
--policy P: seed_spread_P, seed_spread_slo_P, dashes as underscores).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import pandas as pd

from experiments import common
from experiments.policy_map import (
    ABOVE,
    BELOW,
    FULL_REQUESTS,
    RIVALS,
    TRACE_FILES,
    base_spec,
    best_rival,
    comparable_cells,
)
from experiments.slo_map import BOUNDS, Bound
from neo_sim.scheduler import POLICIES

JUDGED = "adaptive"  # the policy whose edge cells are re-run, unless --policy names another


@dataclasses.dataclass(frozen=True)
class MapKind:
    """Which map's edge cells are re-run, by which metric, and where the result goes."""

    name: str  # in the report's prose
    results: str  # the committed map's results.csv, under experiments/results/
    metric: str  # the summary column compared
    output: str  # folder under experiments/results/
    # the setting of the map's per-cell bound, set in each re-run cell (None: no bound)
    bound: str | None
    bound_name: str = ""  # in the report: "TPOT", "TTFT"


def _slo_map(name: str, bound: Bound, output: str) -> MapKind:
    """An SLO map's kind, its folder and bound as `experiments.slo_map` defines them."""
    return MapKind(name, bound.folder, "goodput_req_s", output, bound.setting, bound.name)


THROUGHPUT_MAP = MapKind("policy map", "policy_map", "throughput_tok_s", "seed_spread", None)
SLO_MAP = _slo_map("SLO map", BOUNDS["tpot"], "seed_spread_slo")
SLO_TTFT_MAP = _slo_map("TTFT SLO map", BOUNDS["ttft"], "seed_spread_slo_ttft")


def edge_cells(
    map_rows: pd.DataFrame,
    metric: str = THROUGHPUT_MAP.metric,
    policy: str = JUDGED,
    bound: str = "slo_tpot_s",
) -> pd.DataFrame:
    """The map's comparable cells (some rival serves, gpu-only refused nothing) where `policy`
    / best rival by `metric` is < BELOW or >= ABOVE: host, workload, load, the cell's arrival
    rate, its `bound` setting (NaN if the map set none) and that ratio on the map."""
    cells = map_rows.pivot_table(index=common.CELL, columns="policy", values=metric)
    refused = common.per_cell(map_rows, "gpu-only", "rejected")
    judged = map_rows[map_rows.policy == policy].set_index(common.CELL)
    best = best_rival(cells)
    ratio = cells[policy] / best
    keep = ((ratio < BELOW) | (ratio >= ABOVE)) & comparable_cells(best, refused)
    out = ratio[keep].rename("map_ratio").reset_index()
    keys = [tuple(k) for k in out[common.CELL].values]
    out["rate"] = [judged.loc[k, "rate"] for k in keys]
    limit = judged.get(bound)  # a column of the maps' results, absent in some tests
    out[bound] = [float("nan") if limit is None else limit.loc[k] for k in keys]
    return out


def summarise(
    runs: pd.DataFrame, metric: str = THROUGHPUT_MAP.metric, policy: str = JUDGED
) -> pd.DataFrame:
    """Per cell: `policy` / best rival by `metric` at each seed (min, max), at seed 0, and the
    ratio of its mean to the best rival's mean over the seeds."""
    rows = []
    for (host, workload, load), cell in runs.groupby(["host", "workload_name", "load"], sort=False):
        tput = cell.pivot_table(index="seed", columns="policy", values=metric)
        per_seed = tput[policy] / best_rival(tput)
        means = tput.mean()
        rows.append(
            {
                "host": host,
                "workload": workload,
                "load": load,
                "seeds": len(tput),
                "seed 0": per_seed.get(0, float("nan")),
                "min": per_seed.min(),
                "max": per_seed.max(),
                "of means": means[policy] / best_rival(means),
                "seed changes the run": bool(tput.nunique().max() > 1),
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell (default 5)")
    maps = p.add_mutually_exclusive_group()
    maps.add_argument(
        "--slo-map",
        action="store_true",
        help="the SLO map's edge cells by goodput, each with its TPOT bound (default: the "
        "policy map's, by throughput)",
    )
    maps.add_argument(
        "--slo-ttft-map",
        action="store_true",
        help="the TTFT SLO map's edge cells by goodput, each with its TTFT bound",
    )
    p.add_argument(
        "--policy-map",
        default=None,
        help="the map's results.csv whose edge cells are re-run (default: the committed one)",
    )
    p.add_argument(
        "--policy",
        default=JUDGED,
        help=f"the policy judged against the best of {', '.join(RIVALS)} (default {JUDGED}); "
        "the map must have run it",
    )
    args = p.parse_args(argv)
    if args.seeds < 1:
        print("seed_spread: --seeds must be >= 1", file=sys.stderr)
        return 2
    policy = args.policy
    if policy not in POLICIES or policy in RIVALS:
        others = ", ".join(n for n in POLICIES if n not in RIVALS)
        print(f"seed_spread: --policy must be one of {others}", file=sys.stderr)
        return 2
    kind = SLO_MAP if args.slo_map else SLO_TTFT_MAP if args.slo_ttft_map else THROUGHPUT_MAP
    suffix = "" if policy == JUDGED else "_" + policy.replace("-", "_")
    out = common.output_dir(args, kind.output + suffix)
    source = args.policy_map or str(common.RESULTS / kind.results / "results.csv")
    map_rows = pd.read_csv(source)
    if policy not in set(map_rows["policy"]):
        print(f"seed_spread: {source} has no runs of {policy}", file=sys.stderr)
        return 2
    cells = edge_cells(map_rows, kind.metric, policy, kind.bound or "slo_tpot_s")
    requests = 60 if args.quick else FULL_REQUESTS
    if args.quick:
        cells = cells.head(2)
    labels, specs = [], []
    for cell in cells.itertuples():
        for seed in range(args.seeds):
            spec = base_spec(cell.host, cell.workload_name, requests, seed).with_(rate=cell.rate)
            if cell.workload_name in TRACE_FILES:  # the seed picks the trace's window
                spec = spec.with_(trace_start=seed * requests)
            if kind.bound:  # goodput by the map's bound alone, as on the map
                limit = getattr(cell, kind.bound)
                spec = spec.with_(**{kind.bound: limit}, slo_per_token_s=None)
            for name in (*RIVALS, policy):
                specs.append(spec.with_(policy=name))
                labels.append((cell.host, cell.workload_name, cell.load, seed))
    started = time.perf_counter()
    runs = common.sweep(specs, args.workers)
    runs[["host", "workload_name", "load", "seed"]] = pd.DataFrame(labels, index=runs.index)
    runs.to_csv(out / "results.csv", index=False)
    table = summarise(runs, kind.metric, policy)
    table.insert(3, "map", cells["map_ratio"].to_numpy())
    below = table[table["map"] < BELOW]
    above = table[table["map"] >= ABOVE]
    as_on_map = "" if args.quick else ", as on the map"
    what = f"goodput within the cell's {kind.bound_name} bound" if kind.bound else "throughput"
    body = f"""
The committed {kind.name}'s cells where {policy} is below {BELOW}x ({len(below)}) or at least
{ABOVE}x ({len(above)}) the best of gpu-only, neo and apex, re-run with seeds 0..{args.seeds - 1}
({requests} requests each{as_on_map}; {time.perf_counter() - started:.0f} s). Columns: {policy} /
best rival on the committed map, at seed 0 here, its min and max over the seeds, and {policy}'s
mean {what} over the seeds against the best rival's mean. In a trace cell, seed k replays
the trace's (k+1)-th window of {requests} requests (requests k x {requests} on; a replay does not
depend on the seed) at the cell's rate on the map, set from the first window's capacity, so its
load differs from window to window.

{common.markdown_table(table, "{:.3f}")}

Of the cells below {BELOW}x on the map, {_count(below, "of means", BELOW)} of {len(below)} stay
below it in the ratio of means; of those at least {ABOVE}x on the map,
{_count(above, "of means", ABOVE, True)} of {len(above)} stay at least {ABOVE}x.
"""
    common.write_report(
        out / "report.md",
        f"{policy[0].upper() + policy[1:]}'s edge cells on the {kind.name}, over arrival seeds",
        body,
        common.command_line("seed_spread", p, args),
    )
    print((out / "report.md").read_text())
    return 0


def _count(frame: pd.DataFrame, column: str, bound: float, at_least: bool = False) -> int:
    values = frame[column]
    return int((values >= bound).sum() if at_least else (values < bound).sum())


if __name__ == "__main__":
    raise SystemExit(main())
