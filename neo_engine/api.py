"""The offline API, shaped like vLLM's: `LLM(model, ...)` and `llm.generate(prompts, params)`."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from neo_engine.engine import EngineConfig, LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams


class LLM:
    """Load a model once, then generate for batches of prompts.

    Example:
        llm = LLM("dummy:tiny", policy="neo", gpu_kv_blocks=8)
        out = llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))
        print(out[0].text, out[0].token_ids)
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        policy: str = "neo",
        gpu_kv_blocks: int | None = None,
        cpu_kv_blocks: int | None = None,
        block_size: int = 16,
        dtype: str | None = None,
        kv_dtype: str | None = None,
        cost_model=None,
        **kwargs,
    ):
        self.engine = LLMEngine(
            EngineConfig(
                model=model,
                device=device,
                policy=policy,
                gpu_kv_blocks=gpu_kv_blocks,
                cpu_kv_blocks=cpu_kv_blocks,
                block_size=block_size,
                dtype=dtype,
                kv_dtype=kv_dtype,
                **kwargs,
            ),
            cost_model=cost_model,
        )

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | list[int] | Sequence[str | list[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One output per prompt, in the order given. Prompts are strings or token-id lists."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params)]
        results: dict[int, RequestOutput] = {}
        bar = tqdm(total=len(ids), unit="req", disable=not use_tqdm)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished and out.request_id not in results:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [results[i] for i in ids]
