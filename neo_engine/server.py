"""`neo-serve` (placeholder until the server issue lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("neo-serve: not built yet", file=sys.stderr)
    return 2
