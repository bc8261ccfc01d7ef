"""Benchmark: a scheduler step's cost at two commits, timed side by side on this machine.

Why: this VM's speed drifts up to 2x within an hour (`benchmarks.scheduler_cost`), so two
runs of that benchmark an hour apart cannot tell whether a change made the step cheaper.
Here both commits' code runs `benchmarks.scheduler_cost.measure` (each commit's own version
of it) in alternating rounds (base then head, head then base, ...), each in a fresh process
from a git worktree of its commit, so a drift reaches both alike. A row's ratio is head's
milliseconds a step over base's, paired round by round (the median of the rounds; each
round's step time is the fastest of `--repeats` runs, as `scheduler_cost` keeps it).

`--project FILE` carries the ratios onto a `scheduler_cost` results file measured at `--base`
on another CPU: each of its rows' step time x this machine's ratio, over the iteration
`--head` plans (the cost model's, the same on every machine). A projection, labelled so: how
much a change saves differs by CPU (the TPOT rows' cost over gpu-only's read 1.09x to 1.41x on
three CPU kinds; docs/policy-results.md), so only a run on that CPU measures it.

Run: python -m benchmarks.scheduler_cost_across_commits --base REV [--head REV]
         [--hosts h100,...] [--rounds N] [--project FILE] [--output FILE]
Writes benchmarks/results/scheduler_cost_across_commits.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from benchmarks import RESULTS, write_result
from benchmarks.scheduler_cost import HOSTS

REPO = Path(__file__).resolve().parent.parent

# Run in a worktree's root: `-c` puts the working directory first on sys.path, so the
# worktree's packages are imported, not the checkout an editable install points at (checked:
# the child reports where its `neo_sim` came from).
_CHILD = """
import json, sys
import neo_sim
from benchmarks.scheduler_cost import measure
hardware, model, requests, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = measure(hardware, model, requests, repeats)
print(json.dumps({"neo_sim": neo_sim.__file__, "rows": rows}))
"""


def row_key(row: dict) -> tuple[str, str, str]:
    """A row's identity across commits: host, policy and which SLO it plans under (the
    bounds' values follow from the cost model, which a commit may change)."""
    slo = "ttft" if row.get("slo_ttft_s") else "tpot" if row.get("slo_tpot_s") else ""
    return row["hardware"], row["policy"], slo


def paired_ratios(base_rounds: list[list[dict]], head_rounds: list[list[dict]]) -> list[dict]:
    """Per row present at both commits: each round's ms a step at each commit, the head /
    base ratio of each round and their median, and the head's planned iteration (for
    `project`)."""
    out = []
    base_by_round = [{row_key(r): r for r in rows} for rows in base_rounds]
    head_by_round = [{row_key(r): r for r in rows} for rows in head_rounds]
    for key in head_by_round[0]:
        if key not in base_by_round[0]:
            continue  # a row the base commit's benchmark did not have
        base_ms = [rows[key]["scheduler_ms_per_step"] for rows in base_by_round]
        head_ms = [rows[key]["scheduler_ms_per_step"] for rows in head_by_round]
        ratios = [h / b for h, b in zip(head_ms, base_ms)]
        head_last = head_by_round[-1][key]
        out.append(
            {
                "hardware": key[0],
                "policy": key[1],
                "slo": key[2] or None,
                "base_ms_per_step": base_ms,
                "head_ms_per_step": head_ms,
                "ratio_per_round": ratios,
                "ratio_median": statistics.median(ratios),
                "head_iteration_ms_mean": head_last["iteration_ms_mean"],
                "base_iterations": base_by_round[-1][key]["iterations"],
                "head_iterations": head_last["iterations"],
            }
        )
    return out


def project(measured: dict, base_commit: str, ratios: list[dict]) -> list[dict]:
    """`measured` (a `scheduler_cost` result from commit `base_commit`, any CPU) with each
    row's step time scaled by this machine's median ratio: the share it would read with the
    head's code, were the ratio the same on that CPU."""
    _check_measured_at(measured, base_commit)
    by_key = {(r["hardware"], r["policy"], r["slo"] or ""): r for r in ratios}
    rows = []
    for row in measured["runs"]:
        ratio = by_key.get(row_key(row))
        if ratio is None:
            continue
        ms = row["scheduler_ms_per_step"] * ratio["ratio_median"]
        rows.append(
            {
                "hardware": row["hardware"],
                "policy": row["policy"],
                "slo": ratio["slo"],
                "measured_share": row["scheduler_share"],
                "projected_ms_per_step": ms,
                "projected_share": ms / ratio["head_iteration_ms_mean"],
            }
        )
    return rows


def _check_measured_at(measured: dict, commit: str) -> None:
    at = measured["machine"]["commit"]
    if not at.startswith(commit):
        raise SystemExit(f"--project: that file was measured at {at[:12]}, not at --base")


def _resolve(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def _measure_in(tree: Path, hosts: list[str], requests: int, repeats: int) -> list[dict]:
    rows = []
    for hardware in hosts:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, hardware, HOSTS[hardware], str(requests), str(repeats)],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the run at {tree.name} failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if not Path(result["neo_sim"]).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"the run at {tree.name} imported {result['neo_sim']}, not its own")
        rows += result["rows"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the earlier commit")
    p.add_argument("--head", default="HEAD", help="the later commit (default HEAD)")
    p.add_argument("--hosts", default=",".join(HOSTS), help=f"of {', '.join(HOSTS)}")
    p.add_argument("--rounds", type=int, default=4, help="alternations of the two commits")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="runs per row and round; fastest kept")
    p.add_argument("--project", type=Path, help="a scheduler_cost result measured at --base")
    p.add_argument("--output", type=Path, default=RESULTS / "scheduler_cost_across_commits.json")
    args = p.parse_args(argv)
    hosts = [h for h in args.hosts.split(",") if h]
    unknown = [h for h in hosts if h not in HOSTS]
    if unknown or not hosts:
        p.error(f"--hosts: {', '.join(unknown) or 'none given'}; of {', '.join(HOSTS)}")
    if args.rounds < 1 or args.repeats < 1 or args.requests < 1:
        p.error("--rounds, --repeats and --requests must be at least 1")
    commits = {}
    for name in ("base", "head"):
        commits[name] = _resolve(getattr(args, name))
        if not commits[name]:
            p.error(f"--{name}: {getattr(args, name)} is not a commit of {REPO}")
    measured = json.loads(args.project.read_text()) if args.project else None
    if measured is not None:
        _check_measured_at(measured, commits["base"])  # before any timing

    rounds: dict[str, list[list[dict]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="neo-across-commits-") as tmp:
        trees = {name: Path(tmp) / name for name in commits}
        for name, commit in commits.items():
            subprocess.run(
                ["git", "worktree", "add", "--detach", "--quiet", str(trees[name]), commit],
                cwd=REPO,
                check=True,
            )
        try:
            for k in tqdm(range(args.rounds), unit="round"):
                order = ("base", "head") if k % 2 == 0 else ("head", "base")
                for name in order:
                    rows = _measure_in(trees[name], hosts, args.requests, args.repeats)
                    rounds[name].append(rows)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False
                )

    ratios = paired_ratios(rounds["base"], rounds["head"])
    print(f"{'hardware':18s} {'policy':26s} {'base ms':>8s} {'head ms':>8s} {'head/base':>9s}")
    for r in ratios:
        policy = r["policy"] + (f" + {r['slo'].upper()} SLO" if r["slo"] else "")
        print(
            f"{r['hardware']:18s} {policy:26s} {min(r['base_ms_per_step']):8.3f} "
            f"{min(r['head_ms_per_step']):8.3f} {r['ratio_median']:9.2f}"
        )
    projected = project(measured, commits["base"], ratios) if measured is not None else None
    if projected:
        worst = max(projected, key=lambda r: r["projected_share"])
        print(
            f"projected onto {args.project}: worst {worst['policy']} on {worst['hardware']}, "
            f"{100 * worst['measured_share']:.2f}% measured at base -> "
            f"{100 * worst['projected_share']:.2f}% (a projection, not a measurement)"
        )
    write_result(
        args.output,
        "scheduler_cost_across_commits",
        commits=commits,
        settings={
            "hosts": hosts,
            "rounds": args.rounds,
            "requests": args.requests,
            "repeats": args.repeats,
            "order": "base first in even rounds, head first in odd ones",
        },
        rows=ratios,
        reference_s={
            name: [{r["hardware"]: r["reference_s"] for r in rows} for rows in of_commit]
            for name, of_commit in rounds.items()
        },
        projected_from=str(args.project) if args.project else None,
        projected=projected,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
