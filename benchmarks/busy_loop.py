"""A process that keeps a share of one core busy: what a serving benchmark's client takes
beside the server it measures (`vllm bench serve` streaming 64 requests used ~35% of one of
this VM's two cores). `benchmarks/vs_vllm_cpu.py --busy-core-share` runs one beside each
engine to measure how each engine's speed holds up when it does not have every core alone.

Run: python -m benchmarks.busy_loop --share 0.35 [--seconds N]
"""

from __future__ import annotations

import argparse
import time

PERIOD_S = 0.01  # one busy stretch and one sleep per period: a client's bursts are this short


def busy(share: float, seconds: float) -> None:
    """Spin for `share` of every PERIOD_S and sleep the rest, for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        while time.monotonic() - started < share * PERIOD_S:
            pass
        time.sleep((1 - share) * PERIOD_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--share", type=float, required=True, help="share of one core, 0..1")
    p.add_argument("--seconds", type=float, default=3600.0)
    args = p.parse_args(argv)
    if not 0 < args.share < 1:
        raise SystemExit("busy_loop: --share must be in (0, 1)")
    busy(args.share, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
