import subprocess
import sys

HEAVY = ("torch", "simpy", "pandas", "plotly", "numpy", "scipy")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_scheduler_imports_no_heavy_package():
    assert loaded_after("import neo_sim.scheduler") == []


def test_cost_models_and_profiles_import_pure():
    assert (
        loaded_after("import neo_sim.costmodel, neo_sim.profiled, neo_sim.profile, neo_sim.catalog")
        == []
    )


def test_scheduler_sources_never_import_torch_or_simpy():
    import pathlib

    import neo_sim.scheduler as pkg

    for path in pathlib.Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        for name in ("torch", "simpy", "pandas", "plotly"):
            assert f"import {name}" not in text, f"{path.name} imports {name}"
