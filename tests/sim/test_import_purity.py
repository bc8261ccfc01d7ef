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


def test_nothing_in_neo_sim_imports_the_engine():
    """The engine builds on the simulator's core, never the reverse: neo_sim reaches engine
    commands only through the `neo_sim.commands` entry points."""
    import ast
    import pathlib

    import neo_sim

    offenders = []
    for path in pathlib.Path(neo_sim.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "neo_engine"]
    assert offenders == []


def test_neo_sim_cli_loads_without_torch():
    """`neo-sim --help` stays fast: the engine's validate command registers without torch."""
    assert "torch" not in loaded_after("from neo_sim.cli import build_parser; build_parser()")
