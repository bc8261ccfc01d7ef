"""The offline API, shaped like vLLM's: `LLM(model, ...)` and `llm.generate(prompts, params)`."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm import tqdm

from neo_engine.config import EngineConfig
from neo_engine.engine import LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams
from neo_engine.tokenizer import ChatOptions
from neo_sim.errors import NeoError


class LLM:
    """Load a model once, then generate for batches of prompts.

    Example:
        llm = LLM("dummy:tiny", policy="neo", gpu_kv_blocks=8)
        out = llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))
        print(out[0].text, out[0].token_ids)
    """

    def __init__(self, model: str, cost_model=None, **settings):
        """`settings`: any engine setting by its flat name, as `neo-serve`'s flags name them
        (`device`, `policy`, `dtype`, `gpu_kv_blocks`, `max_num_seqs`, `max_model_len`, ...;
        see `neo_engine.config`). `cost_model` replaces the scheduler's cost model."""
        self.engine = LLMEngine(EngineConfig.of(model, **settings), cost_model=cost_model)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def get_tokenizer(self):
        """vLLM's: the model's own tokenizer (transformers', for `apply_chat_template` and
        the like), or the byte tokenizer of a dummy model."""
        return self.engine.tokenizer.backend

    def generate(
        self,
        prompts: str | list[int] | Sequence[str | list[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One output per prompt, in the order given. Prompts are strings, token-id lists, or
        vLLM's prompt dicts (`{"prompt": text}`, `{"prompt_token_ids": ids}`). With `n` > 1 a
        prompt's output is its first completion and `outputs` holds all n (vLLM's shape:
        `out.outputs[j].text`), each its own request (`SamplingParams.samples`)."""
        if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = [_prompt_of(p) for p in prompts]
        params = sampling_params or SamplingParams()
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise NeoError(
                f"give one SamplingParams, or one per prompt: {len(params)} for "
                f"{len(prompts)} prompts"
            )
        ids: list[list[int]] = []  # each prompt's requests, one per completion
        try:
            for prompt, sp in zip(prompts, params):
                ids.append([])
                for sample in sp.samples():
                    ids[-1].append(self.engine.add_request(prompt, sample))
        except Exception:  # a refused prompt: the batch is not started, nothing is left behind
            for rid in (rid for of_prompt in ids for rid in of_prompt):
                self.engine.abort(rid)
            raise
        results: dict[int, RequestOutput] = {}
        bar = tqdm(total=sum(map(len, ids)), unit="req", disable=not use_tqdm)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished and out.request_id not in results:
                    results[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [_gathered([results[rid] for rid in of_prompt]) for of_prompt in ids]

    def chat(
        self,
        messages: Sequence[dict] | Sequence[Sequence[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """vLLM's `LLM.chat`: one conversation (a list of {"role", "content"} messages) or a
        list of them, each rendered by the tokenizer's chat template (neo-serve's chat
        prompt; the keywords as vLLM's, `ChatOptions`), then generated as `generate` does;
        one output per conversation."""
        if not messages:
            raise NeoError("messages is empty")
        options = ChatOptions(
            add_generation_prompt, continue_final_message, chat_template_kwargs or {}
        )
        conversations = [messages] if isinstance(messages[0], dict) else messages
        prompts = []
        for i, conversation in enumerate(conversations):
            if not conversation or not all(isinstance(m, dict) for m in conversation):
                raise NeoError(f"conversation {i}: must be a non-empty list of message dicts")
            prompts.append(self.tokenizer.chat_prompt(list(conversation), options))
        return self.generate(prompts, sampling_params, use_tqdm)


def _gathered(completions: list[RequestOutput]) -> RequestOutput:
    """One prompt's output: its only completion, or the first with all n in `completions`,
    each numbered by `index`."""
    if len(completions) == 1:
        return completions[0]
    for j, out in enumerate(completions):
        out.index = j
    completions[0].completions = tuple(completions)
    return completions[0]


def _prompt_of(prompt):
    """A string or token-id list as given; vLLM's TextPrompt / TokensPrompt dicts unwrapped."""
    if not isinstance(prompt, dict):
        return prompt
    if "prompt_token_ids" in prompt:
        return prompt["prompt_token_ids"]
    if "prompt" in prompt:
        return prompt["prompt"]
    raise NeoError(f"a prompt dict needs 'prompt' or 'prompt_token_ids', got keys {sorted(prompt)}")
