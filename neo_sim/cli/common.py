"""Arguments shared by several subcommands, and their conversion to objects."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from neo_sim import settings
from neo_sim.errors import NeoError
from neo_sim.metrics import ROWS_SHOWN_WHEN_NONZERO, SUMMARY_ROWS
from neo_sim.runs import RunSpec, check_size
from neo_sim.scheduler import require_policy

# Settings of the engine alone: the simulator never runs on a CPU device.
SIM_SKIP = ("cpu_device_kv_gb",)


def add_run_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Flags for every RunSpec setting (generated from the dataclasses, defaults included)."""
    settings.add_arguments(p, RunSpec, skip=SIM_SKIP + skip)


def run_spec_from_args(args: argparse.Namespace, **overrides: Any) -> RunSpec:
    """The RunSpec the flags describe; `overrides` are flat settings the command fixes."""
    return settings.from_args(RunSpec, args, **overrides)


def announce_size(spec: RunSpec, runs: int = 1) -> None:
    """Say what a huge run will cost before starting it; refuse one that cannot fit."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = float("inf")
    line = check_size(spec, available, runs)
    if line:
        print(f"neo-sim: {line}", file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type for the commands' own counts (workers, steps, batch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=None, help="directory for results")


def parse_policies(text: str) -> list[str]:
    """A comma-separated list of policy names; NeoError naming an unknown one, or one named
    twice (a table has one column per policy: a second would be silently dropped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise NeoError("--policies is empty")
    for i, name in enumerate(names):
        require_policy(name)
        if name in names[:i]:
            raise NeoError(f"--policies names {name!r} twice")
    return names


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def format_table(columns: dict[str, dict], ratio_to: str | None = None) -> str:
    """A plain-text table: one row per summary metric, one column per run. A metric a run
    does not define (NaN: TPOT where every output is one token) reads "-", as does a ratio
    to a zero or undefined one."""
    names = list(columns)
    header = ["metric", *names] + (
        [f"{n}/{ratio_to}" for n in names if n != ratio_to] if ratio_to else []
    )
    rows = [header]
    for key, label, fmt in SUMMARY_ROWS:
        if not any(key in c for c in columns.values()):
            continue
        values = [columns[n].get(key, float("nan")) for n in names]
        if key in ROWS_SHOWN_WHEN_NONZERO and not any(values):
            continue
        row = [label, *(fmt.format(v) if v == v else "-" for v in values)]
        if ratio_to:
            base = columns[ratio_to].get(key, float("nan"))
            row += [_ratio(columns[n].get(key, float("nan")), base) for n in names if n != ratio_to]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in rows
    )


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and value == value and base == base else "-"
