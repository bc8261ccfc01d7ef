"""Which code produced a result: the checkout's commit, recorded beside every benchmark result
and experiment report. Pure Python (runs git), so that neo-sim's reports can say it without
torch."""

from __future__ import annotations

import os
import subprocess


def source_commit() -> str:
    """The checkout's commit (with "+dirty" if it has uncommitted changes), or "unknown"
    outside a git checkout unless NEO_SOURCE_COMMIT names it (a copy of the tree without its
    .git, as on a lent GPU machine): which code produced a result. Result folders do not count: a
    benchmark that writes several files would otherwise call its own later ones dirty."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
                ":!experiments/results",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("NEO_SOURCE_COMMIT", "unknown")
    if head.returncode != 0:
        return os.environ.get("NEO_SOURCE_COMMIT", "unknown")
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
