"""`neo-profile` (placeholder until the profiler issue lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("neo-profile: not built yet", file=sys.stderr)
    return 2
