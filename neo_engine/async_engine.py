"""The engine loop on its own thread, with an asyncio face for the HTTP server.

`LLMEngine` is synchronous and not thread-safe, so exactly one thread owns it. Requests and
aborts reach that thread through a command queue; it steps the engine while there is work and
blocks on the queue when there is none (no busy waiting). Each request's outputs go back to the
event loop through its own asyncio queue, so a streaming HTTP response reads them as they come.

Failure isolation: a request the engine refuses fails alone (NeoError: the client's input;
EngineError: ours), a request whose sampling fails ends with finish_reason "error", and should
the thread itself ever die, `healthy` turns False and every request fails fast instead of
hanging. The thread warms the engine up (kernels built, one tiny generation) before `ready`.

The thread also builds the engine: every torch kernel of the process then runs on that one
thread, so the process has one OpenMP team. libgomp counts the threads of every team alive
and, once they outnumber the cores, throttles each team's spin-wait from 300,000 to 100 spins
(GOMP_SPINCOUNT in libgomp's manual): a team's workers then sleep between kernels and each
parallel kernel pays a wake-up. An engine loaded on the main thread and stepped on this one
left the main thread's idle team beside this thread's: on 2 cores a batch-64 decode step of
SmolLM2-135M then took 1.25x the time (`benchmarks/results/openmp_teams.json`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from neo_engine.engine import EngineStats, LLMEngine, RequestOutput
from neo_engine.sampling import SamplingParams
from neo_sim.errors import NeoError

log = logging.getLogger(__name__)

FINISHED_KEPT = 10_000  # finished outputs kept for the latency histograms between scrapes


class EngineError(RuntimeError):
    """The engine failed (our bug, not the client's input): a 5xx."""


@dataclass
class _Add:
    request_id: int
    prompt: str | list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    accepted: asyncio.Future
    received: float  # time.monotonic() when the server got it: its arrival


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
    engine: LLMEngine  # built and stepped on the engine thread

    def __init__(self, build: Callable[[], LLMEngine]):
        """`build` makes the engine; it runs on the engine thread (module docstring: one
        OpenMP team), and its exception, if any, is raised here."""
        self._commands: queue.Queue = queue.Queue()
        self._sinks: dict[int, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._deadline = float("inf")  # when stopping: in-flight work may run until then
        self.shutdown_timeout_s = 30.0  # the server sets its own
        self.ready = threading.Event()  # set once the engine is warm
        self.healthy = True  # False if the engine thread died
        self._thread = threading.Thread(
            target=self._main, args=(build,), name="neo-engine", daemon=True
        )
        # Finished outputs for the latency histograms, drained by /metrics; bounded.
        self.finished_outputs: collections.deque[RequestOutput] = collections.deque(
            maxlen=FINISHED_KEPT
        )
        self._finished_lock = threading.Lock()
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        self._stats: EngineStats = self.engine.stats()

    # ---- the API the server uses --------------------------------------------------------------
    async def start(self, prompt: str | list[int], params: SamplingParams) -> RequestStream:
        """Submit a request; returns its stream once the engine accepted it.

        Raises NeoError if the engine refuses the request (too long, bad tokens...), and
        EngineError if the engine cannot take requests or failed on this one.
        """
        if not self.healthy:
            raise EngineError("the engine has stopped; see the server log")
        loop = asyncio.get_running_loop()
        rid = next(self._ids)
        sink: asyncio.Queue = asyncio.Queue()
        accepted = loop.create_future()
        self._commands.put(_Add(rid, prompt, params, sink, loop, accepted, time.monotonic()))
        await accepted
        return RequestStream(self, rid, sink)

    def abort(self, request_id: int) -> None:
        self._commands.put(_Abort(request_id))

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def build_info(self) -> dict[str, str]:
        """Fixed at start (model, dtypes, kernel path, CPU); safe to read from any thread."""
        return self.engine.build_info

    def take_finished(self) -> list[RequestOutput]:
        with self._finished_lock:
            done = list(self.finished_outputs)
            self.finished_outputs.clear()
        return done

    def in_flight(self) -> int:
        return len(self._sinks)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop: new requests are refused, in-flight ones may finish for `timeout_s`, then
        the rest end with an error."""
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._commands.put(None)
        self._thread.join(timeout=timeout_s + 10)
        if self._thread.is_alive():
            log.warning("engine thread did not stop within %.0f s", timeout_s)
        self.engine.close()

    # ---- the engine thread --------------------------------------------------------------------
    def _main(self, build: Callable[[], LLMEngine]) -> None:
        try:
            self.engine = build()
        except BaseException as exc:  # raised on the caller's thread by __init__
            self._build_error = exc
            return
        finally:
            self._built.set()
        try:
            self._warm_up()
            self.ready.set()
            self._run()
        except BaseException:  # the thread must not die silently: fail everything, fast
            log.exception("the engine thread died")
            self.healthy = False
            self._fail_all("the engine stopped: internal error")
            self._reject_queued()

    def _warm_up(self) -> None:
        """One tiny generation through every lane, so the first client does not wait for
        kernels to build (on a CPU device the host kernels compile on first use)."""
        self.engine.warm_up()

    def _reject_queued(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                error = EngineError("the engine has stopped; see the server log")
                command.loop.call_soon_threadsafe(_set_exception, command.accepted, error)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            if stopping and (
                not self.engine.has_unfinished() or time.monotonic() >= self._deadline
            ):
                self._fail_all("the server shut down before this request finished")
                return
            busy = self.engine.has_unfinished()
            try:
                command = self._commands.get(block=not (busy or stopping))
            except queue.Empty:
                command = None
            while command is not None:
                self._handle(command, stopping)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if self.engine.has_unfinished():
                try:
                    outputs = self.engine.step()
                except Exception:  # a bug outside one plan: fail the requests in flight
                    log.exception("engine step failed")
                    self._fail_all("internal error in the engine step")
                    outputs = []
                self._deliver(outputs)
            self._stats = self.engine.stats()

    def _handle(self, command, stopping: bool = False) -> None:
        if isinstance(command, _Add):
            if stopping:
                error = EngineError("the server is shutting down")
                command.loop.call_soon_threadsafe(_set_exception, command.accepted, error)
                return
            try:
                # it arrived before the step in flight ended: the engine counts from then
                waited_s = time.monotonic() - command.received
                self.engine.add_request(
                    command.prompt,
                    command.params,
                    command.request_id,
                    arrival_s=self.engine.now() - waited_s,
                )
            except NeoError as exc:  # the client's input
                command.loop.call_soon_threadsafe(_set_exception, command.accepted, exc)
                return
            except Exception as exc:  # ours: this request fails, the engine goes on
                log.exception("adding request %d failed", command.request_id)
                error = EngineError(f"internal error: {exc}")
                command.loop.call_soon_threadsafe(_set_exception, command.accepted, error)
                return
            self._sinks[command.request_id] = (command.sink, command.loop)
            command.loop.call_soon_threadsafe(_set_result, command.accepted, True)
        elif isinstance(command, _Abort):
            self.engine.abort(command.request_id)
            self._sinks.pop(command.request_id, None)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their event loops: one wake-up (a write to the loop's
        self-pipe, then a scheduled callback) per loop and step, not one per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outputs:
            target = self._sinks.get(out.request_id)
            if target is None:
                continue
            sink, loop = target
            snapshot = replace(out, token_ids=list(out.token_ids))
            by_loop.setdefault(loop, []).append((sink, snapshot))
            if out.finished:
                self._sinks.pop(out.request_id, None)
                with self._finished_lock:
                    self.finished_outputs.append(snapshot)
        for loop, batch in by_loop.items():
            loop.call_soon_threadsafe(_put_all, batch)

    def _fail_all(self, message: str) -> None:
        for rid in list(self._sinks):
            try:
                self.engine.abort(rid)
            except Exception:  # the engine may be broken; the clients must hear anyway
                log.exception("aborting request %d failed", rid)
            sink, loop = self._sinks.pop(rid)
            failed = RequestOutput(
                rid, None, [], finished=True, finish_reason="error", error=message
            )
            loop.call_soon_threadsafe(sink.put_nowait, failed)


def _put_all(batch: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for sink, out in batch:
        sink.put_nowait(out)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
