"""Arguments shared by several subcommands, and their conversion to objects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neo_sim.catalog import Target, resolve_target
from neo_sim.errors import NeoError
from neo_sim.scheduler import POLICIES, SchedulerConfig


def _number(kind: type, minimum: float, strict: bool):
    """An argparse type: `kind` parsed from text, > minimum (strict) or >= minimum."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if (strict and not value > minimum) or (not strict and not value >= minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {minimum:g}, got {value}"
            )
        return value

    return parse


positive_int = _number(int, 0, strict=True)
nonneg_int = _number(int, 0, strict=False)
positive_float = _number(float, 0, strict=True)


def add_target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hardware",
        required=True,
        help="hardware preset (t4, a10g-g5.4xlarge, h100, ...) or a profile JSON file",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model preset (llama-2-7b, ...), dummy:PRESET, or an HF config.json path; "
        "optional with a profile file",
    )


def add_capacity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu-kv-blocks",
        type=nonneg_int,
        default=None,
        help="GPU KV pool in blocks (default: from GPU memory minus weights)",
    )
    p.add_argument(
        "--cpu-kv-gb",
        type=float,
        default=None,
        help="host KV pool in GB (default: half of host memory)",
    )
    p.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block")
    p.add_argument(
        "--max-cpu-wait-steps",
        type=positive_int,
        default=64,
        help="neo: iterations a CPU-resident request may wait before it is forced "
        "into the next plan (default 64; larger favours throughput)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=4096,
        help="tokens per iteration (default 4096)",
    )
    p.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=256,
        help="sequences per iteration (default 256)",
    )
    p.add_argument(
        "--max-num-seqs",
        type=positive_int,
        default=512,
        help="requests resident on GPU or CPU (default 512)",
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", type=Path, default=None, help="directory for results")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def policy_name(text: str) -> str:
    if text not in POLICIES:
        raise argparse.ArgumentTypeError(
            f"unknown policy {text!r}: use one of {', '.join(POLICIES)}"
        )
    return text


def target_from_args(args: argparse.Namespace) -> Target:
    return resolve_target(args.hardware, args.model)


def config_from_args(args: argparse.Namespace, target: Target) -> SchedulerConfig:
    """The scheduler config the capacity flags describe (shared with `neo_sim.runs`)."""
    from neo_sim.runs import RunSpec, scheduler_config

    spec = RunSpec(args.hardware, args.model, **capacity_fields(args))
    return scheduler_config(spec, target)


def capacity_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The RunSpec fields that `add_capacity_args` flags set."""
    names = (
        "gpu_kv_blocks",
        "cpu_kv_gb",
        "block_size",
        "max_batch_tokens",
        "max_batch_size",
        "max_num_seqs",
        "max_cpu_wait_steps",
    )
    return {name: getattr(args, name) for name in names}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def rate_value(text: str) -> float:
    """A positive rate in req/s, or 'inf' (everything at t = 0)."""
    if text.lower() in ("inf", "infinite", "offline"):
        return float("inf")
    return positive_float(text)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        default="synthetic",
        help="'synthetic' (uniform lengths around --input-len/--output-len) or "
        "'trace:PATH' (CSV: num_prefill_tokens,num_decode_tokens[,arrived_at])",
    )
    p.add_argument(
        "--rate",
        type=rate_value,
        default=None,
        help="mean arrival rate in req/s, or 'inf' for all at once (default: inf for "
        "synthetic; the trace's own times for a timed trace)",
    )
    p.add_argument(
        "--num-requests",
        type=positive_int,
        default=None,
        help="requests to simulate (default 200; a trace: all of it)",
    )
    p.add_argument("--input-len", type=positive_int, default=370, help="mean prompt tokens")
    p.add_argument("--output-len", type=positive_int, default=45, help="mean output tokens")
    p.add_argument(
        "--burstiness",
        type=positive_float,
        default=1.0,
        help="gamma shape of arrival gaps; 1 = Poisson, < 1 burstier",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="log-normal sigma of per-task time noise (default 0: deterministic)",
    )
    p.add_argument("--slo-ttft", type=positive_float, default=None, help="TTFT SLO (s) for goodput")
    p.add_argument("--slo-tpot", type=positive_float, default=None, help="TPOT SLO (s) for goodput")


def run_spec_from_args(args: argparse.Namespace, **overrides):
    from neo_sim.runs import RunSpec

    is_trace = args.workload.startswith("trace:")
    n = args.num_requests if args.num_requests is not None else (None if is_trace else 200)
    rate = args.rate if args.rate is not None else (None if is_trace else float("inf"))
    if args.noise < 0:
        raise NeoError(f"--noise must be >= 0, got {args.noise}")
    values = dict(
        hardware=args.hardware,
        model=args.model,
        policy=getattr(args, "policy", "neo"),
        workload=args.workload,
        rate=rate,
        num_requests=n,
        input_len=args.input_len,
        output_len=args.output_len,
        burstiness=args.burstiness,
        seed=args.seed,
        **capacity_fields(args),
        noise=args.noise,
        slo_ttft_s=args.slo_ttft,
        slo_tpot_s=args.slo_tpot,
    )
    values.update(overrides)
    return RunSpec(**values)


SUMMARY_ROWS = [
    ("completed", "completed requests", "{:.0f}"),
    ("throughput_req_s", "throughput (req/s)", "{:.3f}"),
    ("throughput_tok_s", "output tokens/s", "{:.1f}"),
    ("ttft_p50", "TTFT p50 (s)", "{:.3f}"),
    ("ttft_p90", "TTFT p90 (s)", "{:.3f}"),
    ("tpot_p50", "TPOT p50 (s)", "{:.4f}"),
    ("tpot_p90", "TPOT p90 (s)", "{:.4f}"),
    ("e2e_p50", "E2E p50 (s)", "{:.3f}"),
    ("e2e_p90", "E2E p90 (s)", "{:.3f}"),
    ("per_token_latency_p50", "per-token latency p50 (s)", "{:.4f}"),
    ("gpu_busy", "GPU busy", "{:.2f}"),
    ("cpu_busy", "CPU busy", "{:.2f}"),
    ("pipelined_fraction", "pipelined iterations", "{:.2f}"),
    ("cpu_served_fraction", "requests that ran on CPU", "{:.2f}"),
    ("mean_batch_size", "mean batch size", "{:.1f}"),
]


def format_table(columns: dict[str, dict], ratio_to: str | None = None) -> str:
    """A plain-text table: one row per summary metric, one column per run."""
    names = list(columns)
    header = ["metric", *names] + (
        [f"{n}/{ratio_to}" for n in names if n != ratio_to] if ratio_to else []
    )
    rows = [header]
    for key, label, fmt in SUMMARY_ROWS:
        if not any(key in c for c in columns.values()):
            continue
        values = [columns[n].get(key, float("nan")) for n in names]
        row = [label, *(fmt.format(v) for v in values)]
        if ratio_to:
            base = columns[ratio_to].get(key, float("nan"))
            row += [
                f"{columns[n].get(key, float('nan')) / base:.2f}x" if base else "-"
                for n in names
                if n != ratio_to
            ]
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in rows
    )
