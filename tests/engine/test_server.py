"""neo-serve over a real uvicorn on 127.0.0.1: OpenAI clients, streaming, errors, disconnects.

The test binds the listening socket before the server starts, so clients can connect at once
(connections queue in the kernel until uvicorn accepts): no sleeps to wait for start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import torch

from neo_engine.cpu_kernel import engine_build, prefill_path
from neo_engine.server import build_parser, create_server
from neo_sim.machine import native_bf16

MODEL = "dummy:tiny"


@pytest.fixture(scope="module")
def server():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    args: argparse.Namespace = build_parser().parse_args(
        [
            "--model",
            MODEL,
            "--policy",
            "neo",
            "--port",
            str(port),
            "--gpu-kv-blocks",
            "8",
            "--cpu-kv-blocks",
            "600",
            "--block-size",
            "8",
            "--max-model-len",
            "512",
        ]
    )
    srv, engine = create_server(args)
    thread = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
    thread.start()
    assert engine.ready.wait(timeout=600), "the engine did not warm up"
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(timeout=30)
    engine.shutdown()
    sock.close()


def metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("neo:") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_models_and_health(server):
    base, _ = server
    assert httpx.get(f"{base}/health", timeout=30).json() == {"status": "ok"}
    data = httpx.get(f"{base}/v1/models", timeout=30).json()["data"]
    assert data[0]["id"] == MODEL and data[0]["max_model_len"] == 512


def test_metrics_say_which_precision_and_kernels_run_and_why(server):
    base, _ = server
    info = next(
        line
        for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines()
        if line.startswith("neo:engine_info{")
    )
    expected = "bfloat16" if native_bf16() else "float32"  # the CPU device's default
    assert f'dtype="{expected}"' in info and f'kv_dtype="{expected}"' in info
    assert 'dtype_reason="cpu device default' in info
    assert 'decode_gemm="' in info
    assert f'prefill_attention="{prefill_path(getattr(torch, expected))}"' in info
    assert 'host_kernels="c++"' in info or 'host_kernels="torch fallback"' in info
    assert f'engine_build="{engine_build()}"' in info  # as a measured profile records it


def test_openai_client_completion_chat_and_stream(server):
    openai = pytest.importorskip("openai")
    base, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60)
    done = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert done.usage.completion_tokens == 5 and done.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"ignore_eos": True},
    )
    assert chat.usage.completion_tokens == 4 and chat.choices[0].message.role == "assistant"
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Hello",
            max_tokens=5,
            stream=True,
            temperature=0,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        )
    )
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 5 and chunks[-1].usage.completion_tokens == 5
    assert "".join(c.choices[0].text for c in token_chunks) == done.choices[0].text


def test_without_max_tokens_chat_runs_to_the_context_end_and_completions_to_16(server):
    """vLLM's defaults: a chat without max_tokens may fill the context (max_model_len 512
    here); a completion gets 16 tokens, as OpenAI's legacy endpoint."""
    base, _ = server
    chat = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True},
        timeout=120,
    ).json()
    usage = chat["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 512
    assert chat["choices"][0]["finish_reason"] == "length"
    done = httpx.post(
        f"{base}/v1/completions",
        json={"model": MODEL, "prompt": "hi", "ignore_eos": True},
        timeout=60,
    ).json()
    assert done["usage"]["completion_tokens"] == 16


def test_a_request_without_model_goes_to_the_served_model(server):
    """As vLLM: `model` may be left out; a wrong one is a 404 (model_not_found)."""
    base, _ = server
    r = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == MODEL, r.text
    r = httpx.post(f"{base}/v1/completions", json={"model": "gpt-4", "prompt": "hi"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def _sse_chunks(base: str, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", base + path, json=body | {"stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_n_completions_of_each_prompt_in_order_streamed_alike(server):
    """n samples of each prompt (choice index: prompt x n + sample); the prompt counts once in
    the usage, as in vLLM. Sampled texts are not compared across requests: a sampled token
    may differ with the batch a request shares (bf16 numerics), greedy ones are."""
    base, _ = server
    body = {"model": MODEL, "max_tokens": 4, "ignore_eos": True, "temperature": 1.0, "seed": 7}
    one = httpx.post(f"{base}/v1/completions", json=body | {"prompt": "ab"}, timeout=60).json()
    many = body | {"prompt": ["ab", "cde"], "n": 3}
    done = httpx.post(f"{base}/v1/completions", json=many, timeout=60).json()
    texts = [c["text"] for c in done["choices"]]
    assert [c["index"] for c in done["choices"]] == list(range(6))
    assert len(set(texts[:3])) == 3  # three samples of one prompt differ
    usage = done["usage"]
    assert usage["prompt_tokens"] == 2 * one["usage"]["prompt_tokens"] + 1  # "ab" 3, "cde" 4
    assert usage["completion_tokens"] == 6 * 4
    greedy = body | {"temperature": 0, "messages": [{"role": "user", "content": "hi"}], "n": 2}
    plain = httpx.post(f"{base}/v1/chat/completions", json=greedy, timeout=60).json()
    with_usage = greedy | {"stream_options": {"include_usage": True}}
    chunks = _sse_chunks(base, "/v1/chat/completions", with_usage)
    streamed = ["", ""]
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or ""
    assert streamed == [c["message"]["content"] for c in plain["choices"]]
    assert chunks[-1]["usage"] == plain["usage"] and plain["usage"]["completion_tokens"] == 8
    r = httpx.post(f"{base}/v1/completions", json=body | {"prompt": ["a"] * 100, "n": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    # several prompts stream too, as in vLLM: choice i is prompt i // n's sample i % n
    batch = body | {"temperature": 0, "prompt": ["ab", "cde"], "n": 2}
    plain = httpx.post(f"{base}/v1/completions", json=batch, timeout=60).json()
    chunks = _sse_chunks(
        base, "/v1/completions", batch | {"stream_options": {"include_usage": True}}
    )
    streamed = [""] * 4
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert streamed == [c["text"] for c in plain["choices"]]
    assert chunks[-1]["usage"] == plain["usage"]


def test_n_samples_take_seed_plus_j():
    from neo_engine.protocol import CompletionRequest

    def seeds(**body):
        return [p.seed for p in CompletionRequest(model=MODEL, prompt="x", **body).samples()]

    assert seeds(n=3, seed=7) == [7, 8, 9]
    assert seeds(n=2, seed=2**64 - 1) == [2**64 - 1, 0]
    assert seeds(n=2) == [None, None]  # each request draws its own
    assert all(p.n == 1 for p in CompletionRequest(model=MODEL, prompt="x", n=3).samples())


def test_best_of_is_taken_only_where_it_changes_nothing():
    from neo_engine.protocol import CompletionRequest

    def refused(**body):
        return CompletionRequest(model=MODEL, prompt="x", **body).refused_field()

    assert refused(best_of=1) is None and refused(n=3, best_of=3) is None
    assert refused(best_of=2) == "best_of" and refused(n=2, best_of=4) == "best_of"


def test_vllms_sampling_extras_are_served(server):
    """allowed_token_ids, min_tokens against a stop token, a kept stop string and a
    truncated prompt's echo, as vLLM serves them."""
    base, _ = server
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 0}
    only = httpx.post(f"{base}/v1/completions", json=body | {"allowed_token_ids": [66]})
    assert only.json()["choices"][0]["text"] == "BBBB"
    forced = body | {"logit_bias": {"65": 100}, "stop": ["AA"], "ignore_eos": True}
    cut = httpx.post(f"{base}/v1/completions", json=forced).json()["choices"][0]
    assert (cut["text"], cut["finish_reason"]) == ("", "stop")
    kept = forced | {"include_stop_str_in_output": True}
    assert httpx.post(f"{base}/v1/completions", json=kept).json()["choices"][0]["text"] == "AA"
    # min_tokens 3: no stop ends in the first 3 tokens; the 4th ends "AA" at characters 2-3
    late = forced | {"min_tokens": 3}
    done = httpx.post(f"{base}/v1/completions", json=late).json()
    assert (done["choices"][0]["text"], done["choices"][0]["finish_reason"]) == ("AA", "stop")
    assert done["usage"]["completion_tokens"] == 4
    banned = body | {"allowed_token_ids": [66, 67], "logit_bias": {"66": 60, "67": 50}}
    r = httpx.post(f"{base}/v1/completions", json=banned | {"bad_words": ["BB"]})
    assert r.json()["choices"][0]["text"] == "BCBC"
    echo = body | {"prompt": "abcdef", "echo": True, "max_tokens": 1, "truncate_prompt_tokens": 3}
    r = httpx.post(f"{base}/v1/completions", json=echo).json()
    assert r["choices"][0]["text"].startswith("def") and r["usage"]["prompt_tokens"] == 3


def test_logit_bias_and_penalties_are_served(server):
    """A +100 bias on "A" (byte 65) makes the greedy completion all A's; a frequency penalty
    of 2 then pushes it off "A" within a few tokens (its logit falls 2 per "A")."""
    base, _ = server
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 0}
    body |= {"ignore_eos": True, "logit_bias": {"65": 100}}
    done = httpx.post(f"{base}/v1/completions", json=body, timeout=60).json()
    assert done["choices"][0]["text"] == "AAAA"
    lean = body | {"logit_bias": {"65": 5}, "max_tokens": 40}
    alone = httpx.post(f"{base}/v1/completions", json=lean, timeout=60).json()
    assert alone["choices"][0]["text"] == "A" * 40  # +5 alone keeps "A" on top
    penalized = lean | {"frequency_penalty": 2}
    r = httpx.post(f"{base}/v1/completions", json=penalized, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] != "A" * 40


def test_stop_token_ids_end_a_served_request(server):
    """vLLM's extra field: with every token id of dummy:tiny's vocabulary (2,048) listed, the
    first token ends the request; with none listed, it runs to max_tokens."""
    base, _ = server
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "ignore_eos": True}
    for ids, tokens, reason in (([], 8, "length"), (list(range(2048)), 1, "stop")):
        r = httpx.post(f"{base}/v1/completions", json=body | {"stop_token_ids": ids}, timeout=60)
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["usage"]["completion_tokens"] == tokens
        assert done["choices"][0]["finish_reason"] == reason


def test_concurrent_streaming_and_plain_clients_all_complete(server):
    base, _ = server

    async def plain(client, n):
        r = await client.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": list(range(1, 30)),
                "max_tokens": n,
                "ignore_eos": True,
            },
        )
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    async def streamed(client, n):
        count, usage = 0, None
        body = {
            "model": MODEL,
            "prompt": "stream me",
            "max_tokens": n,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                if chunk["choices"]:
                    count += 1
                else:
                    usage = chunk["usage"]["completion_tokens"]
        return count, usage

    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            lengths = [3 + i % 9 for i in range(12)]
            results = await asyncio.gather(
                *(plain(client, n) for n in lengths), *(streamed(client, n) for n in lengths)
            )
            return lengths, results

    lengths, results = asyncio.run(main())
    assert results[:12] == lengths
    assert results[12:] == [(n, n) for n in lengths]
    m = metrics(base)
    assert m["neo:num_requests_running"] == 0 and m["neo:gpu_kv_blocks_used"] == 0
    assert m["neo:cpu_kv_blocks_used"] == 0


@pytest.mark.parametrize(
    "path,body,status,field",
    [
        ("/v1/completions", b"{not json", 400, "body"),
        ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x" * 600, "max_tokens": 8}, 400, "prompt"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "temperature": "hot"},
            400,
            "temperature",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": 42}, 400, "prompt"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400, "content"),
    ],
)
def test_malformed_requests_get_4xx_naming_the_field(server, path, body, status, field):
    base, _ = server
    kw = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    r = httpx.post(base + path, timeout=30, **kw)
    assert r.status_code == status
    error = r.json()["error"]
    assert field in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200  # still serving


@pytest.mark.parametrize("n", [1, 3])
def test_disconnect_mid_stream_aborts_and_frees_kv(server, n):
    """Every one of a stream's n completions is aborted when its client leaves."""
    base, _ = server
    body = {
        "model": MODEL,
        "prompt": list(range(1, 200)),
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": True,
        "n": n,
    }
    with (
        httpx.Client(base_url=base, timeout=60) as client,
        client.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
        assert metrics(base)["neo:num_requests_running"] >= 1
    # The connection is closed; the server must abort the request. Poll its metrics (each poll
    # is a real request) until the KV is free, within a deadline.
    deadline = time.monotonic() + 30
    while True:
        m = metrics(base)
        if (
            m["neo:num_requests_running"] == 0
            and m["neo:gpu_kv_blocks_used"] == 0
            and m["neo:cpu_kv_blocks_used"] == 0
        ):
            break
        assert time.monotonic() < deadline, f"request not aborted: {m}"
    after = httpx.post(
        f"{base}/v1/completions",
        timeout=60,
        json={"model": MODEL, "prompt": "again", "max_tokens": 3, "ignore_eos": True},
    )
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3


def test_streamed_deltas_add_up_to_the_text_when_characters_span_tokens(server, monkeypatch):
    """A character whose bytes come in two tokens streams once it is whole: the deltas of a
    stream add up to the non-streamed text (before incremental detokenization the stream sent
    U+FFFD for the partial character and then dropped every later delta). Bytes that never
    form a character stay U+FFFD in both. Seeded sampling, not greedy: the random model's
    near-even distribution then gives "é" (byte 0xC3 then 0xA9) in 40 tokens whatever the
    last bits of its arithmetic, where greedy text is one fixed sequence."""
    from tests.engine.test_detokenizer import HalfCharacters

    base, engine = server
    monkeypatch.setattr(
        engine.engine, "tokenizer", HalfCharacters(engine.engine.tokenizer.vocab_size)
    )
    body = {
        "model": MODEL,
        "prompt": "a prompt",
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 7,
        "ignore_eos": True,
    }
    whole = httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()
    text = whole["choices"][0]["text"]
    assert "é" in text  # the case this is for
    streamed = []
    with httpx.stream(
        "POST", f"{base}/v1/completions", json=body | {"stream": True}, timeout=120
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                streamed.append(json.loads(line[len("data: ") :])["choices"][0]["text"])
    assert "".join(streamed) == text


def test_tokenize_and_detokenize_as_vllm_serves_them(server):
    """/tokenize gives the ids a completion or a chat request would take (the byte tokenizer:
    BOS 256, then the UTF-8 bytes), /detokenize their text; /version names neo's."""
    base, _ = server
    r = httpx.post(f"{base}/tokenize", json={"model": MODEL, "prompt": "hi"}).json()
    assert r == {"count": 3, "max_model_len": 512, "tokens": [256, 104, 105]}
    bare = httpx.post(f"{base}/tokenize", json={"prompt": "hi", "add_special_tokens": False})
    assert bare.json()["tokens"] == [104, 105]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    ids = httpx.post(f"{base}/tokenize", json=chat).json()["tokens"]
    assert bytes(ids[1:]).decode() == "user: hi\nassistant:"
    # what a chat request takes: its usage counts the same prompt tokens
    done = httpx.post(f"{base}/v1/chat/completions", json=chat | {"max_tokens": 1}).json()
    assert done["usage"]["prompt_tokens"] == len(ids)
    turn = httpx.post(f"{base}/tokenize", json=chat | {"add_generation_prompt": False})
    assert bytes(turn.json()["tokens"][1:]).decode() == "user: hi"
    text = httpx.post(f"{base}/detokenize", json={"tokens": [256, 104, 105]}).json()
    assert text == {"prompt": "hi"}
    assert httpx.get(f"{base}/version").json()["version"]
    for path, body, param in [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "a"} | chat, "prompt"),
        ("/tokenize", chat | {"add_special_tokens": True}, "add_special_tokens"),
        ("/tokenize", {"prompt": "a", "add_generation_prompt": False}, "add_generation_prompt"),
        ("/tokenize", {"prompt": "a", "return_token_strs": True}, "return_token_strs"),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ]:
        r = httpx.post(f"{base}{path}", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    both = chat | {"continue_final_message": True}  # add_generation_prompt is on by default
    r = httpx.post(f"{base}/v1/chat/completions", json=both)
    assert r.status_code == 400 and r.json()["error"]["param"] == "continue_final_message"
    going_on = both | {"add_generation_prompt": False}
    ids = httpx.post(f"{base}/tokenize", json=going_on).json()["tokens"]
    assert bytes(ids[1:]).decode() == "user: hi"
    done = httpx.post(f"{base}/v1/chat/completions", json=going_on | {"max_tokens": 1}).json()
    assert done["usage"]["prompt_tokens"] == len(ids)
    # add_special_tokens false on a completion: the prompt without BOS, as /tokenize says
    plain = {"prompt": "hi", "max_tokens": 1, "add_special_tokens": False}
    assert httpx.post(f"{base}/v1/completions", json=plain).json()["usage"]["prompt_tokens"] == 2
    kept = httpx.post(f"{base}/v1/completions", json=plain | {"add_special_tokens": True})
    assert kept.json()["usage"]["prompt_tokens"] == 3
    r = httpx.post(f"{base}/v1/chat/completions", json=chat | {"add_special_tokens": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "add_special_tokens"
    fine = {"skip_special_tokens": True, "priority": 0, "prompt_logprobs": None}
    assert httpx.post(f"{base}/v1/completions", json=plain | fine).status_code == 200
    wrong = httpx.post(f"{base}/tokenize", json={"model": "other", "prompt": "a"})
    assert wrong.status_code == 404


def test_tokens_can_come_back_as_their_ids(server):
    """vLLM's return_tokens_as_token_ids: log-probabilities name each token "token_id:<id>"
    (the alternatives too), so a client gets the exact ids back."""
    base, _ = server
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "temperature": 0, "logprobs": 2}
    body |= {"ignore_eos": True, "logit_bias": {"65": 100}}
    plain = httpx.post(f"{base}/v1/completions", json=body).json()["choices"][0]["logprobs"]
    assert plain["tokens"] == ["A", "A", "A"]
    ids = httpx.post(f"{base}/v1/completions", json=body | {"return_tokens_as_token_ids": True})
    logprobs = ids.json()["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["token_id:65"] * 3
    assert all(k.startswith("token_id:") for top in logprobs["top_logprobs"] for k in top)
    assert logprobs["text_offset"] == [0, 11, 22]  # the lengths of those names, as vLLM
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True}
    chat |= {"temperature": 0, "logit_bias": {"65": 100}, "return_tokens_as_token_ids": True}
    content = httpx.post(f"{base}/v1/chat/completions", json=chat).json()
    entry = content["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == "token_id:65" and entry["bytes"] == list(b"token_id:65")


def test_prompt_logprobs_as_vllm_gives_them(server):
    """vLLM's prompt_logprobs: per prompt position None (the first), else the prompt token's
    log-probability and rank and the top alternatives, keyed by token id; on a completion's
    choice, once on a chat response; echo's own alternatives keep their count."""
    base, _ = server
    body = {"model": MODEL, "prompt": "hey", "max_tokens": 1, "prompt_logprobs": 2}
    choice = httpx.post(f"{base}/v1/completions", json=body).json()["choices"][0]
    scored = choice["prompt_logprobs"]
    prompt = [256, *b"hey"]
    assert scored[0] is None and len(scored) == len(prompt)
    for position, token in zip(scored[1:], prompt[1:]):
        mine = position[str(token)]
        assert mine["decoded_token"] == chr(token) and mine["rank"] >= 1
        assert mine["logprob"] <= 0 and 1 <= len(position) <= 3
        ranks = sorted(v["rank"] for k, v in position.items() if k != str(token))
        assert ranks == [1, 2][: len(ranks)]
    both = body | {"echo": True, "logprobs": 1}
    echoed = httpx.post(f"{base}/v1/completions", json=both).json()["choices"][0]
    assert all(len(top) == 1 for top in echoed["logprobs"]["top_logprobs"][1:])
    assert echoed["prompt_logprobs"] == scored
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    plain = httpx.post(f"{base}/v1/chat/completions", json=chat).json()
    assert "prompt_logprobs" not in plain
    r = httpx.post(f"{base}/v1/chat/completions", json=chat | {"prompt_logprobs": 0}).json()
    assert r["prompt_logprobs"][0] is None
    assert len(r["prompt_logprobs"]) == r["usage"]["prompt_tokens"]
    assert all(len(p) == 1 for p in r["prompt_logprobs"][1:])
    streamed = chat | {"prompt_logprobs": 0, "stream": True}
    r = httpx.post(f"{base}/v1/chat/completions", json=streamed)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_logprobs"


def test_chat_echo_starts_the_reply_with_the_last_message_of_its_role(server):
    """vLLM's chat echo: the reply's content starts with the last message when that message
    is the assistant's (or, continued, the message the model goes on with); else nothing."""
    base, _ = server
    body = {"model": MODEL, "max_tokens": 2, "temperature": 0, "echo": True}
    body |= {"logit_bias": {"65": 100}, "ignore_eos": True}

    def reply(messages, **extra):
        r = httpx.post(f"{base}/v1/chat/completions", json=body | {"messages": messages} | extra)
        return r.json()["choices"][0]["message"]["content"]

    user = [{"role": "user", "content": "hi"}]
    assert reply(user) == "AA"
    started = user + [{"role": "assistant", "content": "Sure: "}]
    assert reply(started) == "Sure: AA"
    going_on = {"add_generation_prompt": False, "continue_final_message": True}
    assert reply(user, **going_on) == "hiAA"
