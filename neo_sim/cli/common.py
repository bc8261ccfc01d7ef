"""Arguments shared by several subcommands, and their conversion to objects."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from neo_sim.capacity import KVCapacity, default_capacity
from neo_sim.catalog import Target, resolve_target
from neo_sim.errors import NeoError
from neo_sim.scheduler import POLICIES, SchedulerConfig
from neo_sim.units import GB


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


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


def capacity_from_args(args: argparse.Namespace, target: Target) -> KVCapacity:
    if args.cpu_kv_gb is not None and args.cpu_kv_gb < 0:
        raise NeoError(f"--cpu-kv-gb must be >= 0, got {args.cpu_kv_gb}")
    cpu_bytes = None if args.cpu_kv_gb is None else args.cpu_kv_gb * GB
    return default_capacity(
        target.model,
        target.hardware,
        args.block_size,
        args.max_batch_tokens,
        args.gpu_kv_blocks,
        cpu_bytes,
    )


def config_from_args(args: argparse.Namespace, capacity: KVCapacity) -> SchedulerConfig:
    return SchedulerConfig(
        num_gpu_blocks=capacity.num_gpu_blocks,
        num_cpu_blocks=capacity.num_cpu_blocks,
        block_size=capacity.block_size,
        max_batch_size=args.max_batch_size,
        max_num_seqs=args.max_num_seqs,
        max_batch_tokens=args.max_batch_tokens,
    )


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
