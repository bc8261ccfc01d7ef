"""NEO_CPU_ISA=avx2: an AVX-512 machine runs the code an AVX2-only one would.

The build machines change between sessions; without the cap, the host kernels' AVX2 code
(and torch's AVX2 behaviour, e.g. oneDNN refusing to prepack bf16 weights there) is only ever
tested on the days the machine happens to lack AVX-512.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neo_sim import machine
from neo_sim.errors import NeoError

ROOT = Path(__file__).resolve().parents[2]
TORCH_ISA_VARIABLES = tuple(machine.TORCH_ISA_ENV["avx2"])  # what the cap sets for torch
# The kernel tests whose code differs between the AVX2 and the AVX-512 builds, and the bf16
# engine tests (their portable path).
KERNEL_TESTS = (
    "tests/engine/test_host_kernel.py",
    "tests/engine/test_prefill_attention.py",
    "tests/engine/test_skinny_gemm.py",
    "tests/engine/test_fused_ops.py",
    "tests/engine/test_kv_write.py",
    "tests/engine/test_bf16.py",
    "tests/engine/test_decode_layers.py",
)


def test_the_cap_hides_the_extensions_above_it(monkeypatch):
    monkeypatch.setenv(machine.ISA_CAP_ENV, "avx2")
    features = machine.cpu_features()
    assert not (features["avx512f"] or features["avx512_bf16"] or features["amx_bf16"])
    assert machine.native_bf16() is None
    assert machine.cpu_name().endswith("(capped at AVX2)")
    monkeypatch.delenv(machine.ISA_CAP_ENV)
    assert machine.isa_cap() is None and "capped" not in machine.cpu_name()


def test_a_capped_machine_is_another_machine_to_a_profile(monkeypatch):
    """Profiles measured without the cap do not price a capped run (nor the reverse)."""
    uncapped = machine.this_machine()
    monkeypatch.setenv(machine.ISA_CAP_ENV, "avx2")
    assert any(m.startswith("CPU ") for m in machine.mismatches(uncapped))


def test_an_unknown_cap_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(machine.ISA_CAP_ENV, "sse9")
    with pytest.raises(NeoError, match="NEO_CPU_ISA='sse9' is not a cap neo knows: use one of"):
        machine.cpu_features()


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "AVX2", reason="torch runs AVX2 kernels here"
)
def test_a_cap_set_after_torch_chose_its_kernels_is_an_error(monkeypatch):
    from neo_engine.cpu_kernel import apply_isa_cap

    for name in TORCH_ISA_VARIABLES:  # restored after the test: subprocesses inherit them
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setenv(machine.ISA_CAP_ENV, "avx2")
    with pytest.raises(NeoError, match="set NEO_CPU_ISA=avx2 in the environment before Python"):
        apply_isa_cap()


@pytest.mark.skipif(
    not machine.cpu_features()["avx512f"], reason="no AVX-512: the usual build is the AVX2 one"
)
def test_the_avx2_build_passes_the_kernel_tests():
    """Build the host kernels without AVX-512 and hold torch to AVX2, in a fresh process,
    then run the kernel tests there (the portable paths against their float64 references)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCH_ISA_VARIABLES}
    env[machine.ISA_CAP_ENV] = "avx2"

    def capped(*args: str, timeout: int) -> subprocess.CompletedProcess:
        run = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        return run

    facts = capped(
        "-c",
        "import torch; from neo_engine import cpu_kernel as k; m = k.load_extension(); "
        "print(torch.backends.cpu.get_cpu_capability(), m is not None, "
        "m is not None and m.native_bf16(), k.prefill_path(torch.float32), '|', "
        "k.prefill_path(torch.bfloat16))",
        timeout=600,
    ).stdout
    assert facts.split()[:3] == ["AVX2", "True", "False"], facts  # built, without AVX-512
    assert facts.split("|")[0].rstrip().endswith("fp32 FMA (AVX2)")
    assert facts.split("|")[1].strip() == "torch SDPA"  # bf16's kernel needs AVX512-BF16
    tests = capped("-m", "pytest", "-p", "no:cacheprovider", *KERNEL_TESTS, timeout=900).stdout
    assert " passed" in tests.splitlines()[-1]
