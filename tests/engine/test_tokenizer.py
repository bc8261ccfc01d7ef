"""Chat prompts: a template's own special tokens once, never the tokenizer's on top."""

from __future__ import annotations

import pytest

from neo_engine.tokenizer import ByteTokenizer, HFTokenizer
from neo_sim.errors import NeoError

BOS = 0


@pytest.fixture(scope="module")
def bos_adding_tokenizer(tmp_path_factory):
    """A word-level HF tokenizer that adds BOS to every encoded text (as Llama 3's does) and
    whose chat template writes BOS itself (as Llama 3's does)."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>", "user", "assistant", "hi", "there"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
        "{% endfor %}assistant"
    )
    directory = tmp_path_factory.mktemp("bos_tokenizer")
    fast.save_pretrained(directory)
    return HFTokenizer(directory)


def test_a_chat_template_s_bos_is_not_doubled(bos_adding_tokenizer):
    assert bos_adding_tokenizer.encode("hi")[0] == BOS  # the tokenizer adds BOS to a prompt
    ids = bos_adding_tokenizer.chat_prompt([{"role": "user", "content": "hi there"}])
    assert ids == [BOS, 3, 5, 6, 4]  # <s> user hi there assistant: one BOS, the template's


def test_a_conversation_the_tokenizer_cannot_encode_is_a_neo_error():
    with pytest.raises(NeoError, match="messages"):
        ByteTokenizer(512).chat_prompt([{"role": "user", "content": "a\ud800b"}])
