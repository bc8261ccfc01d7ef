"""Experiment: the policy map. Every policy, on the paper's hosts, workloads and loads.

For each host (and its model) and workload, every registered policy runs offline; gpu-only's
offline throughput is that cell's capacity, and every policy then runs under Poisson arrivals
at 50%, 90% and 150% of it, on the very same arrivals. The report gives, per cell, the winner
and its margin, neo against gpu-only, the longest token gaps, and where each policy loses and
by how much; a heat map shows neo/gpu-only throughput over the whole map.

Hosts: t4 + Llama-2-7B, a10g-g5.{2,4,8,16}xlarge + Llama-3-8B, h100 + Llama-3-8B, h100x2 +
Llama-3.1-70B, each with its shipped cost model and default settings (KV pools from memory)
except 8,192 tokens per iteration, so that every trace prompt fits one iteration
(--max-batch-tokens runs the map at another budget).
Workloads: the Azure code and conversation traces (their first N requests, lengths as
recorded, arrivals stretched to the load's rate), OSC-like summarisation (~370 in / ~45 out),
synthetic input 1000 with outputs 50, 200, 400 and 800, and a long-prompt one (~2,600 / ~300).
Goodput counts requests whose mean per-token latency meets the paper's bound for that host
(1 s on T4, 2 s elsewhere [paper]).

Run: python -m experiments.policy_map [--quick] [--workers N] [--executor dask]
Writes experiments/results/policy_map/ (results.csv, run.json, report.md, heatmap.html and,
with the `png` extra, heatmap.png);
--report-only rewrites the report from results.csv and run.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from experiments import SHARED, common
from neo_sim import plots
from neo_sim.runs import RunSpec
from neo_sim.scheduler import POLICIES, SchedulerConfig

TRACES = SHARED / "traces"
HOSTS = {
    "t4": dict(hardware="t4", model="llama-2-7b"),
    "g5.2xlarge": dict(hardware="a10g-g5.2xlarge", model="llama-3-8b"),
    "g5.4xlarge": dict(hardware="a10g-g5.4xlarge", model="llama-3-8b"),
    "g5.8xlarge": dict(hardware="a10g-g5.8xlarge", model="llama-3-8b"),
    "g5.16xlarge": dict(hardware="a10g-g5.16xlarge", model="llama-3-8b"),
    "h100": dict(hardware="h100", model="llama-3-8b"),
    "h100x2": dict(hardware="h100x2", model="llama-3.1-70b"),
}
LATENCY_BOUND_S = {"t4": 1.0}  # mean per-token latency for goodput [paper]; 2 s elsewhere
TRACE_FILES = {
    "azure-code": TRACES / "azure_code_2023.csv",
    "azure-conv": TRACES / "azure_conv_2023.csv",
}
WORKLOADS = {
    **{name: dict(workload=f"trace:{path}") for name, path in TRACE_FILES.items()},
    "osc": dict(input_len=370, output_len=45),
    "1000/50": dict(input_len=1000, output_len=50),
    "1000/200": dict(input_len=1000, output_len=200),
    "1000/400": dict(input_len=1000, output_len=400),
    "1000/800": dict(input_len=1000, output_len=800),
    "long": dict(input_len=2600, output_len=300),
}
LOADS = (0.5, 0.9, 1.5)  # fractions of gpu-only's offline throughput


def load_label(fraction: float) -> str:
    """A Poisson load's name in the maps' tables: "50%" for 0.5 of gpu-only's capacity."""
    return f"{fraction:.0%}"


LOAD_LABELS = ("offline", *map(load_label, LOADS))  # the maps' loads, in order
# Poisson loads below gpu-only's offline throughput: there the arrivals, not the policy, set
# every policy's throughput
BELOW_CAPACITY = frozenset(load_label(f) for f in LOADS if f < 1)
QUICK = {
    "hosts": ("t4", "g5.2xlarge", "g5.16xlarge"),
    "workloads": ("osc", "1000/200"),
    "loads": (0.9,),
    "requests": 60,
}
FULL_REQUESTS = 200
MAX_BATCH_TOKENS = 8192  # tokens per iteration: every trace prompt fits one iteration
RIVALS = ("gpu-only", "neo", "apex")  # issue 13: adaptive against the best of these
COMPARED = (*RIVALS, "adaptive")
ADAPTIVE_WHOLE = "adaptive-whole"  # adaptive with whole prompts (its pool keeps more activations)
BELOW, ABOVE = 0.99, 1.05  # issue 13's targets: adaptive / best rival


@dataclasses.dataclass(frozen=True)
class Cell:
    host: str
    workload: str
    load: str  # "offline" or "50%" ...


def best_rival(values: pd.DataFrame | pd.Series) -> pd.Series | float:
    """The best of `RIVALS` (issue 13 judges adaptive and its variants against it): per row of
    a frame with a column per policy, or of a series indexed by policy (one cell's values)."""
    rivals = values[list(RIVALS)]
    return rivals.max(axis=1) if isinstance(values, pd.DataFrame) else rivals.max()


def comparable_cells(best: pd.Series, gpu_only_refused: pd.Series) -> pd.Series:
    """Per cell (the index of `best`, the best rival's value there): whether the cell is
    comparable, some rival serving and gpu-only refusing nothing (where it refused requests
    that never fit its KV pool, the others serve requests it never had to; a cell without a
    gpu-only row is not comparable either)."""
    return (best > 0) & (gpu_only_refused.reindex(best.index) == 0)


def base_spec(host: str, workload: str, requests: int, seed: int) -> RunSpec:
    return RunSpec.of(
        **HOSTS[host],
        **WORKLOADS[workload],
        num_requests=requests,
        max_batch_tokens=MAX_BATCH_TOKENS,
        seed=seed,
        timeline_iterations=0,
        slo_per_token_s=LATENCY_BOUND_S.get(host, 2.0),
    )


def cell_specs(
    hosts: Iterable[str],
    workloads: Iterable[str],
    loads: Iterable[float],
    requests: int,
    seed: int,
    capacity: dict[tuple[str, str], float] | None = None,
    **settings: Any,
) -> Iterator[tuple[str, str, str, RunSpec]]:
    """(host, workload, load label, spec) of every cell, `settings` applied to each spec:
    offline, or, when `capacity` is given, Poisson at each of `loads` (fractions of
    `capacity[(host, workload)]`, req/s; a cell without a capacity is left out)."""
    workloads = tuple(workloads)
    for h in hosts:
        for w in workloads:
            base = base_spec(h, w, requests, seed).with_(**settings)
            if capacity is None:
                yield h, w, "offline", base.with_(rate=math.inf)
            elif (h, w) in capacity:
                for fraction in loads:
                    yield h, w, load_label(fraction), base.with_(rate=fraction * capacity[(h, w)])


def map_scope(quick: bool) -> tuple[tuple[str, ...], list[str], tuple[float, ...], int]:
    """The map's hosts, workloads (a trace that is not beside the checkout is left out), loads
    and requests per run: all of them, or `QUICK`'s."""
    hosts = QUICK["hosts"] if quick else tuple(HOSTS)
    workloads = [
        w
        for w in (QUICK["workloads"] if quick else tuple(WORKLOADS))
        if w not in TRACE_FILES or TRACE_FILES[w].exists()
    ]
    loads = QUICK["loads"] if quick else LOADS
    requests = QUICK["requests"] if quick else FULL_REQUESTS
    return hosts, workloads, loads, requests


def add_budget_argument(p: argparse.ArgumentParser) -> None:
    """--max-batch-tokens: the map's tokens per iteration (this map's and the SLO map's)."""
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=MAX_BATCH_TOKENS,
        help=f"tokens per iteration (default {MAX_BATCH_TOKENS}; a prompt longer than this is "
        "rejected by every policy, so its cell is left out of the comparisons)",
    )


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--executor", choices=("process", "dask", "serial"), default="process")
    add_budget_argument(p)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite report.md, cells.csv and the heat map from the folder's results.csv",
    )
    args = p.parse_args(argv)
    out = common.output_dir(args, "policy_map")
    command = common.command_line("policy_map", p, args)
    if args.report_only:
        rows = pd.read_csv(out / "results.csv")
        requests = int(rows["num_requests"].max())
        run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
        args.workers = run.get("workers", args.workers)
        write_report(rows, out, args, run.get("wall_s", float("nan")), requests, command)
        print((out / "report.md").read_text())
        return 0
    hosts, workloads, loads, requests = map_scope(args.quick)
    policies = list(POLICIES)
    started = time.perf_counter()

    def run_cells(cells: list[tuple[str, str, str, RunSpec]]) -> pd.DataFrame:
        """Every policy in each cell, labelled with the cell."""
        rows = common.sweep(
            [spec.with_(policy=pol) for *_, spec in cells for pol in policies],
            args.workers,
            args.executor,
        )
        labels = [cell for *cell, _ in cells for _ in policies]
        rows[["host", "workload_name", "load"]] = pd.DataFrame(labels, index=rows.index)
        return rows

    # Phase 1: every policy offline; gpu-only's throughput is the cell's capacity.
    budget = {"max_batch_tokens": args.max_batch_tokens}
    rows = run_cells(list(cell_specs(hosts, workloads, loads, requests, args.seed, **budget)))
    capacity = {
        (r.host, r.workload_name): r.throughput_req_s
        for r in rows.itertuples()
        if r.policy == "gpu-only" and not isinstance(getattr(r, "error", None), str)
    }
    # Phase 2: Poisson arrivals at fractions of that capacity, the same arrivals per cell.
    loaded = list(cell_specs(hosts, workloads, loads, requests, args.seed, capacity, **budget))
    if loaded:
        rows = pd.concat([rows, run_cells(loaded)], ignore_index=True)
    wall = time.perf_counter() - started
    rows.to_csv(out / "results.csv", index=False)
    (out / "run.json").write_text(json.dumps({"wall_s": wall, "workers": args.workers}) + "\n")
    write_report(rows, out, args, wall, requests, command)
    print((out / "report.md").read_text())
    return 0


def cell_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: each policy's throughput relative to gpu-only (unrounded: the report's
    thresholds are counted on these; cells.csv keeps three digits), the winner, and how
    many requests gpu-only had to refuse (they never fit its KV pool; the others may serve
    them, so their throughputs are then over different sets of requests)."""
    ok = rows[rows.get("error", pd.Series(index=rows.index, dtype=object)).isna()]
    keys = ["host", "workload_name", "load"]
    refused = ok[ok["policy"] == "gpu-only"].set_index(keys)["rejected"]
    wide = ok.pivot_table(index=keys, columns="policy", values="throughput_tok_s", sort=False)
    table = wide.div(wide["gpu-only"], axis=0)
    table["winner"] = wide.idxmax(axis=1)
    ranked = wide.apply(lambda r: r.nlargest(2).tolist(), axis=1)
    table["margin"] = ranked.apply(lambda pair: pair[0] / pair[1])
    gaps = ok.pivot_table(index=keys, columns="policy", values="max_token_gap_max_s", sort=False)
    table["neo_gap_max_s"] = gaps["neo"].round(2)
    table["gpu_only_gap_max_s"] = gaps["gpu-only"].round(2)
    table["gpu_only_refused"] = refused.reindex(table.index).fillna(0).astype(int)
    return table.reset_index()


APEX_CLAIMS = (  # arXiv 2506.03296v4, abstract [paper]
    "over GPU-only schedulers (vLLM) +84% to +96% throughput on T4 and +11% to +89% on A10; "
    "over the best hybrid scheduler (NEO) up to +72% on T4 and +37% on A10 in long-output "
    "settings"
)
HOST_GROUPS = {
    "T4": ("t4",),
    "A10G": tuple(h for h in HOSTS if h.startswith("g5.")),
    "H100": ("h100", "h100x2"),
}
GROUP_ROWS = {**HOST_GROUPS, "all": tuple(HOSTS)}  # the report tables' rows: groups, then all


def cell_label(row: pd.Series) -> str:
    """A cell of the map as the report names it: "host, workload, load"."""
    return f"{row.host}, {row.workload_name}, {row.load}"


def rivals_section(comparable: pd.DataFrame) -> str:
    """APEX against NEO per host group; adaptive against the best of gpu-only, neo and apex
    (issue 13's target) and against the best of every other policy (chunked prefill too)."""
    if not {"apex", "neo", "adaptive"} <= set(comparable):
        return "(apex, neo or adaptive missing from these runs)"
    lines = [
        "| hosts | cells | apex / neo: median | best (cell) | worst | adaptive / max(gpu-only, "
        "neo, apex): median | worst (cell) | cells >= 0.99 | cells >= 1.05 | adaptive / best "
        "of all others: median | cells >= 0.99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    everyone = [p for p in POLICIES if p in comparable and p != "adaptive"]
    for group, hosts in GROUP_ROWS.items():
        g = comparable[comparable["host"].isin(hosts)]
        if g.empty:
            continue
        apex = g["apex"] / g["neo"]
        rivals = g["adaptive"] / best_rival(g)
        others = g["adaptive"] / g[everyone].max(axis=1)
        top, low = g.loc[apex.idxmax()], g.loc[rivals.idxmin()]
        lines.append(
            f"| {group} | {len(g)} | {apex.median():.3f} | {apex.max():.3f} ({cell_label(top)}) |"
            f" {apex.min():.3f} | {rivals.median():.3f} | "
            f"{rivals.min():.3f} ({cell_label(low)}) | "
            f"{(rivals >= BELOW).sum()} | {(rivals >= ABOVE).sum()} | {others.median():.3f} | "
            f"{(others >= BELOW).sum()} |"
        )
    return "\n".join(lines)


def headroom_section(comparable: pd.DataFrame) -> str:
    """Where a policy can beat the best of gpu-only, neo and apex by 5% at all (issue 13's
    second target: adaptive >= 1.05x of that best in a quarter of the cells), load by load:
    below capacity the arrivals set every policy's throughput, so the rivals' spread (best
    over worst of the three) and the best other policy of the map bound what is there."""
    rivals = list(RIVALS)
    if not set(COMPARED) <= set(comparable):
        return ""
    others = [p for p in POLICIES if p in comparable and p not in COMPARED]
    best = best_rival(comparable)  # per cell, computed once
    spread = best / comparable[rivals].min(axis=1)
    others_win = (
        comparable[others].max(axis=1) / best >= ABOVE
        if others
        else pd.Series(False, index=comparable.index)
    )
    adaptive_wins = comparable["adaptive"] / best >= ABOVE
    lines = [
        "| load | cells | rivals' spread: max | cells where the rivals differ by >= 5% | "
        "adaptive >= 1.05x the best rival | any other policy >= 1.05x the best rival |",
        "|---|---|---|---|---|---|",
    ]
    for load, g in comparable.groupby("load", sort=False):
        cells = g.index
        lines.append(
            f"| {load} | {len(g)} | {spread[cells].max():.3f} | {(spread[cells] >= ABOVE).sum()} | "
            f"{adaptive_wins[cells].sum()} | {others_win[cells].sum()} |"
        )
    quarter = -(-len(comparable) // 4)
    under = comparable["load"].isin(BELOW_CAPACITY)
    beaten = (under & (others_win | adaptive_wins)).sum()
    room = len(comparable) - under.sum()
    return (
        "Where there is room to win by 5% (issue 13 asks adaptive for >= 1.05x the best of "
        f"gpu-only, neo and apex in a quarter of the cells: {quarter} of {len(comparable)}):\n\n"
        + "\n".join(lines)
        + f"\n\nIn the {under.sum()} cells whose Poisson load is below capacity the arrivals "
        "set every policy's throughput: the three rivals serve within "
        f"{_spread_text(spread[under])} of one another there, and a policy of the map beats "
        f"the best of them by 5% in {beaten} of those cells. The target would need {quarter} "
        f"of the other {room} cells (offline and overloaded), where adaptive does so in "
        f"{(adaptive_wins & ~under).sum()}."
    )


def _spread_text(spread: pd.Series) -> str:
    """The largest best-over-worst spread of `spread` as a percentage ("0.4%")."""
    return f"{spread.max() - 1:.1%}" if len(spread) else "0%"


CHUNKED = ("vllm-256", "vllm-512")  # chunked prefill: small iterations, a larger GPU pool
OFFLOADING = ("neo", "apex", ADAPTIVE_WHOLE)  # the offloading policies that prefill whole prompts


def chunked_section(comparable: pd.DataFrame) -> str:
    """Chunked prefill against the offloading policies: its iterations hold at most its chunk,
    so its GPU pool keeps activations for that many tokens only (`iteration_tokens`) where the
    offloading policies, which prefill whole prompts, keep them for the map's budget."""
    if not set(CHUNKED) | set(OFFLOADING) <= set(comparable):
        return ""
    ratio = comparable[list(CHUNKED)].max(axis=1) / comparable[list(OFFLOADING)].max(axis=1)
    lines = [
        "| hosts | cells | chunked / offloading: median | chunked ahead by > 5% | best (cell) "
        "| offloading ahead by > 5% | best (cell) |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, hosts in GROUP_ROWS.items():
        g = ratio[comparable["host"].isin(hosts)]
        if g.empty:
            continue
        top, low = comparable.loc[g.idxmax()], comparable.loc[g.idxmin()]
        lines.append(
            f"| {group} | {len(g)} | {g.median():.3f} | {(g > ABOVE).sum()} | {g.max():.2f}x "
            f"({cell_label(top)}) | {(g < 1 / ABOVE).sum()} | "
            f"{1 / g.min():.2f}x ({cell_label(low)}) |"
        )
    return (
        "The better of vllm-256 and vllm-512 against the best of neo, apex and "
        f"{ADAPTIVE_WHOLE}, per comparable cell (chunked prefill keeps activations for its "
        "chunk only, so its GPU pool is larger; these offloading policies prefill whole "
        "prompts):\n\n" + "\n".join(lines)
    )


def chunking_section(comparable: pd.DataFrame) -> str:
    """What adaptive's prompt chunks are worth, per host group: adaptive against
    adaptive-whole (the same plans with whole prompts), adaptive-whole against the best of
    gpu-only, neo and apex (issue 13's targets, as `rivals_section` counts them for adaptive),
    and adaptive against the better of vllm-256 and vllm-512."""
    if not {ADAPTIVE_WHOLE, "adaptive", *CHUNKED} <= set(comparable):
        return ""
    adaptive = comparable["adaptive"]
    whole = comparable[ADAPTIVE_WHOLE] / best_rival(comparable)
    own = adaptive / comparable[ADAPTIVE_WHOLE]
    vllm = adaptive / comparable[list(CHUNKED)].max(axis=1)
    lines = [
        f"| hosts | cells | adaptive / {ADAPTIVE_WHOLE}: median | best (cell) | worst (cell) | "
        f">= 1.05 | < 0.95 | {ADAPTIVE_WHOLE} / max(gpu-only, neo, apex): median | worst "
        "(cell) | cells >= 0.99 | cells >= 1.05 | adaptive / best of vllm-256, vllm-512: "
        "median | worst (cell) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group, hosts in GROUP_ROWS.items():
        mask = comparable["host"].isin(hosts)
        w, g, v = whole[mask], own[mask], vllm[mask]
        if g.empty:
            continue
        top, low, wlow, vlow = (
            comparable.loc[i] for i in (g.idxmax(), g.idxmin(), w.idxmin(), v.idxmin())
        )
        lines.append(
            f"| {group} | {len(g)} | {g.median():.3f} | {g.max():.3f} ({cell_label(top)}) |"
            f" {g.min():.3f} ({cell_label(low)}) | {(g >= ABOVE).sum()} |"
            f" {(g < 1 / ABOVE).sum()} | {w.median():.3f} | {w.min():.3f} ({cell_label(wlow)}) |"
            f" {(w >= BELOW).sum()} | {(w >= ABOVE).sum()} | {v.median():.3f} | "
            f"{v.min():.3f} ({cell_label(vlow)}) |"
        )
    chunk = POLICIES["adaptive"][1]["kv_chunk_tokens"]
    gain = SchedulerConfig().kv_chunk_min_gain
    return (
        f"adaptive prefills its prompts in chunks of at most {chunk} tokens per iteration, "
        "after the residents' decodes (vLLM's order), so that its GPU pool keeps activations "
        f"for {chunk} tokens, not the map's budget, on the hosts where that enlarges the pool "
        f"by {gain:.0%} or more; elsewhere whole prompts. {ADAPTIVE_WHOLE} is adaptive with "
        "whole prompts everywhere:\n\n" + "\n".join(lines)
    )


WINDOWS = 10  # a losing cell's run is cut into this many windows of gpu-only's duration
LOSS_HEADER = (
    "| host | workload | window | sequences/s | mean iteration | neo host decodes per "
    "iteration | neo pipelined | prompt tokens prefilled | run duration |\n"
    "|---|---|---|---|---|---|---|---|---|"
)
LAST_HEADER = (
    "| host | workload | request | output tokens | of them on the host | first token | "
    "finish | decoding alone at the end |\n|---|---|---|---|---|---|---|---|"
)


def loss_window(
    host: str, workload: str, rate: float, requests: int, seed: int
) -> tuple[str, str, str]:
    """Where in time neo falls behind gpu-only in one cell, and what neo ran then: both
    policies re-run with iteration records on the cell's arrivals; the window (a tenth of
    gpu-only's run) where neo serves fewest sequences per second next to gpu-only, with
    neo's iterations there (duration, host decodes, pipelined share, prompt tokens), and the
    request that finishes neo's run (a run's throughput is its tokens over the time to its
    last token, so that request's chain of tokens sets it): two table rows, and sentences
    saying why where the numbers show it."""
    from neo_sim.runs import execute

    runs = {}
    for policy in ("gpu-only", "neo"):
        spec = base_spec(host, workload, requests, seed).with_(
            policy=policy, rate=rate, iteration_records=True
        )
        runs[policy] = execute(spec)
    width = runs["gpu-only"].summary["duration_s"] / WINDOWS
    per_window = {}
    for policy, out in runs.items():
        it = out.iterations.copy()
        it["window"] = (it["start_s"] // width).astype(int)
        it["seqs"] = it["num_prefills"] + it["num_gpu_decodes"] + it["num_cpu_decodes"]
        per_window[policy] = it.groupby("window").agg(
            seqs=("seqs", "sum"),
            iteration_s=("duration_s", "mean"),
            host_decodes=("num_cpu_decodes", "mean"),
            pipelined=("mode", lambda m: float((m == "pipelined").mean())),
            prefill_tokens=("prefill_tokens", "sum"),
        )
    deficit = (per_window["gpu-only"]["seqs"] - per_window["neo"]["seqs"]).dropna()
    w = int(deficit.idxmax())
    g, n = per_window["gpu-only"].loc[w], per_window["neo"].loc[w]
    durations = {p: o.summary["duration_s"] for p, o in runs.items()}
    why = []
    if n.prefill_tokens > 1.5 * g.prefill_tokens and n.host_decodes > 0:
        more = n.prefill_tokens / max(1.0, g.prefill_tokens)
        why.append(
            f"neo prefilled {more:.1f}x gpu-only's "
            "prompt tokens there: it took prompts onto the host that gpu-only kept queued, and "
            "its pipelined iterations, carrying their prefill and the new residents' host "
            "attention, served fewer sequences per second until that burst drained."
        )
    last_row, last_why = _last_request(runs["neo"].requests, runs["gpu-only"].requests)
    if last_why:
        why.append(last_why)
    return (
        f"| {host} | {workload} | {w * width:.0f}-{(w + 1) * width:.0f} s | "
        f"{n.seqs / width:.1f} / {g.seqs / width:.1f} | {n.iteration_s:.3f} / "
        f"{g.iteration_s:.3f} s | {n.host_decodes:.1f} | {n.pipelined:.0%} | "
        f"{n.prefill_tokens:.0f} / {g.prefill_tokens:.0f} | "
        f"{durations['neo']:.1f} / {durations['gpu-only']:.1f} s |",
        f"| {host} | {workload} | {last_row}",
        f"{host}, {workload}: " + " ".join(why) if why else "",
    )


def _last_request(neo: pd.DataFrame, gpu_only: pd.DataFrame) -> tuple[str, str]:
    """The request that finishes neo's run, next to the same request under gpu-only: the
    rest of a `LAST_HEADER` row (values neo / gpu-only), and a sentence where it ends the run
    alone (the GPU decoding it and nothing else after every other request has finished)."""
    done = neo[neo["status"] == "finished"].sort_values("finish_s")
    last = done.iloc[-1]
    alone = last.finish_s - (done.iloc[-2].finish_s if len(done) > 1 else last.first_token_s)
    same = gpu_only.set_index("request_id").loc[last.request_id]
    others = gpu_only[gpu_only["request_id"] != last.request_id]["finish_s"].max()
    row = (
        f"{last.request_id} | {last.output_len} | {last.cpu_steps} | "
        f"{last.first_token_s:.1f} / {same.first_token_s:.1f} s | "
        f"{last.finish_s:.1f} / {same.finish_s:.1f} s | {alone:.1f} s |"
    )
    longest = done["output_len"].max()
    if not (last.cpu_steps > 0 and last.finish_s > same.finish_s and alone > 1.0):
        return row, ""
    rank = "the longest output of the run" if last.output_len == longest else "a long output"
    per_token = {
        name: (r.finish_s - r.first_token_s) / max(1, r.output_len - 1)
        for name, r in (("neo", last), ("gpu-only", same))
    }
    return row, (
        f"The run ends with request {last.request_id} ({last.output_len} output tokens, {rank}) "
        f"decoding alone for {alone:.1f} s. It got its first token earlier under neo "
        f"({last.first_token_s:.1f} s against {same.first_token_s:.1f} s) but then took "
        f"{per_token['neo']:.3f} s per token against {per_token['gpu-only']:.3f} s: "
        f"{last.cpu_steps} of its tokens were decoded on the host, where residents take turns "
        "in the iterations whose GPU work can hide their attention, and it came back to the "
        "GPU with the rest of its output still to go. Every other request had finished by "
        f"{last.finish_s - alone:.1f} s (under gpu-only by {others:.1f} s): the run's end, and "
        "so its throughput, is set by when this one long request reaches the GPU."
    )


def losses_section(below: pd.DataFrame, rows: pd.DataFrame, requests: int, seed: int) -> str:
    """The table of `loss_window` for every cell where neo < 0.97 x gpu-only."""
    if not len(below):
        return ""
    rates = rows[rows["policy"] == "gpu-only"].set_index(["host", "workload_name", "load"])
    found = [
        loss_window(
            c.host,
            c.workload_name,
            rates.loc[(c.host, c.workload_name, c.load), "rate"],
            requests,
            seed,
        )
        for c in below.itertuples()
    ]
    lines = [line for line, _, _ in found]
    last_lines = [line for _, line, _ in found]
    notes = "\n\n".join(why for _, _, why in found if why)
    return f"""Where each of these cells loses, in time (both policies re-run on the cell's arrivals
with one record per iteration; the window, a tenth of gpu-only's run, where neo serves fewest
sequences per second next to gpu-only; values neo / gpu-only):

{LOSS_HEADER}
{chr(10).join(lines)}

The request that finishes neo's run (a run's throughput is its output tokens over the time
to its last token), next to the same request under gpu-only (values neo / gpu-only):

{LAST_HEADER}
{chr(10).join(last_lines)}

{notes}
"""


def fairness_section(rows: pd.DataFrame) -> str:
    """The starvation bound in its own unit: the longest any host resident waited for
    progress, in iterations, per bounded policy over every cell (offline and loaded), against
    the bound's guarantee (`max_cpu_wait_steps` + 1 where its conditions hold)."""
    if "max_host_wait_steps_max" not in rows:
        return ""
    ok = rows[rows["error"].isna()] if "error" in rows else rows
    lines = []
    guarantee = int(ok.loc[ok["policy"] == "neo", "max_cpu_wait_steps"].max()) + 1
    for policy in ("neo", "apex", "adaptive", ADAPTIVE_WHOLE, "neo-unbounded"):
        mine = ok[ok["policy"] == policy]
        if not len(mine):
            continue
        waits = mine["max_host_wait_steps_max"].fillna(0)
        above = mine[waits > guarantee]
        where = ", ".join(f"{r.host} {r.workload_name} {r.load}" for r in above.itertuples())
        name = f"{policy} (no bound)" if policy == "neo-unbounded" else policy
        lines.append(
            f"- {name}: at most {waits.max():.0f} iterations over {len(mine)} runs; above "
            f"{guarantee} in {len(above)}" + (f": {where}." if where and len(above) <= 12 else ".")
        )
    return f"""The starvation bound in its own unit, iterations: the longest any request waited
for progress as a host resident (`max_host_wait_steps_max` in results.csv). The bound's
guarantee (tests/sim/test_scheduler_properties.py) is `max_cpu_wait_steps` + 1 wherever the
overdue decodes fit the batch beside the GPU decodes and their host blocks fit:

{chr(10).join(lines)}
"""


def write_report(
    rows: pd.DataFrame, out: Path, args, wall: float, requests: int, command: str
) -> None:
    table = cell_table(rows)
    table.round(3).to_csv(out / "cells.csv", index=False)
    ran_none = table[table["gpu-only"].isna()]  # gpu-only's run failed: nothing to compare
    comparable = table[(table["gpu_only_refused"] == 0) & table["gpu-only"].notna()]
    refusing = table[table["gpu_only_refused"] > 0]
    neo = comparable["neo"]
    below = comparable[neo < 0.97]
    n_runs = len(rows)
    forced = rows[rows["policy"] == "neo"].set_index(["host", "workload_name", "load"])
    below = below.join(forced["forced_time_share"].round(3), on=["host", "workload_name", "load"])
    below_table = (
        common.markdown_table(
            below[["host", "workload_name", "load", "neo", "neo-unbounded", "forced_time_share"]]
        )
        if len(below)
        else "(none)"
    )
    errors = rows[rows.get("error", pd.Series(index=rows.index, dtype=object)).notna()]
    wins = table["winner"].value_counts().to_dict()
    losses = []
    for pol in POLICIES:
        if pol == "gpu-only" or pol not in table:
            continue
        worst = table.loc[table[pol].idxmin()]
        losses.append(
            f"| {pol} | {(table[pol].round(3) < 1).sum()} of {len(table)} | "
            f"{table[pol].min():.3f} "
            f"({cell_label(worst)}) | {table[pol].median():.3f} |"
        )
    fig = plots.ratio_heatmap_figure(
        table.assign(
            cell=table["workload_name"] + " " + table["load"], refused=table["gpu_only_refused"] > 0
        ),
        x="cell",
        y="host",
        value="neo",
        title="neo / gpu-only output tokens/s (1 = parity; * gpu-only refused requests that "
        "cannot fit its KV pool; - gpu-only could run none)",
        note="refused",
    )
    plots.save_html(fig, out / "heatmap.html")
    png = plots.save_png(fig, out / "heatmap.png", width=1800, height=520)
    png_note = ", heatmap.png (the same heat map as an image)" if png else ""
    timing = (
        f"in {wall / 60:.1f} min on {args.workers or 'all'} worker(s) of this machine"
        if math.isfinite(wall)
        else "(wall time not recorded: the results predate run.json)"
    )
    body = f"""
{n_runs} runs ({len(table)} cells x {len(POLICIES)} policies, {requests} requests each,
{int(rows["max_batch_tokens"].max())} tokens per iteration)
{timing}. Capacity = gpu-only's
offline throughput in that cell; loads are Poisson at the given fraction of it.

## neo vs gpu-only

In {len(refusing)} cells gpu-only refused requests that can never fit its GPU KV pool (long
trace prompts on the T4's pool) while the offloading policies served them: throughputs there
are over different sets of requests and are left out of the comparison below (they are in the
full table, column gpu_only_refused). In {len(ran_none)} more gpu-only could run none of the
requests (its runs failed; see the errors below): no ratio exists there, so they are left out
too.

Over the {len(comparable)} comparable cells, neo >= 0.97 x gpu-only output tokens/s in
{(neo >= 0.97).sum()}, below in {len(below)}; median {neo.median():.3f}, best {neo.max():.3f}.
neo-unbounded (no starvation bound): >= 0.97 in {(comparable["neo-unbounded"] >= 0.97).sum()},
median {comparable["neo-unbounded"].median():.3f}. Longest token gap (max over requests, in
every cell each ran): neo {table["neo_gap_max_s"].max():.1f} s at most, gpu-only
{table["gpu_only_gap_max_s"].max():.1f} s.

{below_table}

{losses_section(below, rows, requests, args.seed)}
{fairness_section(rows)}
forced_time_share: the share of neo's time spent in plans that the starvation bound forced
(CPU decodes that had waited max_cpu_wait_steps iterations, pipelined even though the cost
model priced the plan slower than the sequential one). Where neo-unbounded keeps up with
gpu-only and neo does not, that is the price of the fairness guarantee on a host whose CPU
attention is slow next to its GPU.

## APEX and adaptive

APEX's published gains (its abstract [paper]): {APEX_CLAIMS}. Ours, over the same
comparable cells (ratios of output tokens/s in each cell):

{rivals_section(comparable)}

{headroom_section(comparable)}

{chunked_section(comparable)}

{chunking_section(comparable)}

Our apex is our reading of the paper (neo_sim/scheduler/apex.py says which choices are ours),
run on our cost models, not APEX's code on its machines: its gains over neo are where the
GPU is small and decode linears are bound by weight reads (T4), as the paper argues, and
near zero where NEO's pipelining already hides the host (A10G) or the host is barely used
(H100). adaptive is ours (docs/architecture.md, "Adaptive").

## Winners

{", ".join(f"{k}: {v} cells" for k, v in wins.items())}.

| policy | cells below gpu-only (to 3 digits: within 0.05% ties) | worst ratio (cell) | median |
|---|---|---|---|
{chr(10).join(losses)}

{len(errors)} runs could not run at all (e.g. a model whose KV cannot fit the GPU pool under
gpu-only); they are rows with an `error` in results.csv.

## Every cell

Throughput of each policy relative to gpu-only (output tokens/s), the winner and its margin
over the runner-up, and the longest token gap of neo and gpu-only:

{common.markdown_table(table)}

Files: results.csv (one row per run, every setting and summary metric), cells.csv (the table
above), heatmap.html{png_note}.
"""
    common.write_report(
        out / "report.md",
        "The policy map",
        body,
        command,
    )


if __name__ == "__main__":
    raise SystemExit(main())
