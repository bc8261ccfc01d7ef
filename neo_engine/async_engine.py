"""The engine loop on its own thread, with an asyncio face for the HTTP server.

`LLMEngine` is synchronous and not thread-safe, so exactly one thread owns it. Requests and
aborts reach that thread through a command queue; it steps the engine while there is work and
blocks on the queue when there is none (no busy waiting). Each request's outputs go back to the
event loop through its own asyncio queue, so a streaming HTTP response reads them as they come.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, replace

from neo_engine.engine import EngineStats, LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams
from neo_sim.errors import NeoError

log = logging.getLogger(__name__)


@dataclass
class _Add:
    request_id: int
    prompt: str | list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: int


class RequestStream:
    """One request's outputs, each after a new token; the last one is finished.

    `close()` aborts the request if it has not finished (a client that went away), which frees
    its KV blocks; the server calls it in a `finally`.
    """

    def __init__(self, engine: AsyncEngine, request_id: int, sink: asyncio.Queue):
        self._engine = engine
        self.request_id = request_id
        self._sink = sink
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        out = await self._sink.get()
        self.finished = out.finished
        return out

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)

    def __del__(self) -> None:  # a stream dropped unread still frees its request
        self.close()


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._sinks: dict[int, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._ids = itertools.count()
        self._stats: EngineStats = engine.stats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neo-engine", daemon=True)
        self.finished_outputs: list[
            RequestOutput
        ] = []  # for latency histograms, drained by /metrics
        self._finished_lock = threading.Lock()
        self._thread.start()

    # ---- the API the server uses --------------------------------------------------------------
    async def start(self, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        """Submit a request; returns its stream once the engine accepted it.

        Raises NeoError if the engine refuses the request (too long, bad tokens...).
        """
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        sink: asyncio.Queue = asyncio.Queue()
        accepted = loop.create_future()
        self._commands.put(_Add(rid, prompt, params, sink, loop, accepted))
        await accepted
        return RequestStream(self, rid, sink)

    def abort(self, request_id: int) -> None:
        self._commands.put(_Abort(request_id))

    def stats(self) -> EngineStats:
        return self._stats

    def take_finished(self) -> list[RequestOutput]:
        with self._finished_lock:
            done, self.finished_outputs = self.finished_outputs, []
        return done

    def shutdown(self) -> None:
        self._stop.set()
        self._commands.put(None)
        self._thread.join(timeout=30)
        self.engine.close()

    # ---- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            busy = self.engine.has_unfinished()
            try:
                command = self._commands.get(block=not busy)
            except queue.Empty:
                command = None
            while command is not None:
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if self._stop.is_set():
                break
            if self.engine.has_unfinished():
                try:
                    outputs = self.engine.step()
                except Exception:  # a bug: fail the requests in flight, keep serving
                    log.exception("engine step failed")
                    self._fail_all()
                    outputs = []
                for out in outputs:
                    self._deliver(out)
            self._stats = self.engine.stats()

    def _handle(self, command) -> None:
        if isinstance(command, _Add):
            try:
                self.engine.add_request(command.prompt, command.params, command.request_id)
            except NeoError as exc:
                command.loop.call_soon_threadsafe(_set_exception, command.accepted, exc)
                return
            self._sinks[command.request_id] = (command.sink, command.loop)
            command.loop.call_soon_threadsafe(_set_result, command.accepted, True)
        elif isinstance(command, _Abort):
            self.engine.abort(command.request_id)
            self._sinks.pop(command.request_id, None)

    def _deliver(self, out: RequestOutput) -> None:
        target = self._sinks.get(out.request_id)
        if target is None:
            return
        sink, loop = target
        snapshot = replace(out, token_ids=list(out.token_ids))
        loop.call_soon_threadsafe(sink.put_nowait, snapshot)
        if out.finished:
            self._sinks.pop(out.request_id, None)
            with self._finished_lock:
                self.finished_outputs.append(snapshot)

    def _fail_all(self) -> None:
        for rid in list(self._sinks):
            self.engine.abort(rid)
            sink, loop = self._sinks.pop(rid)
            failed = RequestOutput(rid, None, [], finished=True, finish_reason="abort")
            loop.call_soon_threadsafe(sink.put_nowait, failed)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
