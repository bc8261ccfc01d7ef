"""What this machine can do, measured in about a second: a HardwareSpec for the engine.

The engine's scheduler needs a cost model before any profile exists. `probe_hardware` times
a memory read, a GEMM and a copy on the device (and on the host) and turns them into a
HardwareSpec whose every figure says it was measured here; `neo-profile` measures far more
carefully and should replace it for real work.
"""

from __future__ import annotations

import os
import platform
import time

import torch

from neo_sim.hardware import CPUSpec, GPUSpec, HardwareSpec
from neo_sim.machine import cpu_features, cpu_name
from neo_sim.source import source_commit

_SOURCE = "measured at engine start by neo_engine.local.probe_hardware (rough)"


def _best_time(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(device: torch.device, num_bytes: int = 256 * 2**20) -> float:
    x = torch.ones(num_bytes // 4, dtype=torch.float32, device=device)
    return num_bytes / _best_time(lambda: x.sum())


def gemm_flops(device: torch.device, dtype: torch.dtype, n: int = 1024) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _best_time(lambda: a @ b)


def copy_bandwidth(src: torch.device, dst: torch.device, num_bytes: int = 64 * 2**20) -> float:
    pin = src.type == "cpu" and dst.type == "cuda"
    x = torch.ones(num_bytes // 4, dtype=torch.float32, device=src, pin_memory=pin)
    return num_bytes / _best_time(lambda: x.to(dst, non_blocking=pin))


def host_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def available_memory_bytes() -> float:
    """Host memory the kernel says a process can still take without swapping (MemAvailable),
    else the whole host memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return host_memory_bytes()


def machine_summary() -> dict:
    """What a benchmark result records about the machine and the code it ran on."""
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hostname": platform.node(),
        "commit": source_commit(),
    }


def probe_hardware(device: torch.device, dtype: torch.dtype = torch.float32) -> HardwareSpec:
    host = torch.device("cpu")
    sources = dict.fromkeys(("memory_bytes", "hbm_bytes_per_s", "peak_flops_per_s"), _SOURCE)
    cpu_bw = read_bandwidth(host)
    cpu = CPUSpec(
        cpu_name(),
        os.cpu_count() or 1,
        host_memory_bytes(),
        cpu_bw,
        gemm_flops(host, torch.float32),
        sources={
            "cores": "os.cpu_count()",
            "memory_bytes": "sysconf",
            "mem_bytes_per_s": _SOURCE,
            "peak_flops_per_s": _SOURCE,
        },
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = GPUSpec(
            props.name,
            float(props.total_memory),
            read_bandwidth(device),
            gemm_flops(device, dtype, 4096),
            sources=sources,
        )
        h2d, d2h = copy_bandwidth(host, device), copy_bandwidth(device, host)
        name = f"local {props.name}"
    else:  # the CPU stands in for the GPU
        gpu = GPUSpec(
            f"{cpu.name} (as device)",
            cpu.memory_bytes,
            cpu_bw,
            gemm_flops(host, dtype),
            sources=sources,
        )
        h2d = d2h = copy_bandwidth(host, host)
        name = "local cpu"
    link = {
        "pcie_h2d_bytes_per_s": _SOURCE,
        "pcie_d2h_bytes_per_s": _SOURCE,
        "num_gpus": "one device",
    }
    return HardwareSpec(
        name, f"this machine ({platform.node()}), probed", gpu, cpu, h2d, d2h, 1, 0.0, link
    )
