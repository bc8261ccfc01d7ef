"""Incremental detokenization: each step decodes a request's newest tokens, not its whole output.

Why: decoding the whole output at every step costs O(n) per token and O(n^2) per request
(SmolLM2's tokenizer on this VM: 3 us for 4 tokens, 49 us for 256, 200 us for 1,024, per
request per step). And a whole decode that ends inside a multi-byte character (an emoji or a
CJK character split over two byte-level tokens) renders the partial character as U+FFFD,
which the next step rewrites: a streamed text is not a prefix of the next one, and a client
that only appends deltas loses the rest of the stream.

How (the method of Hugging Face's TextStreamer and vLLM's detokenizer): text is committed
only up to the last complete character. Each step decodes a window (the tokens of the last
committed piece plus the new ones) and commits what the window's text adds to the decode of
that piece alone; the piece gives the context a SentencePiece decode needs to render the new
tokens' leading space. A window whose text ends in U+FFFD waits for more tokens (or for the
end of the request). The committed text equals the tokenizer's decode of the whole output
for byte-level BPE and SentencePiece tokenizers (tests/engine/test_detokenizer.py checks
SmolLM2's and the byte tokenizer against whole decodes).

Stop strings are searched only where a new piece can complete one (in a piece still waiting
for a character too: a stop that ends before it stops the request at once), and the text
ends just before the earliest one (or just after it, with vLLM's include_stop_str_in_output).
While a request runs, `streamable_text` holds back the last `len(longest stop) - 1`
characters, which may still turn into a stop string and be cut, so a streamed text is always
a prefix of the final one (nothing is held back when stop strings stay in the text: nothing
before a stop's end is ever cut). As in vLLM, with `min_tokens` a stop string must end in the
text of a later token: the first `min_tokens` tokens are not searched.
"""

from __future__ import annotations

from collections.abc import Sequence

from neo_engine.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what a decode renders a partial UTF-8 sequence as


class IncrementalDetokenizer:
    """The text of one request's generated tokens, built as they come."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: Sequence[str] = (),
        min_tokens: int = 0,
        include_stop: bool = False,
    ):
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._min_tokens = min_tokens
        self._include_stop = include_stop
        longest = max((len(s) for s in self._stop), default=1)
        self._held_back = 0 if include_stop else longest - 1
        self._ids: list[int] = []
        self._window_start = 0  # the decode window: the last committed piece's tokens on
        self._committed = 0  # tokens before this index are in `text`
        self._text = ""
        self.stopped = False  # `text` reached a stop string and was cut at it

    @property
    def text(self) -> str:
        """The committed text (cut at a stop string once one appeared)."""
        return self._text

    @property
    def streamable_text(self) -> str:
        """The committed text less what a stop string may still claim: safe to stream."""
        if self.stopped or not self._held_back:
            return self._text
        return self._text[: max(0, len(self._text) - self._held_back)]

    def add(self, token: int) -> bool:
        """Take the next generated token; True once the text holds a stop string."""
        self._ids.append(token)
        if not self.stopped:
            self._advance(final=False)
        return self.stopped

    def finish(self) -> str:
        """The final text: commits what waited for a complete character (it never will)."""
        if not self.stopped:
            self._advance(final=True)
        return self._text

    def _advance(self, final: bool) -> None:
        if self._committed == len(self._ids):
            return
        decode = self._tokenizer.decode
        before = decode(self._ids[self._window_start : self._committed])
        window = decode(self._ids[self._window_start :])
        piece = window[len(before) :]
        if not piece:
            return  # nothing visible yet (e.g. a skipped special token)
        complete = final or not window.endswith(REPLACEMENT)
        if complete:  # otherwise a character still in parts: wait, but look for a stop
            self._window_start, self._committed = self._committed, len(self._ids)
        self._append(piece, commit=complete)

    def _append(self, piece: str, commit: bool) -> None:
        """Cut at the earliest stop string that `piece` completes (after it, when stops stay in
        the text); else keep `piece` if `commit`. A stop is searched for only where it would
        end in `piece` (its length less one character back from it); none is searched for
        while the output holds at most `min_tokens` tokens."""
        text = self._text + piece
        if self._stop and len(self._ids) > self._min_tokens:
            start = len(self._text) + 1
            found = [(text.find(s, max(0, start - len(s))), s) for s in self._stop]
            found = [(i, s) for i, s in found if i >= 0]
            if found:
                at, stop = min(found, key=lambda hit: hit[0])
                self._text = text[: at + len(stop)] if self._include_stop else text[:at]
                self.stopped = True
                return
        if commit:
            self._text = text
