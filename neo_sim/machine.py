"""Which machine a measured profile describes, and whether this one is it.

A measured profile's times hold for the machine that measured them: another CPU model, other
vector extensions (AVX2 vs AVX-512/AMX change torch's kernels several-fold) or another core
count give other times. Profiles record these facts (`Provenance.machine`); whatever uses a
measured profile compares them with the machine it runs on. Pure Python (reads
/proc/cpuinfo), so that neo-sim can check without torch; the engine adds the GPU's name.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Any

from neo_sim.errors import NeoError

# The vector extensions that decide which kernels and dtypes are fast on a CPU.
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")

# NEO_CPU_ISA=avx2 runs this process as on a CPU without AVX-512 (nor AVX512-BF16, nor AMX):
# the build machines change from one session to the next, and an AVX-512 one can then build,
# test and time the code an AVX2-only one would run (our kernels compiled without AVX-512,
# torch's own kernels held to AVX2: `neo_engine.cpu_kernel.apply_isa_cap`). The memory and
# caches stay this machine's, so timings stand in for an AVX2 CPU's, they are not one's.
ISA_CAP_ENV = "NEO_CPU_ISA"
ISA_CAPS = {"avx2": ("avx2",)}  # cap -> the CPU_FEATURES it keeps
# What holds torch's own kernels to a cap: ATen's vectorized kernels (and inductor's generated
# code), oneDNN (bf16 and prepacked GEMMs) and MKL (fp32 GEMMs; on AMD CPUs it runs AVX2 code
# anyway). Each library reads its variable once, at its first kernel.
TORCH_ISA_ENV = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
}


@cache  # a machine's CPU does not change within a process
def _cpuinfo_line(prefix: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def isa_cap() -> str | None:
    """The instruction-set cap NEO_CPU_ISA sets ("avx2"), or None (the CPU as it is)."""
    cap = os.environ.get(ISA_CAP_ENV, "").strip().lower()
    if not cap:
        return None
    if cap not in ISA_CAPS:
        raise NeoError(
            f"{ISA_CAP_ENV}={cap!r} is not a cap neo knows: use one of "
            f"{', '.join(ISA_CAPS)} (or unset it)"
        )
    return cap


def torch_isa_environment() -> dict[str, str]:
    """The variables that hold torch's kernels to NEO_CPU_ISA's cap (none without one), for
    this process before its first torch kernel and for the processes it starts."""
    cap = isa_cap()
    return dict(TORCH_ISA_ENV[cap]) if cap else {}


def export_torch_isa_environment() -> None:
    """Set `torch_isa_environment` in this process's environment where unset. Importing
    neo_sim does it, so that torch, whenever it runs its first kernel, finds the cap."""
    for name, value in torch_isa_environment().items():
        os.environ.setdefault(name, value)


def cpu_name() -> str:
    """The CPU's model name, marked when NEO_CPU_ISA caps it (a capped CPU is another machine
    to a profile: its times are not the uncapped one's)."""
    name = _cpuinfo_line("model name") or platform.processor() or "cpu"
    cap = isa_cap()
    return f"{name} (capped at {cap.upper()})" if cap else name


def cpu_features() -> dict[str, bool]:
    """Which of CPU_FEATURES this CPU has (those above NEO_CPU_ISA's cap read as absent)."""
    flags = set(_cpuinfo_line("flags").split())
    cap = isa_cap()
    kept = ISA_CAPS[cap] if cap else CPU_FEATURES
    return {name: name in flags and name in kept for name in CPU_FEATURES}


def native_bf16() -> str | None:
    """The extension that gives this CPU native bf16 arithmetic, or None: with it torch's
    bf16 GEMMs (oneDNN) and our bf16 kernels outrun fp32; without it bf16 GEMMs crawl."""
    features = cpu_features()
    if features["amx_bf16"]:
        return "AMX-BF16"
    if features["avx512_bf16"]:
        return "AVX512-BF16"
    return None


def this_machine() -> dict[str, Any]:
    """The facts of this machine that a profile records (no GPU: the engine adds it)."""
    return {"cpu": cpu_name(), "cpu_features": cpu_features(), "cpu_cores": os.cpu_count() or 1}


def mismatches(recorded: dict[str, Any], here: dict[str, Any] | None = None) -> list[str]:
    """How the machine a profile was measured on differs from `here` (this machine by
    default), one phrase per difference; empty when they match. A fact the profile did not
    record (profiles older than this check) counts as a difference: nothing vouches for it."""
    here = this_machine() if here is None else here
    out = []
    # The GPU, the host lane (how the engine runs its host attention,
    # `neo_engine.executor.host_lane`) and the engine build (torch and the host kernels,
    # `neo_engine.cpu_kernel.engine_build`) are compared only where the engine adds them.
    facts = (
        ("cpu", "CPU"),
        ("cpu_cores", "cores"),
        ("gpu", "GPU"),
        ("host_lane", "host lane"),
        ("engine_build", "engine build"),
    )
    for key, label in facts:
        if key not in here:
            continue
        theirs = recorded.get(key)
        if theirs is None:
            out.append(f"{label} not recorded (this machine: {here[key]})")
        elif theirs != here[key]:
            out.append(f"{label} {theirs} (this machine: {here[key]})")
    if "cpu_features" in here:
        theirs = recorded.get("cpu_features")
        if theirs is None:
            out.append("CPU extensions not recorded")
        else:
            ours = {k for k, v in here["cpu_features"].items() if v}
            recorded_set = {k for k, v in theirs.items() if v}
            if ours != recorded_set:
                out.append(
                    f"CPU extensions {','.join(sorted(recorded_set)) or 'none'} "
                    f"(this machine: {','.join(sorted(ours)) or 'none'})"
                )
    return out
