"""neo_sim: the performance model of NEO-style LLM serving and everything pure Python.

Importing this package loads nothing heavy: the scheduler, specs and cost models are plain
Python, so the engine (torch) and the simulator can both import them.
"""

__version__ = "0.1.0"

from neo_sim.machine import export_torch_isa_environment  # noqa: E402 (NEO_CPU_ISA, pure Python)

export_torch_isa_environment()
