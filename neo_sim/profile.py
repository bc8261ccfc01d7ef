"""The profile file: measured (or derived) operator times of one model on one machine.

A profile is JSON:

    {
      "schema_version": 1,
      "name": "t4-llama-2-7b",
      "hardware": {HardwareSpec fields, every figure with a source},
      "model": {ModelSpec fields},
      "provenance": {"kind": "measured" | "derived", "date": "YYYY-MM-DD", "tool": "...",
                     "notes": "...", "sources": [...], "machine": {...}},
      "samples": {
        "linear":          {"num_tokens": [...], "seconds": [...]},
        "prefill_attn":    {"prompt_len": [...], "seconds": [...]},
        "lm_head":         {"num_seqs":   [...], "seconds": [...]},
        "h2d":             {"bytes":      [...], "seconds": [...]},
        "d2h":             {"bytes":      [...], "seconds": [...]},
        "gpu_decode_attn": {"batch": [...], "context_len": [...], "seconds": [[...], ...]},
        "cpu_decode_attn": {"batch": [...], "context_len": [...], "seconds": [[...], ...]},
        "launch":          {"seconds": 0.0008},
        "host_overhead":   {"fixed_s": ..., "per_seq_s": ...}   (optional: `HostOverhead`)
        "fused_decode_saving": {"fixed_s": ..., "per_seq_s": ...}   (optional: `FusedDecodeSaving`)
      },
      "fit": {op: {"fixed_s", "per_item_s", "flops_per_s", "bytes_per_s"}}   (optional)
    }

Times are per layer (lm_head: per iteration), in seconds. For the decode ops `context_len` is
the mean context per request, so `seconds[i][j]` is the time of `batch[i]` requests over
`batch[i] * context_len[j]` cached tokens. Loading validates everything and raises `NeoError`
with one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neo_sim.errors import NeoError
from neo_sim.files import read_json_object
from neo_sim.fitting import RooflineFit, fit_roofline
from neo_sim.hardware import HardwareSpec
from neo_sim.model import ModelSpec
from neo_sim.operators import SAMPLED, operator
from neo_sim.opwork import work

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """How a profile was obtained: `measured` on a machine or `derived` from cited specs."""

    kind: str
    date: str
    tool: str
    notes: str = ""
    sources: tuple[str, ...] = ()
    machine: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Samples1D:
    xs: tuple[float, ...]
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Samples2D:
    batch: tuple[float, ...]
    context_len: tuple[float, ...]
    seconds: tuple[tuple[float, ...], ...]


# What a measured profile's engine terms cover (its host overhead and fused decode saving); a
# profile measured under another accounting prices the engine's steps differently, so it is
# measured again (it is part of `neo_engine.cpu_kernel.engine_build`). 2 (2026-12-05): the
# forward pass's untimed work too. 3 (2026-12-06): the fused decode layers' saving.
HOST_OVERHEAD_ACCOUNTING = 3


@dataclass(frozen=True)
class PerSequence:
    """Seconds linear in an iteration's sequences: `fixed_s + per_seq_s * num_seqs`."""

    fixed_s: float
    per_seq_s: float

    def seconds(self, num_seqs: int) -> float:
        return self.fixed_s + self.per_seq_s * num_seqs

    def __str__(self) -> str:
        return f"{1e3 * self.fixed_s:.3f} ms + {1e6 * self.per_seq_s:.1f} us per sequence"


@dataclass(frozen=True)
class HostOverhead(PerSequence):
    """The serving engine's own work in an iteration beyond the operators a profile times
    (scheduling, bookkeeping, detokenizing, and inside the forward pass the embedding lookup,
    building the inputs and the dispatch between layers), which the GPU waits through in a
    synchronous engine. neo-profile measures it on the engine
    (`opbench.measure_host_overhead`); derived profiles and profiles measured before it
    existed have none (an iteration then pays nothing for it)."""


@dataclass(frozen=True)
class FusedDecodeSaving(PerSequence):
    """Per layer, what a decode-only iteration saves where the engine runs each layer in one
    compiled call (`neo_engine/decode_layers.py`: a CPU device, one sub-batch of device decodes,
    no prefill, no host decode) against the stages one by one, as the operators are timed: the
    Python and dispatch between the stages (SmolLM2-135M, bf16, AMX VM: 120-180 us a layer at
    1-128 decodes of 16-256 tokens, ad hoc, 2026-12-06). neo-profile measures it
    (`opbench.measure_fused_decode_saving`) where the engine fuses; elsewhere there is none
    and such an iteration pays its stages' sum."""


# The engine's own terms a measured profile may hold beside its operators: `Profile` field
# and `samples` key -> their kind.
ENGINE_TERMS: dict[str, type[PerSequence]] = {
    "host_overhead": HostOverhead,
    "fused_decode_saving": FusedDecodeSaving,
}


@dataclass(frozen=True)
class Profile:
    name: str
    hardware: HardwareSpec
    model: ModelSpec
    provenance: Provenance
    samples: dict[str, Samples1D | Samples2D]
    launch_s: float
    fits: dict[str, RooflineFit]
    path: str = ""
    host_overhead: HostOverhead | None = None
    fused_decode_saving: FusedDecodeSaving | None = None

    def rescaled(self, factors: Mapping[str, float]) -> Profile:
        """This profile with each operator's samples times its factor (1 where none is given):
        the same machine measured again at another speed. Extrapolation scales with them (it
        is relative to the grid's edge), so the fits stay."""

        def scaled(op: str, s: Samples1D | Samples2D) -> Samples1D | Samples2D:
            f = factors.get(op, 1.0)
            if isinstance(s, Samples1D):
                return Samples1D(s.xs, tuple(f * t for t in s.seconds))
            rows = tuple(tuple(f * t for t in row) for row in s.seconds)
            return Samples2D(s.batch, s.context_len, rows)

        samples = {op: scaled(op, s) for op, s in self.samples.items()}
        return dataclasses.replace(self, samples=samples)

    def to_dict(self) -> dict[str, Any]:
        samples: dict[str, Any] = {}
        for op, s in self.samples.items():
            if isinstance(s, Samples1D):
                (axis,) = operator(op).axes
                samples[op] = {axis: list(s.xs), "seconds": list(s.seconds)}
            else:
                samples[op] = {
                    "batch": list(s.batch),
                    "context_len": list(s.context_len),
                    "seconds": [list(row) for row in s.seconds],
                }
        samples["launch"] = {"seconds": self.launch_s}
        for term in ENGINE_TERMS:
            value = getattr(self, term)
            if value is not None:
                samples[term] = dataclasses.asdict(value)
        p = self.provenance
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "hardware": self.hardware.to_dict(),
            "model": self.model.to_dict(),
            "provenance": {
                "kind": p.kind,
                "date": p.date,
                "tool": p.tool,
                "notes": p.notes,
                "sources": list(p.sources),
                "machine": dict(p.machine),
            },
            "samples": samples,
            "fit": {op: f.to_dict() for op, f in self.fits.items()},
        }


def fit_samples(
    model: ModelSpec, samples: dict[str, Samples1D | Samples2D]
) -> dict[str, RooflineFit]:
    """Fit every operator's samples (needs scipy)."""
    fits = {}
    for op, s in samples.items():
        points = sample_points(s)
        works = [work(op, model, *operator(op).from_axes(*point)) for point, _ in points]
        fits[op] = fit_roofline(works, [t for _, t in points])
    return fits


def sample_points(s: Samples1D | Samples2D) -> list[tuple[tuple[float, ...], float]]:
    """Every (sample point, seconds) of one operator's samples."""
    if isinstance(s, Samples1D):
        return [((x,), t) for x, t in zip(s.xs, s.seconds)]
    return [((b, c), t) for b, row in zip(s.batch, s.seconds) for c, t in zip(s.context_len, row)]


def make_profile(
    name: str,
    hardware: HardwareSpec,
    model: ModelSpec,
    provenance: Provenance,
    samples: dict[str, Samples1D | Samples2D],
    launch_s: float,
    host_overhead: HostOverhead | None = None,
    fused_decode_saving: FusedDecodeSaving | None = None,
) -> Profile:
    """Assemble a profile from samples, fitting each operator."""
    return Profile(
        name,
        hardware,
        model,
        provenance,
        dict(samples),
        float(launch_s),
        fit_samples(model, samples),
        host_overhead=host_overhead,
        fused_decode_saving=fused_decode_saving,
    )


def save_profile(profile: Profile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; any problem raises NeoError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise NeoError(f"{path}: no such profile file")
    data = read_json_object(path, "a profile")
    return profile_from_dict(data, str(path))


def profile_from_dict(data: Any, where: str = "profile") -> Profile:
    v = _Validator(where)
    if not isinstance(data, dict):
        v.fail("", "expected a JSON object")
    version = v.get(data, "schema_version", int)
    if version > SCHEMA_VERSION:
        v.fail(
            "schema_version",
            f"version {version} is newer than this neo understands ({SCHEMA_VERSION}); upgrade neo",
        )
    if version < 1:
        v.fail("schema_version", f"must be >= 1, got {version}")
    name = v.get(data, "name", str)
    hardware = _wrap(
        lambda: HardwareSpec.from_dict(v.get(data, "hardware", dict)), where, "hardware"
    )
    model = _wrap(lambda: ModelSpec.from_dict(v.get(data, "model", dict)), where, "model")
    prov = v.get(data, "provenance", dict)
    kind = v.get(prov, "kind", str, "provenance.kind")
    if kind not in ("measured", "derived"):
        v.fail("provenance.kind", f"must be 'measured' or 'derived', got {kind!r}")
    provenance = Provenance(
        kind,
        v.get(prov, "date", str, "provenance.date"),
        v.get(prov, "tool", str, "provenance.tool"),
        str(prov.get("notes", "")),
        tuple(prov.get("sources", ())),
        dict(prov.get("machine", {})),
    )
    raw = v.get(data, "samples", dict)
    samples: dict[str, Samples1D | Samples2D] = {}
    for op in SAMPLED:
        s = v.get(raw, op.name, dict, f"samples.{op.name}")
        where = f"samples.{op.name}"
        if len(op.axes) == 1:
            (axis,) = op.axes
            xs = v.numbers(s, axis, f"{where}.{axis}", increasing=True)
            secs = v.numbers(s, "seconds", f"{where}.seconds", length=len(xs))
            samples[op.name] = Samples1D(xs, secs)
            continue
        rows_axis, cols_axis = op.axes
        rows_at = v.numbers(s, rows_axis, f"{where}.{rows_axis}", increasing=True)
        cols_at = v.numbers(s, cols_axis, f"{where}.{cols_axis}", increasing=True)
        rows = v.get(s, "seconds", list, f"{where}.seconds")
        if len(rows) != len(rows_at):
            v.fail(f"{where}.seconds", f"expected {len(rows_at)} rows (one per {rows_axis})")
        secs2 = tuple(
            v.numbers({"r": row}, "r", f"{where}.seconds[{i}]", length=len(cols_at))
            for i, row in enumerate(rows)
        )
        samples[op.name] = Samples2D(rows_at, cols_at, secs2)
    launch = v.seconds(v.get(raw, "launch", dict, "samples.launch"), "seconds", "samples.launch")
    terms: dict[str, PerSequence] = {}
    for term, kind in ENGINE_TERMS.items():  # optional: measured profiles only, since they exist
        if term in raw:
            entry = v.get(raw, term, dict, f"samples.{term}")
            terms[term] = kind(
                *(v.seconds(entry, part, f"samples.{term}") for part in ("fixed_s", "per_seq_s"))
            )
    fits_raw = data.get("fit")
    if fits_raw:
        fits = {}
        for op in SAMPLED:
            entry = v.get(fits_raw, op.name, dict, f"fit.{op.name}")
            fits[op.name] = _wrap(
                lambda entry=entry: RooflineFit.from_dict(entry), where, f"fit.{op.name}"
            )
    else:
        fits = fit_samples(model, samples)
    return Profile(name, hardware, model, provenance, samples, launch, fits, where, **terms)


def _wrap(build, where: str, field_name: str):
    try:
        return build()
    except NeoError as exc:
        message = str(exc)
        if message.startswith(where):
            raise
        raise NeoError(f"{where}: field '{field_name}': {message}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise NeoError(f"{where}: field '{field_name}': {exc}") from None


class _Validator:
    """Field access that fails with `file: field 'a.b': what is wrong`."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field_name: str, message: str):
        label = f" field '{field_name}':" if field_name else ""
        raise NeoError(f"{self.where}:{label} {message}")

    def get(self, obj: dict, key: str, kind, label: str | None = None):
        label = label or key
        if not isinstance(obj, dict) or key not in obj:
            self.fail(label, "missing")
        value = obj[key]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.fail(label, f"expected {names}, got {type(value).__name__}")
        return value

    def seconds(self, obj: dict, key: str, parent: str) -> float:
        """`obj[key]` as a finite number of seconds >= 0 (its label: `parent.key`)."""
        label = f"{parent}.{key}"
        value = self.get(obj, key, (int, float), label)
        if not (value >= 0 and math.isfinite(value)):
            self.fail(label, f"must be a finite number >= 0, got {value}")
        return float(value)

    def numbers(
        self, obj: dict, key: str, label: str, length: int | None = None, increasing: bool = False
    ) -> tuple[float, ...]:
        values = self.get(obj, key, list, label)
        if not values:
            self.fail(label, "empty list")
        if length is not None and len(values) != length:
            self.fail(label, f"expected {length} values, got {len(values)}")
        for i, x in enumerate(values):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                self.fail(label, f"item {i} is not a finite number: {x!r}")
            if x <= 0:
                self.fail(label, f"item {i} must be positive, got {x}")
        if increasing and any(b <= a for a, b in zip(values, values[1:])):
            self.fail(label, "must be strictly increasing")
        return tuple(float(x) for x in values)
