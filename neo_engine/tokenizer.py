"""Tokenizers: a real HF tokenizer from a checkpoint, or a byte tokenizer for dummy models.

Dummy (random-weight) models have no tokenizer of their own; `ByteTokenizer` maps text to its
UTF-8 bytes so that prompts and outputs still round-trip as strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neo_sim.errors import NeoError


@dataclass(frozen=True)
class ChatOptions:
    """How a conversation becomes a prompt (vLLM's chat request fields): with the assistant's
    turn opened after it (`add_generation_prompt`), or its final message left open for the
    model to go on with (`continue_final_message`), never both; `template_kwargs` are extra
    variables for the chat template (e.g. a model's thinking switch)."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.add_generation_prompt and self.continue_final_message:
            raise NeoError(
                "continue_final_message: cannot be set together with add_generation_prompt "
                "(set add_generation_prompt to false)",
                param="continue_final_message",
            )


DEFAULT_CHAT = ChatOptions()


class Tokenizer(Protocol):
    eos_token_id: int | None
    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    @property
    def backend(self) -> Any: ...

    def chat_prompt(
        self, messages: list[dict], options: ChatOptions = DEFAULT_CHAT
    ) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes are tokens 0-255; 256 is BOS, 257 is EOS; higher ids decode as `<id>`."""

    bos_token_id = 256
    eos_token_id = 257

    def __init__(self, vocab_size: int):
        if vocab_size < 258:
            raise NeoError(f"byte tokenizer needs a vocabulary of >= 258, model has {vocab_size}")
        self.vocab_size = vocab_size

    @property
    def backend(self) -> ByteTokenizer:
        """The tokenizer underneath (`LLM.get_tokenizer`): this one."""
        return self

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        body = list(text.encode("utf-8"))
        return [self.bos_token_id, *body] if add_special_tokens else body

    def decode(self, token_ids: list[int]) -> str:
        """Bytes decode as UTF-8; ids past the byte range (a random model emits plenty) show
        as `<id>` so that their text is visible; BOS/EOS show as nothing."""
        parts, run = [], bytearray()
        for t in token_ids:
            if t < 256:
                run.append(t)
                continue
            if run:
                parts.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            if t > self.eos_token_id:
                parts.append(f"<{t}>")
        if run:
            parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def chat_prompt(self, messages: list[dict], options: ChatOptions = DEFAULT_CHAT) -> list[int]:
        return user_input(lambda: self.encode(plain_chat_prompt(messages, options)))


class HFTokenizer:
    """A tokenizer loaded offline from a checkpoint directory (transformers' AutoTokenizer)."""

    def __init__(self, directory: str | Path):
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise NeoError(f"{directory}: cannot load a tokenizer ({exc})") from None
        self.eos_token_id = self._tok.eos_token_id
        self.vocab_size = len(self._tok)

    @property
    def backend(self):
        """The transformers tokenizer underneath (`LLM.get_tokenizer`)."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int]) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=True)

    def chat_prompt(self, messages: list[dict], options: ChatOptions = DEFAULT_CHAT) -> list[int]:
        """The conversation's token ids, rendered as `options` say (by default ready for the
        assistant's turn). A chat template writes its own special tokens (Llama 3's starts
        with <|begin_of_text|>), so its text is encoded without the tokenizer's (which would
        add a second BOS), as vLLM does; the plain fallback is encoded as any prompt."""
        if not getattr(self._tok, "chat_template", None):
            return user_input(lambda: self.encode(plain_chat_prompt(messages, options)))

        def render() -> list[int]:
            text = self._tok.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=options.add_generation_prompt,
                continue_final_message=options.continue_final_message,
                **options.template_kwargs,
            )
            return list(self._tok.encode(text, add_special_tokens=False))

        return user_input(render)


def user_input(
    tokenize: Callable[[], list[int]], what: str = "messages", param: str | None = "messages"
) -> list[int]:
    """`tokenize()`, with what a user's text makes it raise (a lone surrogate is valid JSON
    but not UTF-8; a template refuses roles out of order) as a NeoError naming `what` (and
    the request field `param`): a 400, not a 500."""
    try:
        return tokenize()
    except Exception as exc:
        raise NeoError(f"{what} cannot be tokenized: {exc}", param=param) from None


def plain_chat_prompt(messages: list[dict], options: ChatOptions = DEFAULT_CHAT) -> str:
    """The fallback chat format when a tokenizer has no template: a line per message, the
    final one left open when continued (the format has no end-of-turn mark to leave off);
    there is no template to take `template_kwargs`."""
    lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
    return "\n".join(lines) + ("\nassistant:" if options.add_generation_prompt else "")


def load_tokenizer(directory: Path | None, vocab_size: int) -> Tokenizer:
    if directory is not None and any(
        (directory / name).exists() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        return HFTokenizer(directory)
    return ByteTokenizer(vocab_size)
