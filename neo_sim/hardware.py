"""HardwareSpec: the GPU(s), host CPU and links of one serving host, every figure sourced.

Each spec carries a `sources` mapping from field name to where the number comes from (a
datasheet, an instance page, or a derivation with its inputs). Construction fails if a numeric
field has no source, so an unsourced figure cannot slip in.

Datasheet peaks are stored as peaks. What a kernel achieves of them is the business of the cost
model's efficiency factors, except host memory bandwidth: a VM gets a slice of a socket, so the
preset stores the bandwidth that slice can sustain, derived in `host_bandwidth` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from neo_sim.errors import NeoError
from neo_sim.units import GB, TFLOPS, GiB


def _check_sources(obj: Any, kind: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (
            f.name == "sources"
            or isinstance(value, (str, bool))
            or not isinstance(value, (int, float))
        ):
            continue
        if value < 0:
            raise NeoError(f"{kind} {obj.name!r}: {f.name} must be >= 0, got {value}")
        if value and f.name not in obj.sources:
            raise NeoError(f"{kind} {obj.name!r}: figure {f.name} has no source")


@dataclass(frozen=True)
class GPUSpec:
    """One GPU: memory, HBM/GDDR bandwidth and dense fp16/bf16 tensor throughput."""

    name: str
    memory_bytes: float
    hbm_bytes_per_s: float
    peak_flops_per_s: float  # dense fp16/bf16 tensor-core peak
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_sources(self, "GPU")


@dataclass(frozen=True)
class CPUSpec:
    """The host CPU as this host sees it: physical cores, DRAM, sustained memory bandwidth."""

    name: str
    cores: int  # physical cores available to the host (vCPUs / 2 on SMT instances)
    memory_bytes: float
    mem_bytes_per_s: float  # sustained read bandwidth available to these cores
    peak_flops_per_s: float  # fp32 vector peak of these cores
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_sources(self, "CPU")


@dataclass(frozen=True)
class HardwareSpec:
    """A serving host: `num_gpus` identical GPUs (tensor parallel), one host CPU, links."""

    name: str
    description: str
    gpu: GPUSpec
    cpu: CPUSpec
    pcie_h2d_bytes_per_s: float  # per GPU, host to device, theoretical
    pcie_d2h_bytes_per_s: float  # per GPU, device to host, theoretical
    num_gpus: int = 1  # tensor-parallel degree
    interconnect_bytes_per_s: float = 0.0  # GPU-to-GPU per direction (NVLink); 0 if one GPU
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_gpus, int) or self.num_gpus < 1:
            raise NeoError(f"hardware {self.name!r}: num_gpus must be >= 1, got {self.num_gpus!r}")
        if self.num_gpus > 1 and self.interconnect_bytes_per_s <= 0:
            raise NeoError(f"hardware {self.name!r}: tensor parallel needs interconnect bandwidth")
        _check_sources(self, "hardware")

    @property
    def tp(self) -> int:
        return self.num_gpus

    @property
    def total_gpu_memory_bytes(self) -> float:
        return self.num_gpus * self.gpu.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for part in (data, data["gpu"], data["cpu"]):
            part["sources"] = dict(part["sources"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "hardware") -> HardwareSpec:
        try:
            gpu = GPUSpec(**dict(data["gpu"]))
            cpu = CPUSpec(**dict(data["cpu"]))
            rest = {k: v for k, v in data.items() if k not in ("gpu", "cpu")}
            return cls(gpu=gpu, cpu=cpu, **rest)
        except KeyError as exc:
            raise NeoError(f"{where}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise NeoError(f"{where}: {exc}") from None


# ---- host memory bandwidth of a VM slice ------------------------------------------------------

SUSTAINED_FRACTION = 0.8
SUSTAINED_SOURCE = (
    "sustained all-core DRAM bandwidth is 75-85% of peak across Intel/AMD server generations "
    "(J. McCalpin, 'The evolution of single-core bandwidth in multicore processors', 2023); "
    "0.8 used"
)


def host_bandwidth(
    cores: int,
    per_core_bytes_per_s: float,
    dram_peak_bytes_per_s: float,
    ccd_cores: int = 0,
    ccd_bytes_per_s: float = 0.0,
) -> float:
    """Sustained memory bandwidth of `cores` cores of a socket (or socket share).

    The least of three ceilings: what the cores can keep in flight (Little's law, per core:
    already a sustained figure), what their chiplets' links carry (AMD CCD-to-IO-die, if
    given; cores packed on the fewest CCDs) and the DRAM peak of the socket share. The two
    peak figures are scaled to the sustained fraction; the per-core one is not.
    """
    ceilings = [cores * per_core_bytes_per_s, SUSTAINED_FRACTION * dram_peak_bytes_per_s]
    if ccd_cores:
        ccds = -(-cores // ccd_cores)
        ceilings.append(SUSTAINED_FRACTION * ccds * ccd_bytes_per_s)
    return min(ceilings)


# ---- component figures --------------------------------------------------------------------------

PCIE3_X16 = 15.75 * GB  # 8 GT/s x 16 lanes x 128/130 / 8 bits, per direction
PCIE4_X16 = 31.5 * GB
PCIE5_X16 = 63.0 * GB
_PCIE_SRC = {
    3: "PCIe 3.0 x16: 8 GT/s x 16 lanes, 128b/130b = 15.75 GB/s per direction",
    4: "PCIe 4.0 x16: 16 GT/s x 16 lanes, 128b/130b = 31.5 GB/s per direction",
    5: "PCIe 5.0 x16: 32 GT/s x 16 lanes, 128b/130b = 63 GB/s per direction",
}

T4 = GPUSpec(
    "NVIDIA T4",
    16 * GiB,
    320 * GB,
    65 * TFLOPS,
    sources={
        "memory_bytes": "NVIDIA T4 datasheet: 16 GB GDDR6",
        "hbm_bytes_per_s": "NVIDIA T4 datasheet: 320+ GB/s",
        "peak_flops_per_s": "NVIDIA T4 datasheet: 65 TFLOPS mixed-precision (FP16/FP32) Tensor",
    },
)
A10G = GPUSpec(
    "NVIDIA A10G",
    24 * GiB,
    600 * GB,
    125 * TFLOPS,
    sources={
        "memory_bytes": "AWS EC2 G5 page: A10G with 24 GB GPU memory",
        "hbm_bytes_per_s": "NVIDIA A10 datasheet: 600 GB/s GDDR6 (AWS's A10G is an A10 variant)",
        "peak_flops_per_s": "NVIDIA A10 datasheet: 125 TFLOPS FP16 Tensor dense; AWS publishes no "
        "A10G tensor peak, so the A10's is assumed",
    },
)
H100_SXM = GPUSpec(
    "NVIDIA H100 SXM5 80GB",
    80 * GiB,
    3350 * GB,
    989 * TFLOPS,
    sources={
        "memory_bytes": "NVIDIA H100 datasheet: 80 GB HBM3 (SXM5)",
        "hbm_bytes_per_s": "NVIDIA H100 datasheet: 3.35 TB/s (SXM5)",
        "peak_flops_per_s": "NVIDIA H100 datasheet: 989 TFLOPS BF16/FP16 Tensor dense "
        "(1,979 sparse)",
    },
)
# Not a host preset (the lent machine's host CPU has no datasheet here): the GPU the device
# loan of issue 16 runs on, for the derived-vs-measured comparison (benchmarks/gpu/loan.py).
H200_SXM = GPUSpec(
    "NVIDIA H200 SXM 141GB",
    141 * GiB,
    4800 * GB,
    989 * TFLOPS,
    sources={
        "memory_bytes": "NVIDIA H200 datasheet: 141 GB HBM3e",
        "hbm_bytes_per_s": "NVIDIA H200 datasheet: 4.8 TB/s",
        "peak_flops_per_s": "NVIDIA H200 datasheet: 1,979 TFLOPS BF16/FP16 Tensor with "
        "sparsity, so 989 dense (the H100 SXM's)",
    },
)
H100_NVLINK = 450 * GB
_NVLINK_SRC = "NVIDIA H100 datasheet: NVLink 900 GB/s total, 450 GB/s per direction"

# Per-core sustained read bandwidth (Little's law: outstanding misses x 64 B / latency).
_CLX_PER_CORE = 12 * GB
_CLX_PER_CORE_SRC = (
    "estimate: Skylake/Cascade Lake-SP cores sustain ~12 GB/s each from DRAM "
    "(Little's law, ~20 lines in flight x 64 B / ~100 ns; McCalpin 2023 shows "
    "Intel server single-core bandwidth in this range)"
)
_ZEN_PER_CORE = 20 * GB
_ZEN_PER_CORE_SRC = (
    "estimate: Zen 2/3 cores sustain ~20 GB/s each from DRAM (Little's law; "
    "McCalpin 2023 shows AMD single-core bandwidth well above Intel's)"
)
_ZEN_CCD = 51.2 * GB
_ZEN_CCD_SRC = (
    "AMD Zen 2/3 Infinity Fabric: 32 B/clock read per CCD at FCLK 1.6 GHz "
    "(DDR4-3200, 1:1) = 51.2 GB/s per CCD; a VM's cores assumed packed on the fewest CCDs"
)
# Cores per CCD of the 48-core parts. AMD publishes no die layout for the AWS-only 7R32 and
# 7R13; AMD's own 48-core parts of both generations with the full 256 MB of L3 (Rome 7642,
# Milan 7643, amd.com product pages) carry all 8 CCDs (Rome: 2 CCX x 16 MB per CCD; Milan:
# 32 MB per CCD) with 6 cores each; the Rome 7552 (192 MB L3) is 6 CCDs x 8 cores instead.
_EPYC_48_CORE_CCD_CORES = 6
_EPYC_48_CORE_CCD_SRC = (
    "estimate: a 48-core EPYC assumed to be 8 CCDs x 6 cores, as AMD's 48-core parts with "
    "256 MB L3 are (Rome 7642, Milan 7643: 256 MB = 8 CCDs' full L3); AMD publishes no layout "
    "for AWS's 7R32/7R13 (the 192 MB Rome 7552 is 6 CCDs x 8 cores, which would halve "
    "g5.4xlarge's CCD ceiling)"
)
_DDR4_2933_X6 = 6 * 2933e6 * 8
_DDR4_3200_X8 = 8 * 3200e6 * 8


def _cascade_lake_host(cores: int, memory_gib: int, instance: str) -> CPUSpec:
    bandwidth = host_bandwidth(cores, _CLX_PER_CORE, _DDR4_2933_X6)
    return CPUSpec(
        "Intel Xeon Platinum 8259CL (Cascade Lake)",
        cores,
        memory_gib * GiB,
        bandwidth,
        cores * 2.5e9 * 64,
        sources={
            "cores": f"AWS EC2 G4 page: {instance} has {2 * cores} vCPUs = {cores} cores (SMT)",
            "memory_bytes": f"AWS EC2 G4 page: {instance} has {memory_gib} GiB",
            "mem_bytes_per_s": (
                f"derived: min({cores} cores x 12 GB/s, {SUSTAINED_FRACTION} x socket DRAM "
                f"peak 6 ch x DDR4-2933 = 140.8 GB/s). {_CLX_PER_CORE_SRC}. {SUSTAINED_SOURCE}"
            ),
            "peak_flops_per_s": "2.5 GHz (AWS) x 2 AVX-512 FMA units x 16 fp32 x 2 per core",
        },
    )


def _epyc_host(
    cores: int,
    memory_gib: int,
    instance: str,
    cpu: str,
    ghz: float,
    dram_share: float,
    share_note: str,
) -> CPUSpec:
    bandwidth = host_bandwidth(cores, _ZEN_PER_CORE, dram_share, _EPYC_48_CORE_CCD_CORES, _ZEN_CCD)
    return CPUSpec(
        cpu,
        cores,
        memory_gib * GiB,
        bandwidth,
        cores * ghz * 1e9 * 32,
        sources={
            "cores": f"AWS instance page: {instance} = {2 * cores} vCPUs = {cores} cores (SMT)",
            "memory_bytes": f"AWS instance page: {instance} has {memory_gib} GiB",
            "mem_bytes_per_s": (
                f"derived: min({cores} x 20 GB/s per core, {SUSTAINED_FRACTION} x the links "
                f"of {-(-cores // _EPYC_48_CORE_CCD_CORES)} CCD(s), {SUSTAINED_FRACTION} x DRAM "
                f"{share_note}). {_ZEN_PER_CORE_SRC}. {_ZEN_CCD_SRC}. {_EPYC_48_CORE_CCD_SRC}. "
                f"{SUSTAINED_SOURCE}"
            ),
            "peak_flops_per_s": f"{ghz} GHz x 2 x 256-bit FMA (8 fp32 x 2) per Zen core",
        },
    )


def _host(
    name: str,
    description: str,
    gpu: GPUSpec,
    cpu: CPUSpec,
    pcie_gen: int,
    num_gpus: int = 1,
    note: str = "",
) -> HardwareSpec:
    pcie = {3: PCIE3_X16, 4: PCIE4_X16, 5: PCIE5_X16}[pcie_gen]
    sources = {
        "pcie_h2d_bytes_per_s": _PCIE_SRC[pcie_gen],
        "pcie_d2h_bytes_per_s": _PCIE_SRC[pcie_gen],
        "num_gpus": note or "instance definition",
    }
    interconnect = 0.0
    if num_gpus > 1:
        interconnect = H100_NVLINK
        sources["interconnect_bytes_per_s"] = _NVLINK_SRC
    return HardwareSpec(name, description, gpu, cpu, pcie, pcie, num_gpus, interconnect, sources)


def _g5(size: str, vcpus: int, memory_gib: int) -> HardwareSpec:
    instance = f"g5.{size}"
    cpu = _epyc_host(
        vcpus // 2,
        memory_gib,
        instance,
        "AMD EPYC 7R32 (Rome)",
        2.8,
        _DDR4_3200_X8,
        "peak 8 ch x DDR4-3200 = 204.8 GB/s",
    )
    return _host(
        f"a10g-{instance}",
        f"AWS {instance}: 1x A10G 24 GB, {vcpus} vCPU EPYC 7R32, {memory_gib} GiB",
        A10G,
        cpu,
        4,
    )


def _p5_share(gpus: int) -> HardwareSpec:
    share = gpus / 8
    cores, memory_gib = int(96 * share), int(2048 * share)
    dram = 2 * _DDR4_3200_X8 * share
    cpu = _epyc_host(
        cores,
        memory_gib,
        f"{gpus}/8 of p5.48xlarge",
        "AMD EPYC 7R13 (Milan)",
        2.65,
        dram,
        f"{gpus}/8 share of 2 sockets x 204.8 GB/s",
    )
    name = "h100" if gpus == 1 else f"h100x{gpus}"
    label = "one H100" if gpus == 1 else f"{gpus}x H100 (tensor parallel {gpus})"
    return _host(
        name,
        f"{label} SXM5 80 GB with its {gpus}/8 share of a p5.48xlarge host "
        f"({cores} cores, {memory_gib} GiB)",
        H100_SXM,
        cpu,
        5,
        gpus,
        "AWS EC2 P5 page: p5.48xlarge = 8x H100 80GB, 192 vCPU, 2 TiB; the host "
        "is split evenly per GPU",
    )


PRESETS: dict[str, HardwareSpec] = {
    "t4": _host(
        "t4",
        "AWS g4dn.4xlarge: 1x T4 16 GB, 16 vCPU Xeon P-8259CL, 64 GiB",
        T4,
        _cascade_lake_host(8, 64, "g4dn.4xlarge"),
        3,
    ),
    "a10g-g5.2xlarge": _g5("2xlarge", 8, 32),
    "a10g-g5.4xlarge": _g5("4xlarge", 16, 64),
    "a10g-g5.8xlarge": _g5("8xlarge", 32, 128),
    "a10g-g5.16xlarge": _g5("16xlarge", 64, 256),
    "h100": _p5_share(1),
    "h100x2": _p5_share(2),
    "h100x8": _p5_share(8),
}
ALIASES = {
    # The paper's default A10G host for its headline numbers.
    "a10g": "a10g-g5.4xlarge",
}


def resolve_hardware(name: str) -> HardwareSpec:
    """A preset by name (or alias); raises NeoError naming the choices."""
    key = ALIASES.get(name, name)
    try:
        return PRESETS[key]
    except KeyError:
        choices = ", ".join([*PRESETS, *ALIASES])
        raise NeoError(
            f"unknown hardware preset {name!r}: use one of {choices}, or a profile JSON file"
        ) from None
