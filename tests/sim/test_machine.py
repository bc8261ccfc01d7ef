"""Profiles know their machine: what differs between the recorded machine and this one."""

from __future__ import annotations

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


def test_the_host_lane_is_compared_only_where_the_engine_names_it():
    here = {"cpu": "c", "cpu_features": AVX2, "cpu_cores": 2}
    inline, overlapped = "inline, 2 threads", "overlapped, 1 thread"
    assert mismatches({**here, "host_lane": overlapped}, here) == []
    assert mismatches({**here, "host_lane": overlapped}, {**here, "host_lane": inline}) == [
        f"host lane {overlapped} (this machine: {inline})"
    ]
    # a profile from before the host lane was recorded timed its CPU attention some other way
    assert mismatches(here, {**here, "host_lane": inline}) == [
        f"host lane not recorded (this machine: {inline})"
    ]


def test_the_engine_build_is_compared_only_where_the_engine_names_it():
    """A profile timed with other host kernels or another torch prices this engine wrong."""
    here = {"cpu": "c", "cpu_features": AVX2, "cpu_cores": 2}
    old, new = "torch 2.13.0+cpu, host kernels aaaaaaaaaaaa", "torch 2.13.0+cpu, host kernels b"
    assert mismatches({**here, "engine_build": old}, here) == []
    assert mismatches({**here, "engine_build": old}, {**here, "engine_build": new}) == [
        f"engine build {old} (this machine: {new})"
    ]
    assert mismatches(here, {**here, "engine_build": new}) == [
        f"engine build not recorded (this machine: {new})"
    ]
