"""Profiles know their machine: what differs between the recorded machine and this one."""

from __future__ import annotations

import pytest

from neo_sim.machine import mismatches, this_machine

AVX2 = {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False}
AMX = {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": True}


def test_the_same_machine_matches():
    here = this_machine()
    assert mismatches(dict(here), here) == []


def test_another_cpu_its_extensions_and_cores_are_each_named():
    here = {"cpu": "AMD EPYC", "cpu_features": AVX2, "cpu_cores": 2}
    there = {"cpu": "Intel Xeon", "cpu_features": AMX, "cpu_cores": 2}
    differs = mismatches(there, here)
    assert len(differs) == 2
    assert "Intel Xeon" in differs[0] and "AMD EPYC" in differs[0]
    assert "amx_bf16" in differs[1]
    assert mismatches({**here, "cpu_cores": 8}, here) == ["cores 8 (this machine: 2)"]


def test_a_profile_that_recorded_nothing_is_not_trusted():
    here = {"cpu": "AMD EPYC", "cpu_features": AVX2, "cpu_cores": 2}
    assert len(mismatches({"cpu": "AMD EPYC"}, here)) == 2


def test_a_gpu_is_compared_only_where_this_machine_has_one():
    here = {"cpu": "c", "cpu_features": AVX2, "cpu_cores": 2}
    there = {**here, "gpu": "NVIDIA H200"}
    assert mismatches(there, here) == []
    assert mismatches(there, {**here, "gpu": "NVIDIA A100"}) == [
        "GPU NVIDIA H200 (this machine: NVIDIA A100)"
    ]


# Facts only the engine adds to `here`: how it runs its host lane (a profile's CPU attention
# times hold only for that) and its build (torch and the host kernels it was timed with).
ENGINE_FACTS = [
    ("host_lane", "host lane", "overlapped, 1 thread", "inline, 2 threads"),
    (
        "engine_build",
        "engine build",
        "torch 2.13.0+cpu, host kernels a",
        "torch 2.13.0+cpu, host kernels b",
    ),
]


@pytest.mark.parametrize(("key", "label", "recorded", "ours"), ENGINE_FACTS)
def test_engine_facts_are_compared_only_where_the_engine_names_them(key, label, recorded, ours):
    here = {"cpu": "c", "cpu_features": AVX2, "cpu_cores": 2}
    assert mismatches({**here, key: recorded}, here) == []
    assert mismatches({**here, key: recorded}, {**here, key: ours}) == [
        f"{label} {recorded} (this machine: {ours})"
    ]
    # a profile from before the fact was recorded: nothing vouches that it was timed this way
    assert mismatches(here, {**here, key: ours}) == [f"{label} not recorded (this machine: {ours})"]
