"""Benchmark: how long the README's test command takes from a fresh clone (what `.ci/run` runs).

Clones this checkout's HEAD into a temporary directory and runs `.ci/run` there: a new venv,
`pip install` of the project and its test extras, then the test suite, exactly as a newcomer
runs the README's second command. The host kernels' build directory and the converted
SmolLM2 checkpoint are pointed at empty temporary directories (TORCH_EXTENSIONS_DIR,
NEO_MODELS_DIR), so the run pays the kernel compile and the model conversion a fresh machine
pays; pip's own download cache is this machine's. A checkout sits beside `shared/` (the traces,
the GPU measurements), and the tests that read it find it there: the clone gets a `shared`
link beside it too, where this checkout has one, so that those tests run rather than skip.
Records the wall time, pytest's own time and counts (from its summary line), why each skipped
test skipped (pytest's `-rs` lines, through PYTEST_ADDOPTS), the commit and the machine.

Run with nothing else on the machine (its two cores are the run's): python -m benchmarks.ci_time
Writes benchmarks/results/ci_time.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import RESULTS, reference_s, write_result
from experiments import SHARED

ROOT = Path(__file__).resolve().parents[1]
# pytest's last line: "465 passed, 6 skipped in 312.40s (0:05:12)" under -q (the project's
# addopts), framed by "=" without it
SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ \w+(?:, \d+ \w+)*) in (?P<seconds>[\d.]+)s\b")


def pytest_summary(output: str) -> dict:
    """Counts by outcome and pytest's seconds, from the summary line of `output` ({} if none)."""
    for line in reversed(output.splitlines()):
        match = SUMMARY.search(line)
        if match:
            counts = {
                outcome: int(n) for n, outcome in re.findall(r"(\d+) (\w+)", match.group("counts"))
            }
            return {"counts": counts, "pytest_s": float(match.group("seconds"))}
    return {}


def failure_lines(stdout: str, limit: int = 80) -> list[str]:
    """Each failed test's header and pytest's `E` lines (what was asserted), in order: the
    tail of a long run's output rarely reaches them."""
    keep = [
        line
        for line in stdout.splitlines()
        if line.startswith("E ") or (line.startswith("_") and line.rstrip().endswith("_"))
    ]
    return keep[:limit]


def skip_reasons(stdout: str) -> list[str]:
    """pytest's `-rs` lines ("SKIPPED [3] tests/x.py:12: reason"), without the prefix."""
    return [line[len("SKIPPED ") :] for line in stdout.splitlines() if line.startswith("SKIPPED ")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=RESULTS / "ci_time.json")
    args = p.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    reference = reference_s()
    with tempfile.TemporaryDirectory(prefix="neo-ci-") as scratch:
        clone = Path(scratch) / "neo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        shared_beside = SHARED.is_dir()
        if shared_beside:
            (Path(scratch) / "shared").symlink_to(SHARED, target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")} | {
            "TORCH_EXTENSIONS_DIR": str(Path(scratch) / "torch_extensions"),
            "NEO_MODELS_DIR": str(Path(scratch) / "models"),
            "PYTEST_ADDOPTS": "-rs",
        }
        env["PATH"] = os.pathsep.join(
            d for d in env.get("PATH", "").split(os.pathsep) if not d.startswith(sys.prefix)
        )
        print(f"running .ci/run in a fresh clone of {commit[:7]} (several minutes)", flush=True)
        started = time.perf_counter()
        run = subprocess.run(
            [str(clone / ".ci" / "run")], cwd=clone, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
    summary = pytest_summary(run.stdout)
    write_result(
        args.output,
        "ci_time",
        commit=commit,
        command=".ci/run (the README's second set-up command) in a fresh clone",
        returncode=run.returncode,
        wall_s=wall,
        reference_s=reference,
        **summary,
        shared_beside=shared_beside,
        failures=failure_lines(run.stdout),
        skipped=skip_reasons(run.stdout),
        stdout_tail=run.stdout[-2000:],
        stderr_tail=run.stderr[-2000:],
    )
    counts = summary.get("counts", {})
    print(
        f"{wall / 60:.1f} min, exit {run.returncode}: "
        + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    )
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
