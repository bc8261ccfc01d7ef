"""Incremental detokenization: the same text as whole decodes, streamed texts that only grow."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from neo_engine import SamplingParams
from neo_engine.detokenizer import REPLACEMENT, IncrementalDetokenizer
from neo_engine.tokenizer import ByteTokenizer, HFTokenizer

BYTES = ByteTokenizer(512)
# ASCII, lead and continuation bytes of multi-byte characters, a byte that is never valid,
# BOS/EOS (decode to nothing) and ids past the byte range (decode as "<id>")
TOKENS = st.lists(
    st.sampled_from(
        [*b"ab \n", 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x9A, 0x80, 0xFF, 256, 257, 300]
    ),
    max_size=40,
)


def whole_decode_reference(
    tokenizer, ids: list[int], stop: tuple[str, ...]
) -> tuple[str, int | None]:
    """What decoding the whole output at every step gives: the final text (cut just before the
    earliest stop string) and the step (1-based) whose text first holds a stop, if any."""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k])
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        if cuts:
            return text[: min(cuts)], k
    return tokenizer.decode(ids), None


def feed(
    tokenizer, ids: list[int], stop: tuple[str, ...] = (), **options
) -> tuple[str, list[str], int | None]:
    detok = IncrementalDetokenizer(tokenizer, stop, **options)
    streamed, stopped_at = [], None
    for k, token in enumerate(ids, 1):
        if detok.add(token):
            stopped_at = k
            break
        streamed.append(detok.streamable_text)
        assert not detok.text.endswith(REPLACEMENT)  # a character in parts waits
    return detok.finish(), streamed, stopped_at


@settings(max_examples=300, deadline=None)
@given(TOKENS)
def test_byte_tokens_give_the_whole_decode_and_texts_that_only_grow(ids):
    final, streamed, _ = feed(BYTES, ids)
    assert final == BYTES.decode(ids)
    for earlier, later in zip(streamed, [*streamed[1:], final]):
        assert later.startswith(earlier)


@settings(max_examples=300, deadline=None)
@given(TOKENS, st.lists(st.sampled_from(["a", "ab", "b a", "\n\n", "é", "€a"]), max_size=3))
def test_stop_strings_end_where_whole_decodes_end(ids, stop):
    stop = tuple(stop)
    final, streamed, stopped_at = feed(BYTES, ids, stop)
    want_text, want_step = whole_decode_reference(BYTES, ids, stop)
    assert (final, stopped_at) == (want_text, want_step)
    for text in streamed:  # nothing streamed that the stop later cuts away
        assert final.startswith(text)


def test_vllms_stop_options_keep_the_stop_string_or_look_for_it_after_min_tokens():
    ids = list(b"say ab, then ab again")
    assert feed(BYTES, ids, ("ab",))[0] == "say "
    kept, streamed, at = feed(BYTES, ids, ("ab",), include_stop=True)
    assert (kept, at) == ("say ab", 6)
    assert streamed[-1] == "say a"  # nothing held back: the stop's start stays in the text
    # min_tokens 6: the first "ab" ends in token 6, not after it; the second one stops
    later, _, at = feed(BYTES, ids, ("ab",), min_tokens=6)
    assert (later, at) == ("say ab, then ", 15)
    # a stop that ends in a later token is found though it starts among the first ones
    assert feed(BYTES, ids, ("ab",), min_tokens=5)[0] == "say "
    text, _, at = feed(BYTES, ids, ("b, t",), min_tokens=7)
    assert (text, at) == ("say a", 9)


def test_multibyte_characters_split_over_tokens_never_stream_as_replacements(smollm2_dir):
    tokenizer = HFTokenizer(smollm2_dir)
    text = "Café 🚀 日本語のテキスト, naïve résumé. Ünïcödé ✓ and ASCII."
    ids = tokenizer.encode(text)
    # the case this is for: some whole decode of a prefix ends inside a character
    assert any(tokenizer.decode(ids[:k]).endswith(REPLACEMENT) for k in range(1, len(ids)))
    final, streamed, _ = feed(tokenizer, ids)
    assert final == tokenizer.decode(ids) == text
    for earlier, later in zip(streamed, [*streamed[1:], final]):
        assert later.startswith(earlier) and REPLACEMENT not in earlier


class HalfCharacters(ByteTokenizer):
    """Every token is one byte of "é" (0xC3 0xA9) or "a": random tokens split characters."""

    def decode(self, token_ids: list[int]) -> str:
        return bytes((0xC3, 0xA9, 0x61)[t % 3] for t in token_ids).decode(errors="replace")


def test_engine_streams_prefixes_and_ends_with_the_whole_decode(tiny, monkeypatch):
    engine = tiny.engine
    monkeypatch.setattr(engine, "tokenizer", HalfCharacters(engine.tokenizer.vocab_size))
    params = SamplingParams(max_tokens=48, temperature=1.0, seed=7, ignore_eos=True)
    rids = [engine.add_request(p, params) for p in ("one", "two two", "three three three")]
    seen: dict[int, str] = {rid: "" for rid in rids}
    final = {}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.text.startswith(seen[out.request_id])
            seen[out.request_id] = out.text
            if out.finished:
                final[out.request_id] = out
    for rid in rids:
        assert final[rid].text == engine.tokenizer.decode(final[rid].token_ids)
        assert "é" in final[rid].text  # characters in two tokens were there to stream


def test_engine_stop_string_cuts_the_text_and_ends_the_request(tiny):
    greedy = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    full = tiny.generate("a prompt to stop in", greedy)[0]
    visible = [t for t in full.text if t != REPLACEMENT and not t.isspace()]
    assert len(visible) > 4, "the tiny model's text is too short to pick a stop from"
    stop = visible[len(visible) // 2]
    cut = full.text.index(stop)
    out = tiny.generate(
        "a prompt to stop in",
        SamplingParams(max_tokens=32, temperature=0, ignore_eos=True, stop=(stop,)),
    )[0]
    assert out.finish_reason == "stop" and out.text == full.text[:cut]
    assert out.token_ids == full.token_ids[: len(out.token_ids)]
    assert len(out.token_ids) < len(full.token_ids)
