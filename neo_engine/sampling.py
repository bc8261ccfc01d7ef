"""Sampling parameters (vLLM's names and meanings) and token selection."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import torch

from neo_engine.cpu_kernel import greedy_tokens
from neo_sim.errors import NeoError

# Temperatures below this sample greedily: dividing logits by them overflows to inf/NaN
# (vLLM's _SAMPLING_EPS makes the same choice).
GREEDY_BELOW = 1e-5
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 1024
MAX_LOGPROBS = 20  # alternatives per token a request may ask for (vLLM's default cap)
PENALTY_LIMIT = 2.0  # presence / frequency penalties within +-this (OpenAI's and vLLM's range)
LOGIT_BIAS_LIMIT = 100.0  # a logit bias within +-this (OpenAI's range)


class SamplingError(RuntimeError):
    """Sampling one request failed (non-finite logits): that request fails alone."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature 0 (or below 1e-5) means greedy; top_k 0 or -1 and top_p = 1 disable those
    filters (top_k below -1 is refused, as vLLM refuses it); `seed` (0..2^64-1) makes a
    request's sampling reproducible; `stop` strings (at most 32, each at most 1024 characters)
    end generation and are cut from the text, as are `stop_token_ids`' texts (the ids stay in
    `token_ids`); `ignore_eos` keeps generating past the end-of-sequence token (benchmarks use
    it); `max_tokens=None` generates up to the end of the context (max_model_len less the
    prompt), as in vLLM. `n` completions of each prompt (`LLM.generate`, neo-serve): with a
    seed, the j-th samples with seed + j (`samples`). vLLM's extras: `min_p` drops tokens less
    likely than min_p x the likeliest (after the temperature, before top-k/top-p);
    `min_tokens` output tokens come before EOS or a stop token can be sampled or a stop string
    can end the text; `include_stop_str_in_output` keeps the stop string (or stop token's
    text); `allowed_token_ids` restricts every step to those tokens; `truncate_prompt_tokens`
    keeps the prompt's last k tokens; `bad_words` are never generated (`blocked_tokens`).
    """

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # per generated token: its log-probability and this many top
    prompt_logprobs: int | None = None  # the same for every prompt token after the first
    # vLLM's penalties (`penalized`): each output token's logit less presence_penalty once and
    # frequency_penalty per time it came; repetition_penalty divides the positive logits of
    # tokens in the prompt or output (multiplies the negative ones); 1.0 is off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (-100..100)
    n: int = 1  # completions of each prompt
    min_p: float = 0.0
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    allowed_token_ids: tuple[int, ...] | None = None
    truncate_prompt_tokens: int | None = None
    bad_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        object.__setattr__(self, "bad_words", tuple(self.bad_words or ()))
        if self.allowed_token_ids is not None:
            object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise NeoError(
                f"max_tokens must be an integer >= 1 (or None), got {self.max_tokens!r}",
                param="max_tokens",
            )
        if not (isinstance(self.n, int) and self.n >= 1):
            raise NeoError(f"n must be an integer >= 1, got {self.n!r}", param="n")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise NeoError(
                f"temperature must be a finite number >= 0, got {self.temperature}",
                param="temperature",
            )
        if not 0 < self.top_p <= 1:
            raise NeoError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if not isinstance(self.top_k, int):
            raise NeoError(f"top_k must be an integer, got {self.top_k!r}", param="top_k")
        if self.top_k < -1:
            raise NeoError(
                f"top_k must be 0 or -1 (disable), or at least 1, got {self.top_k}", param="top_k"
            )
        if self.seed is not None and not (
            isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX
        ):
            raise NeoError(
                f"seed must be an integer in [0, 2^64 - 1], got {self.seed!r}", param="seed"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS):
                raise NeoError(
                    f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {value!r}", param=name
                )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise NeoError(
                f"stop: at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}", param="stop"
            )
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise NeoError(
                f"stop_token_ids must be token ids (integers >= 0), got {self.stop_token_ids!r}",
                param="stop_token_ids",
            )
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise NeoError(
                    f"stop: strings must be 1..{MAX_STOP_CHARS} characters", param="stop"
                )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and -PENALTY_LIMIT <= value <= PENALTY_LIMIT):
                raise NeoError(
                    f"{name} must be a number in [-{PENALTY_LIMIT:g}, {PENALTY_LIMIT:g}], "
                    f"got {value!r}",
                    param=name,
                )
        if not (isinstance(self.min_p, (int, float)) and 0 <= self.min_p <= 1):
            raise NeoError(f"min_p must be a number in [0, 1], got {self.min_p!r}", param="min_p")
        if not (isinstance(self.min_tokens, int) and self.min_tokens >= 0):
            raise NeoError(
                f"min_tokens must be an integer >= 0, got {self.min_tokens!r}", param="min_tokens"
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise NeoError(
                f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})",
                param="min_tokens",
            )
        allowed = self.allowed_token_ids
        if allowed is not None and not (
            allowed and all(isinstance(t, int) and t >= 0 for t in allowed)
        ):
            raise NeoError(
                f"allowed_token_ids must be a non-empty list of token ids, got {list(allowed)!r}",
                param="allowed_token_ids",
            )
        if not all(isinstance(w, str) and w.strip() for w in self.bad_words):
            raise NeoError(
                f"bad_words must be non-blank strings, got {list(self.bad_words)!r}",
                param="bad_words",
            )
        k = self.truncate_prompt_tokens
        if k is not None and not (isinstance(k, int) and k >= 1):
            raise NeoError(
                f"truncate_prompt_tokens must be an integer >= 1, got {k!r}",
                param="truncate_prompt_tokens",
            )
        rp = self.repetition_penalty
        if not (isinstance(rp, (int, float)) and rp > 0 and math.isfinite(rp)):
            raise NeoError(
                f"repetition_penalty must be a finite number > 0, got {rp!r}",
                param="repetition_penalty",
            )
        for token, bias in (self.logit_bias or {}).items():
            if not (isinstance(token, int) and token >= 0):
                raise NeoError(
                    f"logit_bias: keys must be token ids (integers >= 0), got {token!r}",
                    param="logit_bias",
                )
            if not (
                isinstance(bias, (int, float)) and -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT
            ):
                raise NeoError(
                    f"logit_bias: values must be in [-{LOGIT_BIAS_LIMIT:g}, "
                    f"{LOGIT_BIAS_LIMIT:g}], got {bias!r}",
                    param="logit_bias",
                )

    def samples(self) -> list[SamplingParams]:
        """The parameters of each of the `n` completions of a prompt, one request each (n = 1).
        With a seed, the j-th samples with seed + j (mod 2^64), so that the n differ and each
        reproduces; without one each request draws its own; greedy ones are alike, as in
        vLLM."""
        one = replace(self, n=1)
        if self.seed is None:
            return [one] * self.n
        return [replace(one, seed=(self.seed + j) % (SEED_MAX + 1)) for j in range(self.n)]

    @property
    def penalizes(self) -> bool:
        """Whether `penalized` changes this request's logits at every step (`min_tokens`
        changes them only in its first steps)."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
            or self.allowed_token_ids
        )

    def filters(self, vocab: int) -> bool:
        """Whether sampling drops tokens from this request's distribution (top-k, top-p or
        min-p; `_filtered`)."""
        return 0 < self.top_k < vocab or self.top_p < 1.0 or self.min_p > 0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class Logprob:
    """One token's entry in vLLM's per-position mapping (`TokenLogprob` as a Mapping); the
    text of the token is neo-serve's to give (`decoded_token` stays None offline, as vLLM's
    without detokenizing)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass(frozen=True)
class TokenLogprob(Mapping):
    """A token's log-probability under the model (raw logits, before temperature or top-k/p,
    as vLLM reports them) and the most likely alternatives at that position. Also vLLM's
    shape of a position, a mapping token id -> `Logprob` (the token first, then the
    alternatives ranked 1, 2, ...), so that vLLM scripts read it as written
    (`out.outputs[0].logprobs[i][token_id].logprob`)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), most likely first
    rank: int = 1  # among the vocabulary: how many tokens are at least as likely (vLLM's rank)

    def __getitem__(self, token: int) -> Logprob:
        if token == self.token_id:
            return Logprob(self.logprob, self.rank)
        for rank, (alternative, logprob) in enumerate(self.top, 1):
            if alternative == token:
                return Logprob(logprob, rank)
        raise KeyError(token)

    def __iter__(self) -> Iterator[int]:
        yield self.token_id
        yield from (t for t, _ in self.top if t != self.token_id)

    def __len__(self) -> int:
        return 1 + sum(t != self.token_id for t, _ in self.top)


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability from one row of logits [vocab], with `top` alternatives."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        best = tuple(zip(ids.tolist(), values.tolist()))
    rank = int((logprobs >= logprobs[token]).sum())
    return TokenLogprob(int(token), float(logprobs[token]), best, rank)


def blocked_tokens(
    params: SamplingParams,
    tokens: list[int],
    prompt_len: int,
    eos_token_id: int | None,
    bad_words: tuple[tuple[int, ...], ...] = (),
) -> list[int]:
    """The tokens a request may not take next (`tokens`: its prompt, then its output): EOS,
    unless ignored, and its stop tokens while the output is shorter than `min_tokens`; and
    the last token of each of `bad_words` (token sequences) whose other tokens end the output,
    as vLLM bans bad words (a one-token word at every step)."""
    blocked = []
    output_len = len(tokens) - prompt_len
    if output_len < params.min_tokens:
        blocked += params.stop_token_ids
        if eos_token_id is not None and not params.ignore_eos:
            blocked.append(eos_token_id)
    for word in bad_words:
        before = len(word) - 1
        if before <= output_len and (not before or tokens[-before:] == list(word[:-1])):
            blocked.append(word[-1])
    return blocked


def penalized(
    logits: torch.Tensor,
    params: list[SamplingParams],
    histories: list[tuple[list[int], int]],
    blocked: list[list[int]] | None = None,
) -> torch.Tensor:
    """The logits [B, vocab] that rows are sampled from once each row's penalties and logit
    bias apply (vLLM's order: repetition, then frequency and presence, then the bias), and its
    masks (-inf: tokens outside `allowed_token_ids`, and `blocked[row]`, `blocked_tokens`), in
    float32; `logits` itself when no row has any (its rows stay raw for the log-probabilities,
    which vLLM reports before penalties). `histories[row]` is (the request's tokens: prompt
    then output, the prompt's length)."""
    held = blocked or [[] for _ in params]
    rows = [row for row, p in enumerate(params) if p.penalizes or held[row]]
    if not rows:
        return logits
    scores = logits.to(torch.float32, copy=True)
    vocab = scores.shape[-1]
    for row in rows:
        p, (tokens, prompt_len) = params[row], histories[row]
        line = scores[row]
        if p.allowed_token_ids:
            kept = torch.tensor(p.allowed_token_ids, dtype=torch.long, device=line.device)
            mask = torch.ones(vocab, dtype=torch.bool, device=line.device)
            mask[kept] = False
            line.masked_fill_(mask, float("-inf"))
        if held[row]:
            line[torch.tensor(held[row], dtype=torch.long, device=line.device)] = float("-inf")
        if p.repetition_penalty != 1.0 and tokens:
            seen = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=line.device)
            values = line[seen]
            line[seen] = torch.where(
                values > 0, values / p.repetition_penalty, values * p.repetition_penalty
            )
        output = tokens[prompt_len:]
        if (p.frequency_penalty or p.presence_penalty) and output:
            ids = torch.tensor(output, dtype=torch.long, device=line.device)
            counts = torch.bincount(ids, minlength=vocab).to(line.dtype)
            line -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=line.device)
            bias = torch.tensor(list(p.logit_bias.values()), dtype=line.dtype, device=line.device)
            line[ids] += bias
    return scores


def sample_rows(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int | SamplingError]:
    """One token per row of logits [B, vocab] (on the device that computed them: on a GPU
    the batch is sampled there and only the chosen ids come back, not B x vocab floats), or
    the SamplingError of that row. The check,
    the greedy choices and the sampling of the other rows (`_sample_batch`) are batched ops
    (row by row they cost a decode batch of 32 about 6 ms a step on a CPU). A row is usable
    when its largest logit is finite: not all -inf (masked), no NaN, no +inf (a reduction:
    `torch.isfinite` over a [64, 49k] batch costs ~4 ms here, the max 0.1 ms)."""
    if len(generators) != len(params):
        raise ValueError(f"{len(params)} sampling params but {len(generators)} generators")
    maxes = logits.amax(dim=-1)
    usable = torch.isfinite(maxes).tolist()
    tokens: list[int | SamplingError] = [
        SamplingError(
            "the model produced unusable logits for this request (all -inf, or NaN or +inf)"
        )
        if not ok
        else -1  # set below
        for ok in usable
    ]
    greedy = [row for row, p in enumerate(params) if usable[row] and p.greedy]
    sampled = [row for row, p in enumerate(params) if usable[row] and not p.greedy]
    if greedy:
        for row, token in zip(greedy, _greedy_choices(logits, maxes, greedy)):
            tokens[row] = int(token)
    if sampled:
        rows = logits if len(sampled) == len(params) else logits[sampled]  # no copy if all
        chosen = _sample_batch(rows, [params[r] for r in sampled], [generators[r] for r in sampled])
        for row, token in zip(sampled, chosen):
            tokens[row] = token
    return tokens


def _greedy_choices(logits: torch.Tensor, maxes: torch.Tensor, rows: list[int]) -> list[int]:
    """argmax of each of `rows` (usable rows: their max, `maxes`, is finite): the compiled
    search for each row's first maximal value where it applies, else torch's argmax over those
    rows (no row copy when they are all of them)."""
    every = len(rows) == logits.shape[0]
    found = greedy_tokens(logits, maxes)
    if found is not None:
        chosen = found.tolist()
        return chosen if every else [chosen[row] for row in rows]
    return (logits if every else logits[rows]).argmax(dim=-1).tolist()


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits [vocab] (float32); SamplingError if they are unusable."""
    token = sample_rows(logits[None], [params], [generator])[0]
    if isinstance(token, SamplingError):
        raise token
    return token


def _sample_batch(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int | SamplingError]:
    """Sample one token per row of logits [n, vocab] (rows whose largest logit is finite,
    sampled with temperature): temperature, then each row's top-k / top-p filter, then the
    inverse of the row's cumulative distribution at one uniform draw (`_inverse_cdf`), taken
    from the row's generator when its request has a seed (so a seeded request reproduces
    whatever batch it runs in), else from torch's global generator; the draws are made on
    the CPU (so a seed gives the same draw on any device) and go to the logits' device. One
    draw per row: torch.multinomial, or an exponential race, draws per vocabulary entry, ~1 ms
    per row of a 49k vocabulary on a CPU, which made sampling a third of a served decode
    step."""
    # Every pass over a decode batch's logits ([64, 49k] here: 6-12 MB, cold from the LM
    # head) costs milliseconds, so bf16 logits go to float32 inside the pass that needs them
    # (the division by the temperatures, else the softmax), never in a pass of their own.
    temperatures = [p.temperature for p in params]
    scores = logits
    if any(t != 1.0 for t in temperatures):  # x / 1.0 == x: skip a pass over the batch
        divisors = torch.tensor(temperatures, dtype=torch.float32, device=logits.device)
        scores = logits / divisors[:, None]
    vocab = scores.shape[-1]
    filtered = [row for row, p in enumerate(params) if p.filters(vocab)]
    if filtered and scores.data_ptr() == logits.data_ptr():
        # the caller's logits stay as they are (logprobs read them)
        scores = logits.to(torch.float32, copy=True)
    for row in filtered:
        scores[row] = _filtered(scores[row], params[row])
    # One fused pass (exp(x - max) alone takes 2x), in float32 whatever the logits' dtype.
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
    unseeded = torch.rand(len(params), dtype=torch.float64)
    draws = torch.stack(
        [
            torch.rand((), dtype=torch.float64, generator=g) if g is not None else unseeded[row]
            for row, g in enumerate(generators)
        ]
    )
    chosen, usable = _inverse_cdf(weights, draws.to(weights.device))
    return [
        chosen[row] if usable[row] else SamplingError("sampling probabilities are not finite")
        for row in range(len(params))
    ]


INVERSE_CDF_BLOCK = 256  # vocabulary entries per block of `_inverse_cdf`'s two-level search


def _inverse_cdf(weights: torch.Tensor, draws: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Per row of non-negative weights [n, vocab] (float32) and a uniform draw in [0, 1)
    (float64): the first index whose cumulative weight exceeds draw * total, and whether the
    row is usable (total finite and positive). Two levels: each block of 256 entries summed in
    float32, the block sums' cumulative sum in float64 finds the block, a float64 cumulative
    sum inside that block the entry. A full float64 cumsum of a [64, 49k] batch costs ~7 ms a
    step on a CPU, and so does a float64 block sum (torch first copies the whole batch to
    float64); this costs ~1 ms. A float32 block sum is within ~1e-5 of the exact one, so
    only a draw that close to a block boundary can land one entry across it from where a full
    float64 cumsum would (the weights themselves carry float32 rounding). A zero-weight entry
    (filtered, or padding) is never chosen."""
    n, vocab = weights.shape
    size = INVERSE_CDF_BLOCK
    if vocab % size:
        weights = torch.nn.functional.pad(weights, (0, size - vocab % size))
    blocks = weights.view(n, -1, size)
    block_cdf = blocks.sum(dim=-1).double().cumsum(dim=-1)  # [n, blocks]
    total = block_cdf[:, -1]
    usable = (torch.isfinite(total) & (total > 0)).tolist()
    target = draws * torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    block = torch.searchsorted(block_cdf, target[:, None], right=True).view(-1)
    # A draw that rounds up to the total finds no block: take the last block that holds weight.
    last = (block_cdf < total[:, None]).sum(dim=-1)  # the total's own block at most
    block = torch.minimum(block, last)
    rows = torch.arange(n, device=weights.device)
    before = torch.where(block > 0, block_cdf[rows, (block - 1).clamp(min=0)], 0.0)
    inside = blocks[rows, block]  # [n, size]
    inner_cdf = inside.double().cumsum(dim=-1)
    entry = torch.searchsorted(inner_cdf, (target - before)[:, None], right=True)
    entry = entry.clamp_(max=size - 1).view(-1)
    chosen = (block * size + entry).tolist()
    # Rounding between the block sums and the cumulative sum inside a block can land a
    # draw at the block's end, past its last non-zero entry: take that entry instead.
    landed = inside[rows, entry].tolist()
    for row, weight in enumerate(landed):
        if weight == 0 and usable[row]:
            before_entry = torch.nonzero(inside[row, : entry[row] + 1]).view(-1)
            last = before_entry[-1] if len(before_entry) else torch.nonzero(inside[row])[0, 0]
            chosen[row] = int(block[row]) * size + int(last)
    return chosen, usable


def _filtered(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One row of temperature-scaled scores [vocab] with min-p, then top-k, then top-p,
    applied (the dropped entries at -inf), as vLLM applies them. Min-p keeps the tokens whose
    probability is at least min_p x the likeliest one's: a score at least max + log(min_p)."""
    if params.min_p > 0:
        floor = scores.max() + math.log(params.min_p)
        scores = scores.masked_fill(scores < floor, float("-inf"))
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) > params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    return scores
