"""The cost model: per-layer seconds of each operator of a Llama layer on one machine.

The scheduler prices its candidate plans with it and the simulator advances its clock with it
(docs/architecture.md, "Cost model"). The operators, their arguments (in call order), units
and what each covers are the registry `neo_sim.operators.OPERATORS`; every implementation has
one method per operator with exactly those arguments, which `CostModel` checks when a
subclass is defined. Two implementations: `RooflineCostModel` here (from specs and efficiency
factors) and `ProfiledCostModel` in `neo_sim.profiled` (from a measured or derived profile).
All return seconds (float) and 0.0 for empty work; `launch` is a property (no arguments).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from neo_sim.errors import NeoError
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.operators import OPERATORS, operator
from neo_sim.opwork import linear_kernels, work


class CostModel(ABC):
    """Per-layer cost of each operator, in seconds. Pure Python: the scheduler calls it."""

    model: ModelSpec
    description: str

    def __init_subclass__(cls, **kwargs) -> None:
        """A concrete cost model implements every registered operator, arguments in order."""
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        for op in OPERATORS.values():
            member = inspect.getattr_static(cls, op.name, None)
            if op.args == ():
                ok = isinstance(member, property)
            else:
                params = tuple(inspect.signature(member).parameters)[1:] if member else None
                ok = params == op.args
            if not ok:
                raise TypeError(
                    f"{cls.__name__}.{op.name} must take {op.args or 'no arguments (a property)'}"
                    " as registered in neo_sim.operators"
                )

    @abstractmethod
    def linear(self, num_tokens: int) -> float: ...

    @abstractmethod
    def prefill_attn(self, prompt_len: int) -> float: ...

    @abstractmethod
    def gpu_decode_attn(self, batch: int, total_tokens: int) -> float: ...

    @abstractmethod
    def cpu_decode_attn(self, batch: int, total_tokens: int) -> float: ...

    @abstractmethod
    def h2d(self, num_bytes: float) -> float: ...

    @abstractmethod
    def d2h(self, num_bytes: float) -> float: ...

    @property
    @abstractmethod
    def launch(self) -> float: ...

    @abstractmethod
    def lm_head(self, num_seqs: int) -> float: ...

    def host_overhead(self, num_seqs: int) -> float:
        """Seconds of the serving engine's own work in an iteration of `num_seqs` sequences
        beyond the forward pass and sampling (`neo_sim.profile.HostOverhead`): an engine's
        property, measured on it; 0 where nothing measured it (derived hardware)."""
        return 0.0

    def fused_decode_saving(self, num_seqs: int) -> float:
        """Per layer, seconds a decode-only iteration of `num_seqs` device decodes saves where
        the engine runs each layer in one call (`neo_sim.profile.FusedDecodeSaving`): an
        engine's property, measured on it; 0 where nothing measured it. Charged only to a plan
        the engine fuses (`neo_sim.scheduler.plan.SubBatch.decodes_only`, alone in its
        plan), by the timing model and the scheduler's estimate alike."""
        return 0.0

    def evaluate(self, op: str, *args: float) -> float:
        """Seconds of operator `op` called with `args` (the registry's order)."""
        operator(op)  # KeyError naming the registered operators
        member = getattr(self, op)
        return member if not args and not callable(member) else member(*args)

    def gpu_decode_attn_run(self, batch: int, first_total: int, count: int) -> list[float]:
        """`gpu_decode_attn(batch, first_total + k * batch)` for k = 0, 1, ..., count - 1: a
        steady run's decode attention, every context one token longer per iteration. An
        implementation may walk its tables faster; the values stay the same."""
        return [self.gpu_decode_attn(batch, first_total + k * batch) for k in range(count)]

    def cpu_decode_attn_at(self, batch: int) -> Callable[[int], float]:
        """`cpu_decode_attn(batch, total_tokens)` as a function of `total_tokens`: NEO's
        greedy step prices many CPU decode candidates at one batch size. An implementation
        may bind per-batch terms once; the values stay the same."""
        return lambda total_tokens: self.cpu_decode_attn(batch, total_tokens)

    # Helpers shared by every implementation --------------------------------------------------
    def cpu_copies_s(self, batch: int) -> tuple[float, float]:
        """Per layer, for `batch` CPU decodes: (q/k/v to the host, attention output back),
        seconds. Memoised: the scheduler asks for the same few batch sizes constantly."""
        memo = self.__dict__.setdefault("_cpu_copies_memo", {})
        value = memo.get(batch)
        if value is None:
            value = memo[batch] = (
                self.d2h(self.qkv_bytes(batch)),
                self.h2d(self.attn_out_bytes(batch)),
            )
        return value

    def linear_table(self, num_tokens: int) -> list[float]:
        """`linear(n)` for n = 0, 1, ..., at least `num_tokens`, as a list: NEO's greedy step
        reads the linear layers at each width it grows through. Kept and extended on demand
        (widths stay below the batch token budget)."""
        table = self.__dict__.setdefault("_linear_table", [])
        if len(table) <= num_tokens:
            table.extend(map(self.linear, range(len(table), num_tokens + 1)))
        return table

    def cpu_lane_table(self, batch: int) -> list[tuple[float, Callable[[int], float], float]]:
        """Per layer, for n = 0, 1, ..., at least `batch` CPU decodes: (q/k/v to the host, CPU
        attention as a function of the decodes' total context (`cpu_decode_attn_at`),
        attention output back). Kept and extended on demand, as `linear_table`."""
        table = self.__dict__.setdefault("_cpu_lane_table", [])
        for n in range(len(table), batch + 1):
            to_host, back = self.cpu_copies_s(n)
            table.append((to_host, self.cpu_decode_attn_at(n), back))
        return table

    def qkv_bytes(self, batch: int) -> int:
        """Bytes of one layer's new q, k, v for `batch` CPU-decode requests (device to host)."""
        m = self.model
        return batch * (m.q_size + 2 * m.kv_size) * m.kv_dtype_bytes

    def attn_out_bytes(self, batch: int) -> int:
        """Bytes of one layer's attention output for `batch` CPU decodes (host to device)."""
        m = self.model
        return batch * m.q_size * m.dtype_bytes


_FIT = (
    "fitted by experiments/gpu_calibration.py on measured A100 and A40 times "
    "[vidur-profiling] (experiments/results/gpu_calibration/report.md)"
)

# Where each default efficiency comes from. A factor is either inside a published measurement's
# range (cited) or a labelled assumption; none was fitted to a result of the NEO paper.
EFFICIENCY_SOURCES: dict[str, str] = {
    "gpu_gemm": (
        "0.749 of the tensor peak for GEMMs, one value for both GPUs, "
        + _FIT
        + "; below the best-shape ceiling: BF16 matmul reaches 80.1% of peak on H100 SXM, "
        "82.2-85.9% on A100 (Maximum Achievable Matmul FLOPS table, "
        "github.com/stas00/ml-engineering compute/accelerator/README.md)"
    ),
    "gpu_gemm_sharpness": (
        "1.61: how sharply a GEMM's compute and weight-streaming limits meet (the roofline's max "
        "is infinity; measured GEMMs near the ridge are slower than either limit), " + _FIT
    ),
    "gpu_attn": (
        "0.5, inside the measured range of FlashAttention-2: 50-73% of peak FLOPs/s on A100 "
        "(Dao 2023, arXiv:2307.08691, abstract) and 35% on H100 (Shah et al. 2024, "
        "FlashAttention-3, arXiv:2407.08608, abstract)"
    ),
    "gpu_memory": (
        "0.84 of the memory bandwidth, GEMM weight streaming, "
        + _FIT
        + "; inside measured H100 SXM5 weight streaming: 2.6-2.8 TB/s = 78-84% of 3.35 TB/s "
        "(Nsight Compute, mikamirai.com/blog/gpu-memory-bandwidth, 2026); also applied to "
        "attention and the LM head, which the measurements do not cover"
    ),
    "gpu_elementwise_memory": (
        "0.644 of the memory bandwidth for elementwise kernels (norms, rotary, activation, "
        "residual add), " + _FIT
    ),
    "cpu_memory": (
        "0.9 of the host's sustained bandwidth (assumption, just above the most our host kernel "
        "measured: 52-88% of the read bandwidth of a 2-core AVX-512 VM, 47-71% of an AVX2 one; "
        "benchmarks/results/host_attention*.json, docs/engine-benchmarks.md)"
    ),
    "cpu_compute": "0.5 of fp32 FMA peak in a reduction-heavy kernel (assumption)",
    "pcie": (
        "0.8: pinned host-to-device copies measured at 25.1 GB/s on A100 PCIe 4.0 x16 = 80% of "
        "31.5 GB/s (NVIDIA/nvbandwidth issue 42) and '25 GB/s measured peak' (ZaidQureshi/bam "
        "issue 54); on an H100 PCIe 5.0 host 35 GB/s H2D (0.56) and 52.8 GB/s D2H (0.84) were "
        "measured (NVIDIA/nvbandwidth issue 24), so the derived H100 profiles may be "
        "optimistic on H2D swaps"
    ),
    "interconnect": (
        "0.663 of the NVLink per-direction rate: 2-GPU NVLink all-reduce on A100 (ring cost "
        "2 (n-1)/n x bytes), " + _FIT + "; 8x H100 NVLink-SHARP measures 476 GB/s bus "
        "bandwidth at GB-sized messages (NVIDIA/nccl-tests issue 290)"
    ),
    "pcie_latency_s": "10 us per copy (assumption)",
    "collective_latency_s": ("42.7 us per all-reduce: 2-GPU NVLink all-reduce on A100, " + _FIT),
    "gpu_kernel_s": "5.66 us per GEMM or attention kernel, " + _FIT,
    "gpu_elementwise_kernel_s": "2.44 us per elementwise kernel, " + _FIT,
    "launch_s": "0.8 ms per layer of CPU attention: the NEO artifact's constant [artifact]",
    "sampling_s": "0.2 ms per iteration for sampling and bookkeeping (assumption)",
}


# The fields of Efficiencies that are fractions of a peak, in (0, 1].
_FRACTIONS = (
    "gpu_gemm",
    "gpu_attn",
    "gpu_memory",
    "gpu_elementwise_memory",
    "cpu_memory",
    "cpu_compute",
    "pcie",
    "interconnect",
)


@dataclass(frozen=True, kw_only=True)
class Efficiencies:
    """Fractions of datasheet peaks that real kernels achieve, plus fixed overheads.

    Each default is inside a cited published measurement or a labelled assumption
    (EFFICIENCY_SOURCES); none was tuned to a result. A profile measured on real hardware
    replaces all of them.
    """

    gpu_gemm: float = 0.749
    gpu_gemm_sharpness: float = 1.61
    gpu_attn: float = 0.5
    gpu_memory: float = 0.84
    gpu_elementwise_memory: float = 0.644
    cpu_memory: float = 0.9
    cpu_compute: float = 0.5
    pcie: float = 0.8
    interconnect: float = 0.663
    pcie_latency_s: float = 10e-6
    collective_latency_s: float = 42.7e-6
    gpu_kernel_s: float = 5.66e-6
    gpu_elementwise_kernel_s: float = 2.44e-6
    launch_s: float = 0.8e-3
    sampling_s: float = 0.2e-3
    sources: dict[str, str] = field(default_factory=lambda: dict(EFFICIENCY_SOURCES), compare=False)

    def __post_init__(self) -> None:
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise NeoError(f"efficiency {name} must be in (0, 1], got {value}")
        if not self.gpu_gemm_sharpness >= 1:
            raise NeoError(f"gpu_gemm_sharpness must be >= 1, got {self.gpu_gemm_sharpness}")

    @classmethod
    def of_probed_rates(cls, **overrides: float) -> Efficiencies:
        """For a cost model over a machine's probed rates, which are achieved rates already:
        efficiencies of 1 and the roofline's plain max (the calibrated shape describes
        datasheet peaks). The interconnect keeps its default: a probe measures one device."""
        ones = {name: 1.0 for name in _FRACTIONS if name != "interconnect"}
        return cls(**(ones | {"gpu_gemm_sharpness": math.inf} | overrides))


def _roofline(flops: float, flops_per_s: float, num_bytes: float, bytes_per_s: float) -> float:
    return max(flops / flops_per_s, num_bytes / bytes_per_s)


class RooflineCostModel(CostModel):
    """Costs from datasheet peaks: each op takes the longer of its compute and memory time.

    With tensor parallelism the GPU ops split across `tp` GPUs (plus two all-reduces per layer);
    the host CPU attends for all of them, and each GPU has its own PCIe link.
    """

    def __init__(
        self, model: ModelSpec, hardware: HardwareSpec, efficiencies: Efficiencies | None = None
    ):
        self.model = model
        self.hardware = hardware
        self.eff = efficiencies or Efficiencies()
        e, g = self.eff, hardware.gpu
        self._tp = hardware.tp
        self._gemm_flops = g.peak_flops_per_s * e.gpu_gemm
        self._attn_flops = g.peak_flops_per_s * e.gpu_attn
        self._gpu_bw = g.hbm_bytes_per_s * e.gpu_memory
        self._elementwise_bw = g.hbm_bytes_per_s * e.gpu_elementwise_memory
        self._cpu_bw = hardware.cpu.mem_bytes_per_s * e.cpu_memory
        self._cpu_flops = hardware.cpu.peak_flops_per_s * e.cpu_compute
        self.description = f"roofline: {model.name} on {hardware.name} (datasheet x efficiencies)"

    # per layer ----------------------------------------------------------------------------
    def _gpu_op(self, op: str, *args: float, flops_per_s: float = 0.0) -> float:
        """Roofline time of one GPU op, split over the TP group."""
        w = work(op, self.model, *args)
        return _roofline(
            w.flops / self._tp,
            flops_per_s or self._gemm_flops,
            w.num_bytes / self._tp,
            self._gpu_bw,
        )

    def linear(self, num_tokens: int) -> float:
        """The layer's kernels on one TP shard (`opwork.linear_kernels`): GEMMs priced by
        `_gemm_s`, elementwise passes by bandwidth plus a fixed cost; then two all-reduces."""
        if num_tokens <= 0:
            return 0.0
        e = self.eff
        t = 0.0
        for k in linear_kernels(self.model, num_tokens, self._tp):
            if k.gemm:
                t += self._gemm_s(k.flops, k.num_bytes)
            else:
                t += e.gpu_elementwise_kernel_s + k.num_bytes / self._elementwise_bw
        if self._tp > 1:
            m = self.model
            t += 2 * self._all_reduce(num_tokens * m.hidden_size * m.dtype_bytes)
        return t

    def prefill_attn(self, prompt_len: int) -> float:
        if prompt_len <= 0:
            return 0.0
        attn = self._gpu_op("prefill_attn", prompt_len, flops_per_s=self._attn_flops)
        return attn + self.eff.gpu_kernel_s

    def gpu_decode_attn(self, batch: int, total_tokens: int) -> float:
        if batch <= 0:
            return 0.0
        return (
            self._gpu_op("gpu_decode_attn", batch, total_tokens, flops_per_s=self._attn_flops)
            + self.eff.gpu_kernel_s
        )

    def cpu_decode_attn(self, batch: int, total_tokens: int) -> float:
        if batch <= 0:
            return 0.0
        w = work("cpu_decode_attn", self.model, batch, total_tokens)
        return _roofline(w.flops, self._cpu_flops, w.num_bytes, self._cpu_bw)

    def h2d(self, num_bytes: float) -> float:
        return self._copy(num_bytes, self.hardware.pcie_h2d_bytes_per_s)

    def d2h(self, num_bytes: float) -> float:
        return self._copy(num_bytes, self.hardware.pcie_d2h_bytes_per_s)

    @property
    def launch(self) -> float:
        return self.eff.launch_s

    # per iteration ------------------------------------------------------------------------
    def lm_head(self, num_seqs: int) -> float:
        if num_seqs <= 0:
            return 0.0
        w = work("lm_head", self.model, num_seqs)
        return self._gemm_s(w.flops / self._tp, w.num_bytes / self._tp) + self.eff.sampling_s

    # internals ----------------------------------------------------------------------------
    def _gemm_s(self, flops: float, num_bytes: float) -> float:
        """One GEMM: its compute and weight-streaming limits meet smoothly, as measured GEMMs
        do near the ridge point, (c^p + m^p)^(1/p) with p = `gpu_gemm_sharpness` (the
        roofline's max is p = inf), plus a fixed cost per kernel."""
        compute = flops / self._gemm_flops
        memory = num_bytes / self._gpu_bw
        top = max(compute, memory)
        p = self.eff.gpu_gemm_sharpness
        if top > 0 and not math.isinf(p):
            top *= ((compute / top) ** p + (memory / top) ** p) ** (1 / p)
        return self.eff.gpu_kernel_s + top

    def _copy(self, num_bytes: float, link_bytes_per_s: float) -> float:
        if num_bytes <= 0:
            return 0.0
        bandwidth = link_bytes_per_s * self.eff.pcie * self._tp
        return self.eff.pcie_latency_s + num_bytes / bandwidth

    def _all_reduce(self, num_bytes: float) -> float:
        tp = self._tp
        bus = self.hardware.interconnect_bytes_per_s * self.eff.interconnect
        return self.eff.collective_latency_s + 2 * (tp - 1) / tp * num_bytes / bus
