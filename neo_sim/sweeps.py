"""Run many simulations: a grid of run settings, on local processes or a dask cluster.

A grid maps RunSpec setting names (flat: `rate`, `gpu_kv_blocks`, `policy`, ...) to a value or
a list of values; the sweep runs their cartesian product. Results come back as one tidy row per
run (settings + summary), in grid order whatever order they finished in.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import pandas as pd

from neo_sim import settings
from neo_sim.errors import NeoError
from neo_sim.runs import RunSpec, execute_summary


def expand_grid(base: RunSpec, grid: Mapping[str, Any]) -> list[RunSpec]:
    known = settings.names(RunSpec)
    unknown = set(grid) - set(known)
    if unknown:
        raise NeoError(
            f"sweep grid: unknown setting(s) {sorted(unknown)}; use {', '.join(sorted(known))}"
        )
    keys = list(grid)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
    if any(len(v) == 0 for v in values):
        raise NeoError("sweep grid: every setting needs at least one value")
    return [base.with_(**dict(zip(keys, combo))) for combo in itertools.product(*values)]


def run_sweep(
    specs: list[RunSpec],
    executor: str = "process",
    workers: int | None = None,
    dask_address: str | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    run: Callable[[RunSpec], dict] = execute_summary,
) -> pd.DataFrame:
    """Execute every spec; returns one row per run in the order of `specs`. `run` turns a spec
    into its row (a module-level function: it crosses process boundaries)."""
    progress = progress or (lambda it, **_: it)
    rows: list[dict | None] = [None] * len(specs)
    if executor == "serial":
        for i, spec in enumerate(progress(specs, total=len(specs))):
            rows[i] = run(spec)
    elif executor == "process":
        workers = workers or max(1, os.cpu_count() or 1)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run, s): i for i, s in enumerate(specs)}
            for f in progress(as_completed(futures), total=len(specs)):
                rows[futures[f]] = f.result()
    elif executor == "dask":
        rows = _run_dask(specs, workers, dask_address, progress, run)
    else:
        raise NeoError(f"--executor must be serial, process or dask, got {executor!r}")
    return pd.DataFrame(rows)


def _run_dask(specs, workers, address, progress, run=execute_summary) -> list[dict]:
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise NeoError("--executor dask needs dask: pip install 'neo[dask]'") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if address:
        client = Client(address)
    else:
        cluster = LocalCluster(
            n_workers=workers or max(1, os.cpu_count() or 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    try:
        futures = client.map(run, specs, pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        rows: list[dict | None] = [None] * len(specs)
        for f in progress(dask_completed(futures), total=len(specs)):
            rows[index[f.key]] = f.result()
        return rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
