"""OpenAI request bodies (pydantic), as neo-serve accepts them.

Unknown fields are ignored, as OpenAI clients and benchmark tools send extras. Known fields
that neo-serve does not implement are refused with a 400 naming the field when a client asks
for them (a non-default value), never silently ignored (`UNSUPPORTED`). Field limits
(max_tokens > 0, 0 <= temperature, 0 < top_p <= 1, top_k >= -1, n >= 1, a 64-bit seed, stop
strings and token ids) give 400s naming the field. Without max_tokens a completion gets 16
tokens and a chat the rest of the context, as in vLLM.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from neo_engine.sampling import (
    MAX_LOGPROBS,
    MAX_STOP_STRINGS,
    PENALTY_LIMIT,
    SEED_MAX,
    SamplingParams,
)
from neo_engine.tokenizer import ChatOptions, user_input
from neo_sim.errors import NeoError

MAX_PROMPTS = 256  # prompts in one completions request, and completions (prompts x n) in one

# Fields clients send that neo-serve does not implement, with the value that means "not asked".
UNSUPPORTED: dict[str, Any] = {
    "best_of": None,
    "response_format": None,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "suffix": None,
    "guided_json": None,
    "guided_regex": None,
    "guided_choice": None,
    # vLLM's extra sampling fields: each changes what is generated, so a client that asks for
    # one is told it is not done rather than served as if it were.
    "use_beam_search": False,
    "guided_grammar": None,
    "structural_tag": None,
    "logits_processors": None,
    "chat_template": None,
    # vLLM's extras that change a response's text or shape, refused unless left as they are
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "priority": 0,
    "structured_outputs": None,
    "documents": None,
}


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    # max_tokens when the client sends none: OpenAI's and vLLM's 16 for completions; chat
    # overrides it with None, the rest of the context (vLLM's rule for chat).
    default_max_tokens: ClassVar[int | None] = 16
    model: str | None = None  # unset: the served model, as vLLM takes it
    max_tokens: int | None = Field(default=None, ge=0)  # 0: echo the prompt only
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(default=-1, ge=-1)  # 0 or -1: disabled, as vLLM
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    stop: str | list[str] | None = Field(default=None)
    stop_token_ids: list[int] | None = None  # vLLM's extra: these tokens end generation too
    presence_penalty: float = Field(
        default=0.0, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT, allow_inf_nan=False
    )
    frequency_penalty: float = Field(
        default=0.0, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT, allow_inf_nan=False
    )
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)  # vLLM's extra
    logit_bias: dict[str, float] | None = None  # token id (a string in JSON) -> bias
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=MAX_PROMPTS)  # completions of each prompt
    # vLLM's extras (SamplingParams says what each does)
    min_p: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)
    min_tokens: int = Field(default=0, ge=0)
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = None
    truncate_prompt_tokens: int | None = Field(default=None, ge=1)
    return_tokens_as_token_ids: bool = False  # log-probabilities name tokens "token_id:<id>"
    # vLLM's: each prompt token's log-probability and this many alternatives, in the response
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    bad_words: list[str] | None = None

    def refused_field(self) -> str | None:
        """The first field the client asked for that neo-serve does not implement."""
        extra = self.model_extra or {}
        for name, default in UNSUPPORTED.items():
            value = extra.get(name, default)
            if value is None or value == default:
                continue
            if not default and value in (False, 0, 0.0, "", [], {}):  # an empty ask: none
                continue
            if name == "response_format" and _is_text_format(value):
                continue
            if name == "best_of" and value in (1, self.n):  # the best n of n: the n
                continue
            return name
        return None

    def token_logprobs(self) -> int | None:
        """Alternatives per generated token the client asked for (None: no log-probabilities)."""
        return None

    def prompt_alternatives(self) -> int | None:
        """Alternatives per prompt token the engine must score (vLLM's prompt_logprobs, or
        completions' echo with log-probabilities: the larger), or None."""
        return self.prompt_logprobs

    def echoes_prompt(self) -> bool:
        """Whether the response starts with the prompt (completions' `echo`)."""
        return False

    def prompt_only(self) -> bool:
        """max_tokens 0: score or echo the prompt, generate nothing (runs one token, dropped)."""
        return self.max_tokens == 0

    def sampling(self) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stop) > MAX_STOP_STRINGS:
            raise NeoError(
                f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param="stop"
            )
        if self.prompt_only() and not self.echoes_prompt():
            raise NeoError(
                "max_tokens: must be >= 1 (0 only with echo, on /v1/completions)",
                param="max_tokens",
            )
        max_tokens = self.max_tokens or self.max_completion_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        return SamplingParams(
            max_tokens=1 if self.prompt_only() else max_tokens,
            logprobs=self.token_logprobs(),
            prompt_logprobs=self.prompt_alternatives(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=self._logit_bias(),
            n=self.n,
            min_p=self.min_p,
            min_tokens=self.min_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            allowed_token_ids=self.allowed_token_ids,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            bad_words=tuple(self.bad_words or ()),
        )

    def _logit_bias(self) -> dict[int, float] | None:
        """`logit_bias` with its keys as token ids; NeoError naming it for a key that is not."""
        if not self.logit_bias:
            return None
        try:
            return {int(token): bias for token, bias in self.logit_bias.items()}
        except ValueError:
            keys = list(self.logit_bias)
            raise NeoError(
                f"logit_bias: keys must be token ids, got {keys}", param="logit_bias"
            ) from None

    def samples(self) -> list[SamplingParams]:
        """The SamplingParams of each of the `n` completions of a prompt
        (`SamplingParams.samples`: with a seed, the j-th samples with seed + j)."""
        return self.sampling().samples()

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


def _is_text_format(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "text"


class CompletionRequest(_Common):
    """The legacy completions body: `logprobs` is a count of alternatives (0..20), `echo`
    returns the prompt (and its log-probabilities) before the completion."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    add_special_tokens: bool = True  # vLLM's extra: false encodes a text prompt without BOS

    def prompt_ids(self, prompt: str | list[int], tokenizer) -> str | list[int]:
        """One prompt as the engine takes it: token ids as they are, a text as it is (the
        engine encodes it, with the tokenizer's special tokens) or, with add_special_tokens
        false, its ids without them; NeoError naming the prompt if it cannot be encoded."""
        if self.add_special_tokens or not isinstance(prompt, str):
            return prompt
        return user_input(
            lambda: tokenizer.encode(prompt, add_special_tokens=False), "prompt", param="prompt"
        )

    def token_logprobs(self) -> int | None:
        return self.logprobs

    def prompt_alternatives(self) -> int | None:
        echoed = self.logprobs if self.echo else None
        return max((k for k in (echoed, self.prompt_logprobs) if k is not None), default=None)

    def echoes_prompt(self) -> bool:
        return self.echo


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def text(self, where: str) -> str:
        """The message's text; NeoError naming the field for parts neo-serve cannot read."""
        if self.content is None:
            if self.role != "assistant":
                raise NeoError(
                    f"{where}.content: required for role {self.role!r}", param="messages"
                )
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for i, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise NeoError(
                    f"{where}.content[{i}].type: only text parts are supported, got {part.type!r}",
                    param="messages",
                )
            pieces.append(part.text)
        return "".join(pieces)


class ChatRequest(_Common):
    """The chat body: `logprobs` is a switch, `top_logprobs` the count of alternatives;
    without max_tokens it generates up to the end of the context, as vLLM's chat does."""

    default_max_tokens: ClassVar[int | None] = None

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    # vLLM's extras: how the conversation is rendered (`ChatOptions`)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = False  # the template writes its own: true is refused
    echo: bool = False  # vLLM's: the reply starts with the last message when it is the reply's

    def echoed(self) -> str:
        """What the reply's content starts with under vLLM's chat echo: the last message's
        text when that message has the reply's role (the assistant's, or with no assistant
        turn opened, the last message's own: the message the model goes on with), else
        nothing."""
        if not self.echo:
            return ""
        last = self.messages[-1]
        role = "assistant" if self.add_generation_prompt else last.role
        return last.text(f"messages[{len(self.messages) - 1}]") if last.role == role else ""

    def chat_options(self) -> ChatOptions:
        if self.add_special_tokens:
            raise NeoError(
                "add_special_tokens: not supported on chat (the chat template writes its own)",
                param="add_special_tokens",
            )
        return _chat_options(self)

    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[dict[str, str]]:
        return _chat_messages(self.messages)


def _chat_options(req: ChatRequest | TokenizeRequest) -> ChatOptions:
    """The rendering a request asks for; NeoError naming the field for a contradiction."""
    return ChatOptions(
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message,
        template_kwargs=req.chat_template_kwargs or {},
    )


def _chat_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The messages as the chat template takes them; NeoError naming a part it cannot read."""
    return [{"role": m.role, "content": m.text(f"messages[{i}]")} for i, m in enumerate(messages)]


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize body: a prompt (with the tokenizer's special tokens unless
    add_special_tokens is false), or chat messages rendered as a chat request renders them
    (with the assistant's turn opened unless add_generation_prompt is false)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    add_special_tokens: bool = True
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    def token_ids(self, tokenizer) -> list[int]:
        """The ids the engine would take for this prompt or these messages; NeoError naming
        the field when the body gives neither or both, or asks for a switch of the other."""
        if (self.prompt is None) == (self.messages is None):
            raise NeoError("give either prompt or messages", param="prompt")
        given = self.model_fields_set
        if self.prompt is not None:
            for name in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs"):
                if name in given:
                    raise NeoError(f"{name}: only with messages", param=name)
            return user_input(
                lambda: tokenizer.encode(self.prompt, add_special_tokens=self.add_special_tokens),
                "prompt",
                param="prompt",
            )
        if "add_special_tokens" in given:
            raise NeoError(
                "add_special_tokens: only with prompt (a chat template writes its own)",
                param="add_special_tokens",
            )
        return tokenizer.chat_prompt(_chat_messages(self.messages), _chat_options(self))


class DetokenizeRequest(BaseModel):
    """vLLM's /detokenize body: token ids to decode."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]
