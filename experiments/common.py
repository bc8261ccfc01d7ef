"""Shared plumbing of the experiment scripts: output folders, sweeps with progress, reports."""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from neo_sim.errors import NeoError
from neo_sim.runs import RunSpec, execute_summary
from neo_sim.source import source_commit
from neo_sim.sweeps import run_sweep
from neo_sim.workload import WorkloadSettings

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output", type=Path, default=None, help="results folder")
    p.add_argument("--quick", action="store_true", help="fewer requests and points (smoke run)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes")
    seed = WorkloadSettings().seed  # the run setting's own default, not a second one
    p.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    return p


# Options that change how fast a script runs or which of its files it rewrites, not its results.
NOT_IN_COMMAND = frozenset({"workers", "executor", "report_only"})


def command_line(module: str, p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that wrote a report, for its header: `python -m experiments.<module>` with
    every option of `p` that `args` sets away from its default, so that the line reruns the
    same runs (--seed, --output, --quick, a script's own options), less `NOT_IN_COMMAND`."""
    defaults = p.parse_args([])
    parts = [f"python -m experiments.{module}"]
    for action in p._actions:
        dest = action.dest
        if not action.option_strings or dest in NOT_IN_COMMAND or not hasattr(defaults, dest):
            continue
        value = getattr(args, dest)
        if value == getattr(defaults, dest):
            continue
        flag = max(action.option_strings, key=len)  # the long form
        parts.append(flag if action.nargs == 0 else f"{flag} {value}")
    return " ".join(parts)


def progress(iterable, total: int):
    return tqdm(iterable, total=total, unit="run")


def run_or_error(spec: RunSpec) -> dict:
    """One run's summary row; a configuration where no request fits is a row saying so.

    Such a row has `error` set, no throughput, and every request counted as rejected, so that
    a comparison leaves it out rather than the whole sweep crashing.
    """
    try:
        return execute_summary(spec)
    except NeoError as exc:
        flat = spec.flat()
        return flat | {"error": str(exc), "rejected": flat["num_requests"]}


def sweep(specs: list[RunSpec], workers: int | None, executor: str = "process") -> pd.DataFrame:
    return run_sweep(specs, executor, workers, progress=progress, run=run_or_error)


CELL = ["host", "workload_name", "load"]  # a policy-map cell's key columns


def per_cell(rows: pd.DataFrame, policy: str, column: str) -> pd.Series:
    """One policy's `column` in each cell of a map's results, indexed by `CELL`."""
    return rows[rows.policy == policy].set_index(CELL)[column]


def output_dir(args: argparse.Namespace, name: str) -> Path:
    path = args.output or RESULTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [floatfmt.format(v) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(path: Path, title: str, body: str, command: str) -> None:
    stamp = datetime.date.today().isoformat()
    host = platform.node() or "this machine"
    header = (
        f"# {title}\n\nGenerated {stamp} by `{command}` on {host}, code at commit"
        f" {source_commit()} (simulation: every number below is a prediction of neo-sim,"
        f" except those marked [paper]).\n\n"
    )
    path.write_text(header + body.strip() + "\n")
