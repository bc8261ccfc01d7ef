"""Chat prompts: a template's own special tokens once, never the tokenizer's on top."""

from __future__ import annotations

import pytest

from neo_engine.tokenizer import ByteTokenizer, ChatOptions, HFTokenizer
from neo_sim.errors import NeoError

BOS = 0


@pytest.fixture(scope="module")
def bos_adding_tokenizer(tmp_path_factory):
    """A word-level HF tokenizer that adds BOS to every encoded text (as Llama 3's does) and
    whose chat template writes BOS itself (as Llama 3's does), opens the assistant's turn
    when asked and takes a variable of its own (`loud`)."""
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
        "{{ bos_token }}{% if loud %}there {% endif %}{% for m in messages %}{{ m['role'] }} "
        "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant{% endif %}"
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


def test_chat_options_render_as_vllms_chat_fields(bos_adding_tokenizer):
    hello = [{"role": "user", "content": "hi there"}]
    closed = ChatOptions(add_generation_prompt=False)
    assert bos_adding_tokenizer.chat_prompt(hello, closed) == [BOS, 3, 5, 6]
    going_on = ChatOptions(add_generation_prompt=False, continue_final_message=True)
    assert bos_adding_tokenizer.chat_prompt(hello, going_on) == [BOS, 3, 5, 6]
    loud = ChatOptions(template_kwargs={"loud": True})
    assert bos_adding_tokenizer.chat_prompt(hello, loud) == [BOS, 6, 3, 5, 6, 4]
    with pytest.raises(NeoError, match="continue_final_message"):
        ChatOptions(continue_final_message=True)  # and add_generation_prompt: never both
    plain = ByteTokenizer(512).chat_prompt(hello, closed)
    assert bytes(plain[1:]).decode() == "user: hi there"


def test_a_continued_final_message_is_left_open(smollm2_dir):
    """SmolLM2's template ends every message with <|im_end|>: continued, the assistant's
    last message ends the prompt as written, for the model to go on with."""
    tokenizer = HFTokenizer(smollm2_dir)
    convo = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "The colour is"},
    ]
    going_on = ChatOptions(add_generation_prompt=False, continue_final_message=True)
    ids = tokenizer.chat_prompt(convo, going_on)
    closed = tokenizer.chat_prompt(convo, ChatOptions(add_generation_prompt=False))
    assert tokenizer.decode(ids).endswith("The colour is")
    assert closed[: len(ids)] == ids and len(closed) > len(ids)
