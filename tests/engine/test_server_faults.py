"""A failing request fails alone: hostile inputs, faults mid-batch, disconnects, shutdown.

Loopback only, bounded loads. Each test ends by checking the server still serves a normal
request, so a fault that kills the engine thread cannot hide.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from neo_engine.async_engine import AsyncEngine, EngineError
from neo_engine.config import EngineConfig
from neo_engine.engine import LLMEngine
from neo_engine.sampling import SamplingError, SamplingParams
from neo_sim.errors import NeoError
from tests.engine.test_server import MODEL, metrics, server  # noqa: F401 (fixture)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def ok(base: str) -> None:
    """The server still answers a normal request, and its KV gauges return to zero."""
    r = httpx.post(
        base + COMPLETIONS,
        json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "ignore_eos": True},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert httpx.get(f"{base}/health", timeout=30).json() == {"status": "ok"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metrics(base)
        if m["neo:gpu_kv_blocks_used"] == 0 and m["neo:cpu_kv_blocks_used"] == 0:
            return
        time.sleep(0.05)  # polling a gauge, not synchronising
    raise AssertionError(f"KV blocks still held: {m}")


def post_raw(base: str, path: str, text: str) -> httpx.Response:
    return httpx.post(
        base + path, content=text.encode(), headers={"content-type": "application/json"}, timeout=60
    )


@pytest.mark.parametrize(
    "body,field",
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -5}, "top_k"),
        ({"stop": ["x"] * 100}, "stop"),
        ({"logprobs": 50}, "logprobs"),
        ({"echo": True, "stream": True}, "echo"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"99999": 1}}, "logit_bias"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"best_of": 2}, "best_of"),
        ({"prompt": ["a"] * 300}, "prompt"),
        ({"min_tokens": 4}, "min_tokens"),  # more than max_tokens
        ({"min_p": 1.5}, "min_p"),
        ({"allowed_token_ids": [10**6]}, "allowed_token_ids"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"use_beam_search": True}, "use_beam_search"),
        ({"bad_words": [""]}, "bad_words"),
        ({"skip_special_tokens": False}, "skip_special_tokens"),
        ({"prompt_logprobs": 2, "stream": True}, "prompt_logprobs"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"priority": 1}, "priority"),
        ({"structured_outputs": {"choice": ["a"]}}, "structured_outputs"),
        ({"stop_token_ids": [-3]}, "stop_token_ids"),
    ],
)
def test_refused_values_get_a_400_naming_the_field(server, body, field):  # noqa: F811
    base, _ = server
    request = {"model": MODEL, "prompt": "hi", "max_tokens": 2} | body
    r = post_raw(base, COMPLETIONS, json.dumps(request))
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == field
    ok(base)


def test_a_prompt_the_tokenizer_cannot_encode_is_refused_alone(server):  # noqa: F811
    base, _ = server
    # A lone surrogate is valid JSON but not valid UTF-8: the tokenizer raises on it.
    r = post_raw(base, COMPLETIONS, f'{{"model": "{MODEL}", "prompt": "a\\ud800b"}}')
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "prompt"
    chat = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a\\ud800b"}}]}}'
    r = post_raw(base, CHAT, chat)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "messages"
    ok(base)


def test_a_tiny_temperature_samples_greedily_beside_other_requests(server):  # noqa: F811
    base, _ = server

    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            bodies = [
                {"model": MODEL, "prompt": f"p{i}", "max_tokens": 6, "ignore_eos": True}
                | ({"temperature": 1e-45} if i == 0 else {})
                for i in range(5)
            ]
            return await asyncio.gather(*(c.post(COMPLETIONS, json=b) for b in bodies))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json()["choices"][0]["finish_reason"] == "length" for r in responses)
    ok(base)


def test_a_request_failing_mid_batch_fails_alone(server, monkeypatch):  # noqa: F811
    """Sampling raises for one request (seed 4242) among concurrent ones: it gets a 500 (or
    an error event), the others complete in full."""
    import neo_engine.sampling as sampling_module

    real = sampling_module._sample_batch  # what sample_rows calls for the sampled rows

    def faulty(logits, params, generators):
        tokens = real(logits, params, generators)
        return [
            SamplingError("injected fault") if p.seed == 4242 else t for p, t in zip(params, tokens)
        ]

    monkeypatch.setattr(sampling_module, "_sample_batch", faulty)
    base, _ = server

    async def main():
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            good = [
                c.post(
                    COMPLETIONS,
                    json={"model": MODEL, "prompt": f"g{i}", "max_tokens": 8, "ignore_eos": True},
                )
                for i in range(3)
            ]
            bad = c.post(
                COMPLETIONS,
                json={"model": MODEL, "prompt": "bad", "max_tokens": 8, "seed": 4242},
            )
            events = []
            async with c.stream(
                "POST",
                COMPLETIONS,
                json={"model": MODEL, "prompt": "s", "max_tokens": 8, "seed": 4242, "stream": True},
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
            return await asyncio.gather(*good, bad), events

    (*good, bad), events = asyncio.run(main())
    assert all(r.status_code == 200 for r in good)
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in good)
    assert bad.status_code == 500 and "injected fault" in bad.json()["error"]["message"]
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"
    monkeypatch.undo()
    ok(base)


def test_a_non_streaming_client_that_leaves_frees_its_request(server):  # noqa: F811
    base, _ = server
    # As long as the server's context allows (512): the client leaves long before the end
    # (on a fast VM 400 tokens of the tiny model once finished within the old 1 s timeout).
    body = {"model": MODEL, "prompt": list(range(1, 10)), "max_tokens": 500, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(base + COMPLETIONS, json=body, timeout=0.25)
    deadline = time.monotonic() + 30
    while metrics(base)["neo:num_requests_running"] > 0:  # aborted within a poll interval
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.05)
    ok(base)


def test_chat_content_parts_and_null_assistant_content(server):  # noqa: F811
    base, _ = server
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "!"}],
        },
        {"role": "assistant", "content": None},
        {"role": "user", "content": "Again"},
    ]
    r = httpx.post(
        base + CHAT, json={"model": MODEL, "messages": messages, "max_tokens": 3}, timeout=60
    )
    assert r.status_code == 200, r.text
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    r = httpx.post(base + CHAT, json={"model": MODEL, "messages": image}, timeout=60)
    assert r.status_code == 400 and "messages[0].content[0].type" in r.json()["error"]["message"]
    # completions' max_tokens 0 (score the prompt) has no meaning on chat, nor with vLLM's chat
    # echo (the last message first), which is not streamed: each is a 400 naming its field.
    hello = [{"role": "user", "content": "Hi"}]
    for extra, field in (
        ({"echo": True, "stream": True}, "echo"),
        ({"max_tokens": 0, "echo": True}, "max_tokens"),
    ):
        body = {"model": MODEL, "messages": hello, "max_tokens": 3} | extra
        r = httpx.post(base + CHAT, json=body, timeout=60)
        assert r.status_code == 400 and field in r.json()["error"]["message"], r.text
    r = httpx.post(base + CHAT, json={"model": MODEL, "messages": hello, "max_tokens": 0})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"], r.text
    ok(base)


def test_every_error_has_the_openai_shape(server):  # noqa: F811
    base, _ = server
    for r in (
        httpx.get(f"{base}/v1/nowhere", timeout=30),
        httpx.get(base + COMPLETIONS, timeout=30),  # wrong method
        post_raw(base, COMPLETIONS, "[1, 2"),
    ):
        error = r.json()["error"]
        assert r.status_code >= 400 and {"message", "type", "param", "code"} <= set(error)


def test_api_key_is_required_when_configured():
    from fastapi.testclient import TestClient

    from neo_engine.server import build_app

    class Idle:  # build_app touches nothing of the engine for these routes
        healthy = True
        ready = threading.Event()

    client = TestClient(build_app(Idle(), "m", 64, api_key="s3cret"))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 503  # not warm: "starting"


def tiny_async_engine() -> AsyncEngine:
    config = EngineConfig.of("dummy:tiny", max_model_len=1024, gpu_kv_blocks=256)
    async_engine = AsyncEngine(lambda: LLMEngine(config))
    assert async_engine.ready.wait(timeout=600)
    return async_engine


def test_the_engine_is_built_on_the_thread_that_steps_it():
    """Every torch kernel on one thread, so one OpenMP team (async_engine's docstring): an
    engine built on the caller's thread leaves that thread's team beside the engine
    thread's, and libgomp then throttles both teams' spin-wait."""
    config = EngineConfig.of("dummy:tiny", max_model_len=1024, gpu_kv_blocks=256)
    built_on: list[int] = []

    def build() -> LLMEngine:
        built_on.append(threading.get_ident())
        return LLMEngine(config)

    async_engine = AsyncEngine(build)
    try:
        assert built_on == [async_engine._thread.ident] != [threading.get_ident()]
    finally:
        async_engine.shutdown(timeout_s=5)


def test_a_served_request_counts_from_when_the_server_received_it():
    """A request received while a step runs is added once the step ends; the engine counts
    it from its receipt (the client's TTFT, and adaptive's TTFT bound), not from the add."""
    async_engine = tiny_async_engine()
    inner = async_engine.engine
    step, add = inner.step, inner.add_request
    slowed = threading.Event()
    seen: dict[int, tuple[float, float]] = {}

    def slow_step():
        if inner.has_unfinished() and not slowed.is_set():
            slowed.set()
            time.sleep(1.0)
        return step()

    def spy_add(*args, arrival_s=None, **kwargs):
        rid = add(*args, arrival_s=arrival_s, **kwargs)
        seen[rid] = (arrival_s, inner.now())
        return rid

    inner.step, inner.add_request = slow_step, spy_add
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)

    async def serve_two() -> int:
        first = await async_engine.start([1, 2, 3], params)
        await asyncio.sleep(0.1)  # the engine thread is inside its slow step
        second = await async_engine.start([1, 2, 3], params)
        for stream in (first, second):
            async for _ in stream:
                pass
        return second.request_id

    try:
        arrival, added = seen[asyncio.run(serve_two())]
        assert added - arrival >= 0.4
    finally:
        async_engine.shutdown(timeout_s=5)


def test_an_engine_that_fails_to_build_raises_on_the_callers_thread():
    def build() -> LLMEngine:
        raise NeoError("no such model")

    with pytest.raises(NeoError, match="no such model"):
        AsyncEngine(build)


def test_if_the_engine_thread_dies_requests_fail_fast_and_health_says_so():
    engine = tiny_async_engine()

    def die():
        raise SystemExit("simulated crash")  # not an Exception: escapes the step's guard

    async def main():
        stream = await engine.start([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
        engine.engine.step = die
        outputs = [out async for out in stream]
        assert outputs[-1].finish_reason == "error"
        with pytest.raises(EngineError):
            await asyncio.wait_for(engine.start([1], SamplingParams(max_tokens=2)), timeout=5)

    asyncio.run(main())
    assert engine.healthy is False


def test_shutdown_drains_then_ends_what_is_left_with_an_error():
    engine = tiny_async_engine()

    async def main():
        params = SamplingParams(max_tokens=1000, ignore_eos=True)
        streams = [await engine.start([1, 2, 3], params) for _ in range(3)]
        threading.Thread(target=engine.shutdown, args=(0.3,)).start()
        return [[out async for out in s][-1] for s in streams]

    last = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert all(out.finished and out.finish_reason == "error" for out in last)
    assert "shut down" in last[0].error


def test_logprobs_and_echo_in_the_openai_shapes(server):  # noqa: F811
    base, _ = server
    prompt = [5, 6, 7, 8, 9]
    r = httpx.post(
        base + COMPLETIONS,
        json={"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 2},
        timeout=60,
    ).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(prompt) and lp["token_logprobs"][0] is None
    assert all(v <= 0 for v in lp["token_logprobs"][1:]) and len(lp["top_logprobs"][1]) == 2
    assert lp["text_offset"][0] == 0 and r["usage"]["completion_tokens"] == 0
    r = httpx.post(
        base + COMPLETIONS,
        json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "logprobs": 1, "ignore_eos": True},
        timeout=60,
    ).json()
    assert len(r["choices"][0]["logprobs"]["token_logprobs"]) == 3
    chat = httpx.post(
        base + CHAT,
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
            "ignore_eos": True,
        },
        timeout=60,
    ).json()
    content = chat["choices"][0]["logprobs"]["content"]
    assert len(content) == 3 and len(content[0]["top_logprobs"]) == 2 and "bytes" in content[0]
    lines = []
    with httpx.stream(
        "POST",
        base + COMPLETIONS,
        json={
            "model": MODEL,
            "prompt": "hi",
            "max_tokens": 4,
            "logprobs": 0,
            "stream": True,
            "ignore_eos": True,
        },
        timeout=60,
    ) as s:
        lines = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
    streamed = [v for e in lines for v in e["choices"][0]["logprobs"]["token_logprobs"]]
    assert len(streamed) == 4
    ok(base)
