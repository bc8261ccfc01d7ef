"""neo_engine: a real torch engine executing the shared scheduler's plans.

from neo_engine import LLM, SamplingParams
llm = LLM("dummy:tiny", device="cpu", policy="neo", gpu_kv_blocks=8)
print(llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))[0].text)
"""

from neo_engine.api import LLM
from neo_engine.engine import EngineConfig, LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams

__all__ = ["LLM", "LLMEngine", "EngineConfig", "RequestOutput", "SamplingParams"]
