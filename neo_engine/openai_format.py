"""Engine outputs in OpenAI's response shapes: completion text with echo, log-probabilities of
completions and chat (whole responses and streamed deltas), usage.

Token strings are each token decoded alone by the model's tokenizer (or vLLM's
`token_id:<id>`, `return_tokens_as_token_ids`); a completion's `text_offset` is the cumulative
length of those strings, as OpenAI's legacy API gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light at import time: the server loads this before the engine
    from neo_engine.engine import RequestOutput
    from neo_engine.sampling import TokenLogprob


def token_namer(tokenizer, as_ids: bool = False) -> Callable[[int], str]:
    """How a response names a token: its text decoded alone, or `token_id:<id>` (vLLM's
    return_tokens_as_token_ids, for clients that need the exact ids back)."""
    if as_ids:
        return lambda token: f"token_id:{token}"
    return lambda token: tokenizer.decode([token])


def entries(
    out: RequestOutput, echo: bool, prompt_only: bool, start: int = 0
) -> list[tuple[int, TokenLogprob | None]]:
    """(token id, its log-probability or None) of the tokens a response shows, from `start`:
    the prompt's when echoed, then the generated ones (none when only the prompt is asked)."""
    shown: list[tuple[int, TokenLogprob | None]] = []
    if echo:
        scored = out.prompt_logprobs or []
        shown += [
            (token, scored[i] if i < len(scored) else None)
            for i, token in enumerate(out.prompt_token_ids)
        ]
    if not prompt_only:
        if out.logprobs:
            shown += [(lp.token_id, lp) for lp in out.logprobs]
        else:
            shown += [(token, None) for token in out.token_ids]
    return shown[start:]


def completion_logprobs(
    name: Callable[[int], str],
    shown: list[tuple[int, TokenLogprob | None]],
    offset: int = 0,
    top: int | None = None,
) -> dict:
    """The legacy completions `logprobs` object over `shown` tokens, each named by `name`
    (`token_namer`), offsets from `offset`, at most `top` alternatives each (a prompt scored
    for more, vLLM's prompt_logprobs, shows the count asked here)."""
    tokens = [name(token) for token, _ in shown]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob if lp else None for _, lp in shown],
        "top_logprobs": [{name(t): v for t, v in lp.top[:top]} if lp else None for _, lp in shown],
        "text_offset": offsets,
    }


def chat_logprobs(name: Callable[[int], str], logprobs: list[TokenLogprob]) -> dict:
    """The chat `logprobs` object: one entry per generated token, with its alternatives, each
    named by `name` (`token_namer`)."""

    def entry(token: int, logprob: float) -> dict:
        text = name(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            entry(lp.token_id, lp.logprob) | {"top_logprobs": [entry(t, v) for t, v in lp.top]}
            for lp in logprobs
        ]
    }


def prompt_logprobs(name: Callable[[int], str], out: RequestOutput) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt position, None for the first (nothing comes before
    it), else {token id: {"logprob", "rank", "decoded_token"}} of the prompt's token and its
    most likely alternatives (ranked 1, 2, ...)."""

    return [
        {
            str(token): {"logprob": entry.logprob, "rank": entry.rank, "decoded_token": name(token)}
            for token, entry in position.items()
        }
        if position is not None
        else None
        for position in out.prompt_logprobs or []
    ]


def usage(outputs: list[RequestOutput], prompt_only: bool = False, n: int = 1) -> dict:
    """Token counts of a response: `outputs` come in groups of `n` completions of one prompt
    each, whose prompt counts once (as vLLM counts it)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs[::n])
    completion = 0 if prompt_only else sum(len(o.token_ids) for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
