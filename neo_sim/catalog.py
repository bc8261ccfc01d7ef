"""From command-line names to specs and a cost model.

`--hardware` takes a preset name or a profile JSON file; `--model` a model name (see
`neo_sim.model`). For a preset, the shipped profile for that host and model is used when one
exists in a profiles directory, else the preset's roofline cost model. Profiles directories,
searched in order: `$NEO_PROFILES_DIR`, `./profiles`, and the `profiles/` of the checkout this
package lives in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from neo_sim.costmodel import CostModel, RooflineCostModel
from neo_sim.errors import NeoError
from neo_sim.hardware import ALIASES, HardwareSpec, resolve_hardware
from neo_sim.model import ModelSpec, parse_model_arg
from neo_sim.profile import load_profile
from neo_sim.profiled import ProfiledCostModel, same_dimensions


@dataclass(frozen=True)
class Target:
    """What a (hardware, model) pair resolves to."""

    hardware: HardwareSpec
    model: ModelSpec
    cost: CostModel
    source: str  # "profile PATH" or "roofline"


def profile_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("NEO_PROFILES_DIR"):
        dirs.append(Path(os.environ["NEO_PROFILES_DIR"]))
    dirs.append(Path.cwd() / "profiles")
    dirs.append(Path(__file__).resolve().parent.parent / "profiles")
    seen, unique = set(), []
    for d in dirs:
        if d.resolve() not in seen and d.is_dir():
            seen.add(d.resolve())
            unique.append(d)
    return unique


def shipped_profile(hardware_name: str, model: ModelSpec) -> Path | None:
    """The profile file for this preset host and model, if one is shipped."""
    host = ALIASES.get(hardware_name, hardware_name)
    for directory in profile_dirs():
        candidate = directory / f"{host}__{model.name}.json"
        if candidate.is_file():
            return candidate
    return None


def shipped_models(hardware_name: str) -> list[str]:
    """Models with a shipped profile for this preset host (file names `HOST__MODEL.json`),
    sorted: what `--model` can name to be priced from measurements rather than the roofline."""
    host = ALIASES.get(hardware_name, hardware_name)
    return sorted(
        {path.stem.split("__", 1)[1] for d in profile_dirs() for path in d.glob(f"{host}__*.json")}
    )


def resolve_target(
    hardware_arg: str, model_arg: str | None = None, prefer_profile: bool = True
) -> Target:
    """Resolve `--hardware` and `--model` into specs and a cost model.

    With a profile file and no model, the profile's own model is used.
    """
    if hardware_arg.endswith(".json") or Path(hardware_arg).is_file():
        profile = load_profile(hardware_arg)
        model = parse_model_arg(model_arg).spec if model_arg else profile.model
        if model.dtype != profile.model.dtype and same_dimensions(
            model.with_dtype(profile.model.dtype), profile.model
        ):
            model = profile.model  # same model named by preset: measured dtype wins
        cost = ProfiledCostModel(profile, model)
        return Target(profile.hardware, model, cost, f"profile {hardware_arg}")
    hardware = resolve_hardware(hardware_arg)
    if not model_arg:
        profiled = shipped_models(hardware_arg)
        hint = (
            f"shipped profiles for {hardware_arg}: {', '.join(profiled)}"
            if profiled
            else f"no shipped profile for {hardware_arg}: any model preset runs on its roofline"
        )
        raise NeoError(f"--model is required with a hardware preset ({hint})")
    model = parse_model_arg(model_arg).spec
    path = shipped_profile(hardware_arg, model) if prefer_profile else None
    if path is not None:
        profile = load_profile(path)
        return Target(profile.hardware, model, ProfiledCostModel(profile, model), f"profile {path}")
    return Target(hardware, model, RooflineCostModel(model, hardware), "roofline")
