"""neo_engine: a real torch engine executing the shared scheduler's plans.

from neo_engine import LLM, SamplingParams
llm = LLM("dummy:tiny", device="cpu", policy="neo", gpu_kv_blocks=8)
print(llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))[0].text)

The names below load on first use, so that light modules of the package (`neo_engine.config`,
the `neo-sim validate` command) import without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LLM": "neo_engine.api",
    "EngineConfig": "neo_engine.config",
    "LLMEngine": "neo_engine.engine",
    "RequestOutput": "neo_engine.engine",
    "SamplingParams": "neo_engine.sampling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neo_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
