"""The offline API and the engine loop: sampling, stops, aborts, counters, bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from neo_engine import LLM, EngineConfig, LLMEngine, SamplingParams
from neo_sim.errors import NeoError

GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def test_strings_in_strings_out(tiny):
    outs = tiny.generate(["Hello, world", "Second prompt"], GREEDY)
    assert [o.request_id for o in outs] == sorted(o.request_id for o in outs)
    for o in outs:
        assert isinstance(o.text, str) and len(o.token_ids) == 12
        assert o.finished and o.finish_reason == "length"
        assert o.prompt_token_ids[0] == tiny.tokenizer.bos_token_id


def test_stop_token_ends_generation(tiny):
    full = tiny.generate("stop here", GREEDY)
    stop_at = full.__getitem__(0).token_ids[3]
    params = SamplingParams(
        max_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=(stop_at,)
    )
    out = tiny.generate("stop here", params)[0]
    first = full[0].token_ids.index(stop_at)
    assert out.finish_reason == "stop" and out.token_ids == full[0].token_ids[: first + 1]


def test_seeded_sampling_is_reproducible_and_top_k_one_is_greedy(tiny):
    sampled = SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    a = tiny.generate("abc", sampled)[0].token_ids
    b = tiny.generate("abc", sampled)[0].token_ids
    assert a == b
    top1 = SamplingParams(max_tokens=10, temperature=0.8, top_k=1, seed=3, ignore_eos=True)
    assert tiny.generate("abc", top1)[0].token_ids == tiny.generate("abc", GREEDY)[0].token_ids[:10]


def pressured_engine() -> LLMEngine:
    """NEO with a 4-block GPU pool: most requests must live on the CPU."""
    return LLMEngine(
        EngineConfig.of(
            "dummy:tiny",
            policy="neo",
            gpu_kv_blocks=4,
            cpu_kv_blocks=400,
            block_size=8,
            max_model_len=256,
        )
    )


def test_offload_happens_under_kv_pressure_and_counters_show_it():
    engine = pressured_engine()
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        engine.add_request(torch.randint(0, 256, (40,), generator=gen).tolist(), GREEDY)
    seen_cpu = 0
    finished = []
    while engine.has_unfinished():
        outs = engine.step()
        seen_cpu = max(seen_cpu, engine.stats().running_cpu)
        finished += [o for o in outs if o.finished]
    stats = engine.stats()
    assert seen_cpu > 0 and sum(o.cpu_steps for o in finished) > 0
    assert stats.gpu_kv_blocks_used == 0 and stats.cpu_kv_blocks_used == 0
    assert stats.generated_tokens == 6 * 12
    engine.close()


def test_a_request_counts_from_its_arrival_not_from_when_it_was_added():
    """A request that arrived during the step in flight is added after it; the scheduler and
    its latencies count from the arrival given (the TTFT bound is the client's), and an
    arrival later than the engine's clock is taken as now."""
    engine = LLMEngine(
        EngineConfig.of("dummy:tiny", clock="predicted", block_size=8, max_model_len=256)
    )
    engine.advance_clock_to(5.0)
    params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    early = engine.add_request([1, 2, 3], params, arrival_s=4.5)
    late = engine.add_request([1, 2, 3], params, arrival_s=9.0)
    plain = engine.add_request([1, 2, 3], params)
    arrivals = {r.request_id: r.arrival_s for r in engine.policy.waiting}
    assert arrivals == {early: 4.5, late: 5.0, plain: 5.0}
    outs = {}
    while engine.has_unfinished():
        outs.update((o.request_id, o) for o in engine.step() if o.finished)
    assert outs[early].arrival_s == 4.5 and outs[early].first_token_s > 5.0
    engine.close()


def test_abort_frees_everything():
    engine = pressured_engine()
    ids = [
        engine.add_request(
            list(range(1, 60)), SamplingParams(max_tokens=50, temperature=0, ignore_eos=True)
        )
        for _ in range(4)
    ]
    for _ in range(3):
        engine.step()
    used = engine.stats()
    assert used.gpu_kv_blocks_used + used.cpu_kv_blocks_used > 0
    for rid in ids:
        assert engine.abort(rid)
    after = engine.stats()
    assert after.gpu_kv_blocks_used == after.cpu_kv_blocks_used == 0
    assert not engine.has_unfinished() and not engine.abort(ids[0])
    engine.close()


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: SamplingParams(max_tokens=0), "max_tokens"),
        (lambda: SamplingParams(top_p=0.0), "top_p"),
        (lambda: SamplingParams(temperature=-1), "temperature"),
        (lambda: SamplingParams(top_k=-5), "top_k"),
        (lambda: SamplingParams(n=0), "n must"),
        (lambda: SamplingParams(n=1.5), "n must"),
    ],
)
def test_bad_sampling_params(make, needle):
    with pytest.raises(NeoError, match=needle):
        make()


def test_bad_prompts(tiny):
    with pytest.raises(NeoError, match="empty"):
        tiny.engine.add_request([], GREEDY)
    with pytest.raises(NeoError, match="vocabulary"):
        tiny.engine.add_request([10**6], GREEDY)
    with pytest.raises(NeoError, match="context length"):
        tiny.engine.add_request(list(range(250)), GREEDY)


def test_max_tokens_none_generates_to_the_end_of_the_context(tiny):
    """vLLM's meaning of max_tokens=None: max_model_len less the prompt (256 here)."""
    params = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    out = tiny.generate([list(range(1, 201))], params)[0]
    assert len(out.token_ids) == 56 and out.finish_reason == "length"
    with pytest.raises(NeoError, match="no room"):
        tiny.engine.add_request(list(range(256)), params)


def test_stop_token_ids_end_generation(tiny):
    free = tiny.generate("abc", GREEDY)[0].token_ids
    stop = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, stop_token_ids=[free[4]])
    out = tiny.generate("abc", stop)[0]
    first = free.index(free[4])  # the first time that token comes
    assert out.token_ids == free[: first + 1] and out.finish_reason == "stop"
    assert out.text == tiny.tokenizer.decode(free[:first])  # the stop token's text left out
    with pytest.raises(NeoError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[-1])


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(NeoError, match="cuda"):
        LLMEngine(EngineConfig.of("dummy:tiny", device="cuda"))


def test_real_smollm2_matches_transformers(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = hf.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    llm = LLM(
        str(smollm2_dir),
        dtype="float32",  # transformers' precision: equal tokens
        policy="neo",
        gpu_kv_blocks=3,
        cpu_kv_blocks=64,
        max_model_len=512,
    )
    out = llm.generate(prompt, SamplingParams(max_tokens=16, temperature=0))[0]
    assert out.token_ids == expected[: len(out.token_ids)]
    assert "Paris" in out.text
    # vLLM scripts render prompts with llm.get_tokenizer(): transformers' own
    rendered = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == prompt
    llm.engine.close()


def test_a_refused_prompt_leaves_the_offline_llm_healthy():
    llm = LLM("dummy:tiny", max_model_len=256)
    with pytest.raises(NeoError, match="seed"):
        llm.generate(["ok", "bad"], [GREEDY, SamplingParams(max_tokens=4, seed=2**64)])
    with pytest.raises(NeoError, match="tokenized"):
        llm.generate(["ok", "a\ud800b"], GREEDY)
    assert not llm.engine.has_unfinished()
    out = llm.generate(["fine"], SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepacking_can_be_turned_off_and_says_which_gemms_run(dtype):
    """prepack_weights=False keeps one copy of each weight (half the memory) and sends GEMMs
    past the skinny kernel to torch; both engines name their path in build_info."""
    from neo_engine.cpu_kernel import load_extension
    from neo_engine.weights import PrepackedWeight, can_prepack

    if not can_prepack(getattr(torch, dtype), torch.device("cpu")):
        pytest.skip(f"torch has no oneDNN {dtype} prepacking here")
    packed = LLMEngine(EngineConfig.of("dummy:tiny", dtype=dtype, max_model_len=256))
    plain = LLMEngine(
        EngineConfig.of("dummy:tiny", dtype=dtype, max_model_len=256, prepack_weights=False)
    )
    assert isinstance(packed.weights.layers[0].qkv, PrepackedWeight)
    assert isinstance(plain.weights.layers[0].qkv, torch.Tensor)
    assert "oneDNN with prepacked weights" in packed.build_info["decode_gemm"]
    assert "torch beyond" in plain.build_info["decode_gemm"]
    # decode-only iterations run their layers in one compiled call only over prepacked weights
    if load_extension() is not None:
        assert packed.build_info["decode_layers"].startswith("fused")
    assert plain.build_info["decode_layers"] == "stage by stage"
    # a profile measured with one prices the other wrong: their engine builds differ
    assert plain.build_info["engine_build"].endswith("prepacked GEMM weights: none")
    assert packed.build_info["engine_build"] != plain.build_info["engine_build"]
    for engine in (packed, plain):
        engine.close()


def test_no_prepacked_copy_where_it_would_not_fit_in_memory(monkeypatch, caplog):
    """A model whose blocked weight copy would take more than half the available memory keeps
    one copy (and says so) instead of running out of memory at start."""
    from neo_engine import engine as engine_module
    from neo_engine.weights import can_prepack

    if not can_prepack(torch.float32, torch.device("cpu")):
        pytest.skip("torch without oneDNN's prepacking ops")
    monkeypatch.setattr(engine_module, "available_memory_bytes", lambda: 1e3)
    with caplog.at_level("WARNING", logger="neo_engine.engine"):
        engine = LLMEngine(EngineConfig.of("dummy:tiny", dtype="float32", max_model_len=256))
    assert isinstance(engine.weights.layers[0].qkv, torch.Tensor)
    assert "torch beyond" in engine.build_info["decode_gemm"]
    assert "not prepacking the GEMM weights" in caplog.text
    assert engine.build_info["engine_build"].endswith("prepacked GEMM weights: none")
    engine.close()


def test_the_start_up_log_gives_the_kv_pools_and_how_prompts_are_admitted(caplog):
    from neo_engine.engine import pools_line
    from neo_sim.scheduler import SchedulerConfig

    with caplog.at_level("INFO", logger="neo_engine.engine"):
        LLM("dummy:tiny", max_model_len=256, gpu_kv_blocks=16, cpu_kv_blocks=300)
    assert "KV pools: 16 device blocks (256 tokens), 300 host blocks (4800 tokens)" in caplog.text
    chunked = SchedulerConfig(num_gpu_blocks=8, num_cpu_blocks=8, chunked_prefill_tokens=512)
    assert pools_line(chunked).endswith("prompts in chunks of at most 512 tokens per iteration")
    refused = SchedulerConfig(num_gpu_blocks=8, num_cpu_blocks=8, kv_chunk_tokens=1024)
    assert "kv_chunk_tokens=1024 not adopted" in pools_line(refused)


def test_chat_renders_each_conversation_as_neo_serve_does(tiny):
    hello = [{"role": "user", "content": "Hi"}]
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    one, again = tiny.chat([hello, hello + [{"role": "user", "content": "Again"}]], params)
    direct = tiny.generate([tiny.tokenizer.chat_prompt(hello)], params)[0]
    assert one.token_ids == direct.token_ids and len(again.token_ids) == 4
    assert tiny.chat(hello, params)[0].token_ids == direct.token_ids
    closed = tiny.chat(hello, params, add_generation_prompt=False)[0]
    assert tiny.tokenizer.decode(closed.prompt_token_ids) == "user: Hi"
    with pytest.raises(NeoError, match="continue_final_message"):
        tiny.chat(hello, params, continue_final_message=True)
    with pytest.raises(NeoError, match="messages"):
        tiny.chat([], params)
    with pytest.raises(NeoError, match="one per prompt"):
        tiny.generate(["a", "b"], [params])
    assert tiny.get_tokenizer() is tiny.tokenizer  # a dummy model's byte tokenizer


def test_vllm_prompt_dicts_are_prompts(tiny):
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    ids = tiny.tokenizer.encode("abc")
    by_text, by_ids = tiny.generate([{"prompt": "abc"}, {"prompt_token_ids": ids}], params)
    assert by_text.token_ids == by_ids.token_ids == tiny.generate("abc", params)[0].token_ids
    assert tiny.generate({"prompt": "abc"}, params)[0].token_ids == by_text.token_ids
    # vLLM's scripts read the completion as out.outputs[0]
    only = by_text.outputs[0]
    assert (only.text, only.token_ids) == (by_text.text, by_text.token_ids)
    assert len(by_text.outputs) == 1
    with pytest.raises(NeoError, match="prompt_token_ids"):
        tiny.generate([{"text": "abc"}], params)


def test_n_completions_of_each_prompt_in_vllms_shape(tiny):
    """SamplingParams(n=3): one output per prompt whose `outputs` holds three completions, the
    j-th sampled with seed + j, so it is what a lone request with that seed generates."""
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=7, n=3, ignore_eos=True)
    outs = tiny.generate(["abc", "xyz"], params)
    assert len(outs) == 2
    for out, prompt in zip(outs, ["abc", "xyz"]):
        assert out.prompt == prompt and len(out.outputs) == 3
        assert [c.index for c in out.outputs] == [0, 1, 2]
        assert out.outputs[0] is out
        assert all(c.prompt == prompt and len(c.token_ids) == 5 for c in out.outputs)
    lone = SamplingParams(max_tokens=5, temperature=1.0, seed=8, ignore_eos=True)
    assert tiny.generate("abc", lone)[0].token_ids == outs[0].outputs[1].token_ids
    assert len({tuple(c.token_ids) for c in outs[0].outputs}) > 1
    greedy = tiny.generate("abc", SamplingParams(max_tokens=4, temperature=0, n=2))[0]
    assert greedy.outputs[0].token_ids == greedy.outputs[1].token_ids
    assert "n=2" in repr(SamplingParams(n=2)) and "completions" not in repr(greedy)
    with pytest.raises(NeoError, match="samples"):
        tiny.engine.add_request("abc", params)


def test_vllms_extras_min_tokens_allowed_ids_truncation_and_kept_stops(tiny):
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    first = tiny.generate("abc", greedy)[0].token_ids[0]
    stopped = tiny.generate("abc", replace(greedy, stop_token_ids=(first,)))[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    held = tiny.generate("abc", replace(greedy, stop_token_ids=(first,), min_tokens=3))[0]
    assert len(held.token_ids) >= 3 and first not in held.token_ids[:3]
    only = tiny.generate("abc", replace(greedy, allowed_token_ids=[66, 67]))[0]
    assert set(only.token_ids) <= {66, 67} and len(only.token_ids) == 6
    cut = tiny.generate([[70, 71, 72, 73]], replace(greedy, truncate_prompt_tokens=2))[0]
    assert cut.prompt_token_ids == [72, 73]
    assert cut.token_ids == tiny.generate([[72, 73]], greedy)[0].token_ids
    text = tiny.generate("abcd", replace(greedy, truncate_prompt_tokens=2))[0]
    assert text.prompt == "cd" and text.prompt_token_ids == tiny.tokenizer.encode("abcd")[-2:]
    # a stop token's text ("A", byte 65) is left out, or kept when asked
    forced = replace(greedy, logit_bias={65: 100}, stop_token_ids=(65,))
    assert tiny.generate("abc", forced)[0].text == ""
    kept = tiny.generate("abc", replace(forced, include_stop_str_in_output=True))[0]
    assert kept.text == "A" and kept.token_ids == [65]
    # bad words: "A" never comes though its logit is pushed to the top; with B on top and C
    # next, "BB" never: a B is never followed by a B
    ab = replace(greedy, allowed_token_ids=[65, 66], logit_bias={65: 100})
    assert set(tiny.generate("abc", ab)[0].text) == {"A"}
    assert set(tiny.generate("abc", replace(ab, bad_words=["A"]))[0].text) == {"B"}
    bc = replace(greedy, allowed_token_ids=[66, 67], logit_bias={66: 60, 67: 50})
    assert tiny.generate("abc", bc)[0].text == "BBBBBB"
    assert tiny.generate("abc", replace(bc, bad_words=["BB"]))[0].text == "BCBCBC"
    with pytest.raises(NeoError, match="allowed_token_ids"):
        tiny.generate("abc", replace(greedy, allowed_token_ids=[10**6]))
    with pytest.raises(NeoError, match="min_tokens"):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_a_logit_bias_steers_greedy_tokens(tiny):
    """+100 on one token's logit makes greedy decoding pick it every step; an id past the
    vocabulary is refused before the request is queued."""
    biased = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logit_bias={65: 100})
    assert tiny.generate("abc", biased)[0].token_ids == [65] * 5
    with pytest.raises(NeoError, match="logit_bias"):
        tiny.engine.add_request("abc", SamplingParams(logit_bias={10**6: 1.0}))
