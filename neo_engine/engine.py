"""LLMEngine: the serving loop around the shared scheduler.

    plan = policy.step(now)          # neo_sim.scheduler, unchanged
    result = executor.run(plan)      # swaps, layers on two lanes, logits
    sample -> append tokens -> detect EOS / stop strings
    policy.complete(plan, finished)  # the scheduler retires and frees

The clock is wall time, or (clock="predicted") the sum of the scheduler's own predicted
iteration times: then the scheduler sees exactly the clock it would see in the simulator,
which is how decision equality between the two is tested.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field, replace

import torch

from neo_engine.config import HOST_OVERLAP, EngineConfig, default_max_model_len
from neo_engine.cpu_kernel import (
    SKINNY_MAX_ROWS,
    engine_build,
    load_extension,
    prefill_path,
    skinny_path,
)
from neo_engine.detokenizer import IncrementalDetokenizer
from neo_engine.executor import Executor
from neo_engine.host_threads import host_work
from neo_engine.kv_cache import KVPool
from neo_engine.layers import EXACT_ROWS, SKINNY_ROWS_WITH_PREPACKED, build_blocked_gemms
from neo_engine.local import (
    available_memory_bytes,
    cpu_features,
    cpu_name,
    host_memory_bytes,
)
from neo_engine.sampling import (
    SamplingError,
    SamplingParams,
    TokenLogprob,
    blocked_tokens,
    penalized,
    sample_rows,
    token_logprob,
)
from neo_engine.tokenizer import load_tokenizer, user_input
from neo_engine.weights import (
    can_prepack,
    gemm_weight_bytes,
    load_checkpoint,
    prepack,
    random_weights,
)
from neo_sim.capacity import DeviceMemory, resolve_pools
from neo_sim.costmodel import CostModel, Efficiencies, RooflineCostModel
from neo_sim.errors import NeoError
from neo_sim.lanes import Lane, Span, busy_by_lane, covered_s
from neo_sim.latency import Latency
from neo_sim.model import ModelSpec
from neo_sim.profile import load_profile
from neo_sim.profiled import ProfiledCostModel
from neo_sim.scheduler import Mode, Plan, Request, SchedulerConfig, make_policy, policy_config
from neo_sim.scheduler.kv import blocks_for

log = logging.getLogger(__name__)

# At most this long building GEMMs before serving (`warm_gemms`), seconds: the sizes up to
# 8,192 tokens of one layer took 2.4-3.7 s at SmolLM2-135M's shapes on the AMX VM, and a
# Llama-3-8B layer does ~70x the multiply-adds per row; the sizes left build when first used.
WARM_GEMMS_S = 30.0
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    error: str | None = None  # what went wrong, when finish_reason is "error"
    arrival_s: float = 0.0
    first_token_s: float | None = None
    finish_s: float | None = None
    cpu_steps: int = 0
    gpu_steps: int = 0
    max_host_wait_steps: int = 0  # iterations, the longest wait as a host resident
    logprobs: list[TokenLogprob] = field(default_factory=list)  # per generated token, if asked
    prompt_logprobs: list[TokenLogprob | None] | None = None  # per prompt token (first: None)
    index: int = 0  # which of its prompt's n completions this is (vLLM's CompletionOutput.index)
    # all n completions of its prompt, this one first, when `LLM.generate` was asked for n > 1
    # (left out of == and repr: the tuple holds this output itself)
    completions: tuple[RequestOutput, ...] = field(default=(), repr=False, compare=False)

    def latency(self) -> Latency:
        """TTFT, TPOT, E2E of this request so far (neo_sim.latency's definitions)."""
        return Latency.of(self.arrival_s, self.first_token_s, self.finish_s, len(self.token_ids))

    @property
    def outputs(self) -> tuple[RequestOutput, ...]:
        """vLLM's shape, so that its scripts run as written (`out.outputs[0].text`,
        `.token_ids`, `.finish_reason`, `.logprobs`): the prompt's n completions
        (`completions`), or this output itself when it is the only one."""
        return self.completions or (self,)


@dataclass
class IterationLog:
    plan: Plan
    start_s: float
    # measured: the executor's forward pass (layers, LM head) and the sampling of its logits,
    # what neo-sim's operators price (`lm_head` covers the sampling)
    duration_s: float
    spans: list[Span]
    # measured: the rest of `step()` (scheduling, detokenizing, bookkeeping), the engine's host
    # work between forward passes, which a measured profile's host overhead prices
    host_s: float = 0.0
    # measured: the sampling's share of `duration_s`
    sampling_s: float = 0.0

    @property
    def untimed_s(self) -> float:
        """The engine's own work in this step outside the operators a profile times: its host
        work, plus the forward pass's time that no task's span covers (embedding lookup,
        building the inputs, dispatch between layers and tasks). A measured profile's host
        overhead prices it (`opbench.measure_host_overhead`)."""
        forward = self.duration_s - self.sampling_s - covered_s(self.spans)
        return self.host_s + max(0.0, forward)


def pools_line(config: SchedulerConfig) -> str:
    """One line on the KV pools and how prompts are admitted, for the start-up log (as vLLM
    logs its block counts): a pool's tokens are its blocks x block size."""
    bs = config.block_size
    if config.chunked_prefill_tokens:
        prompts = f"prompts in chunks of at most {config.iteration_tokens} tokens per iteration"
    else:
        prompts = f"whole prompts, at most {config.max_batch_tokens} tokens per iteration"
        if config.kv_chunk_tokens:
            prompts += (
                f" (kv_chunk_tokens={config.kv_chunk_tokens} not adopted: its smaller activation"
                f" reserve would not grow the device pool by {config.kv_chunk_min_gain:.0%})"
            )
    return (
        f"KV pools: {config.num_gpu_blocks} device blocks ({config.num_gpu_blocks * bs} tokens), "
        f"{config.num_cpu_blocks} host blocks ({config.num_cpu_blocks * bs} tokens); {prompts}"
    )


@dataclass
class EngineStats:
    waiting: int
    running_gpu: int
    running_cpu: int
    swapped: int
    gpu_kv_usage: float
    cpu_kv_usage: float
    gpu_kv_blocks_used: int
    cpu_kv_blocks_used: int
    iterations: int
    pipelined_iterations: int
    sequential_iterations: int
    fused_iterations: int
    generated_tokens: int
    cpu_attention_s_last: float
    tokens_per_s: float


@dataclass
class _Live:
    output: RequestOutput
    params: SamplingParams
    tokens: list[int]  # prompt + generated
    generator: torch.Generator | None
    detokenizer: IncrementalDetokenizer
    bad_words: tuple[tuple[int, ...], ...] = ()  # `params.bad_words` as token sequences


def _gemm_path(dtype: torch.dtype, device: torch.device, prepacked: bool) -> str:
    """Which GEMMs an engine's linear layers run, in words (logs, /metrics, benchmarks)."""
    if device.type != "cpu":
        return "torch"
    if prepacked:
        return (
            f"{skinny_path(dtype)} up to {SKINNY_ROWS_WITH_PREPACKED[dtype]} rows, "
            f"oneDNN with prepacked weights beyond (past {EXACT_ROWS} rows at 16 row counts "
            "per octave, layers.blocked_rows)"
        )
    return f"{skinny_path(dtype)} up to {SKINNY_MAX_ROWS.get(dtype, 0)} rows, torch beyond"


# The prepacked copy of the GEMM weights may take at most this share of the memory available
# once the weights are loaded: the KV pools (the host pool 2 GB by default) and the run's
# activations come after it.
PREPACK_MEMORY_SHARE = 0.5


def _room_for_blocked_copy(weights) -> bool:
    """Whether the blocked copy of `weights` fits in PREPACK_MEMORY_SHARE of the memory
    available now; if not, says so (the engine then keeps one copy, as prepack_weights=False:
    slower GEMMs past a few rows, no out-of-memory at start for a large fp32 model)."""
    need, room = gemm_weight_bytes(weights), available_memory_bytes()
    if need <= PREPACK_MEMORY_SHARE * room:
        return True
    log.warning(
        "not prepacking the GEMM weights: their blocked copy (%.1f GB) would take more than "
        "%.0f%% of the %.1f GB of memory available; pass prepack_weights=False to silence this",
        need / 1e9,
        100 * PREPACK_MEMORY_SHARE,
        room / 1e9,
    )
    return False


class LLMEngine:
    """The serving loop. `cost_model` overrides the scheduler's cost model (else the profile
    named in the config, else a quick probe of this machine)."""

    def __init__(self, config: EngineConfig, cost_model: CostModel | None = None):
        self.config = config
        load = config.load
        self.device = torch.device(load.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise NeoError("device 'cuda' requested but torch sees no CUDA device; use cpu")
        ref = load.model_ref()
        self.spec: ModelSpec = ref.spec
        self.torch_dtype = TORCH_DTYPES[self.spec.dtype]
        started = time.perf_counter()
        if ref.checkpoint_dir is not None:
            self.weights = load_checkpoint(
                ref.checkpoint_dir, self.spec, self.torch_dtype, self.device
            )
        else:
            self.weights = random_weights(self.spec, self.torch_dtype, self.device, load.seed)
        wanted = load.prepack_weights and can_prepack(self.torch_dtype, self.device)
        prepacked = wanted and _room_for_blocked_copy(self.weights)
        if prepacked:
            prepack(self.weights)
        self.tokenizer = load_tokenizer(ref.checkpoint_dir, self.spec.vocab_size)
        kernels = load_extension()  # build the host kernels now, not inside the first request
        features = cpu_features()
        self.build_info: dict[str, str] = {  # what decides this engine's speed, for /metrics
            "model": load.model,
            "device": load.device,
            "dtype": self.spec.dtype,
            "kv_dtype": self.spec.kv_dtype,
            "dtype_reason": load.dtype_reason(),
            "host_kernels": "c++" if kernels is not None else "torch fallback",
            # as a measured profile records it (one copy where memory ruled the blocked one out)
            "engine_build": engine_build(load.prepack_weights and prepacked == wanted),
            "decode_gemm": _gemm_path(self.torch_dtype, self.device, prepacked),
            "prefill_attention": prefill_path(self.torch_dtype, self.device.type),
            "cpu": cpu_name(),
            "cpu_features": ",".join(name for name, present in features.items() if present),
        }
        window = self.spec.sliding_window
        self.max_model_len = config.max_model_len or default_max_model_len(self.spec)
        if window is not None and self.max_model_len > window:
            raise NeoError(
                f"{load.model} uses sliding-window attention ({window} tokens), which neo_engine "
                f"does not implement; up to max_model_len={window} full attention is identical: "
                "lower max_model_len"
            )
        self.scheduler_config = self._scheduler_config()
        log.info("%s", pools_line(self.scheduler_config))
        self.cost: CostModel = cost_model or self._cost_model()
        self.policy = make_policy(config.policy, self.scheduler_config, self.cost)
        kv_dtype = TORCH_DTYPES[self.spec.kv_dtype]
        cuda = self.device.type == "cuda"
        pools = self.scheduler_config
        self.gpu_pool = KVPool(
            self.spec, pools.num_gpu_blocks, pools.block_size, kv_dtype, self.device
        )
        self.cpu_pool = KVPool(
            self.spec,
            pools.num_cpu_blocks,
            pools.block_size,
            kv_dtype,
            torch.device("cpu"),
            pin=cuda,
        )
        self.executor = Executor(
            self.spec,
            self.weights,
            self.device,
            self.gpu_pool,
            self.cpu_pool,
            config.host_threads,
            HOST_OVERLAP[config.host_overlap],
        )
        self.build_info["decode_layers"] = (
            "fused: one compiled call per decode-only iteration"
            if self.executor.fused_layers is not None
            else "stage by stage"
        )
        log.info(
            "loaded %s in %.1f s (%s)",
            load.model,
            time.perf_counter() - started,
            ", ".join(f"{k}={v}" for k, v in self.build_info.items() if k != "model"),
        )
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count()
        self._t0 = time.monotonic()
        self._predicted_now = 0.0
        self.iterations: list[IterationLog] = []
        self.keep_iteration_log = False
        self.idle_step = False
        self._counts = dict.fromkeys(("tokens", "iterations", *(m.value for m in Mode)), 0)
        self._last_cpu_attention_s = 0.0
        self._recent: list[tuple[float, int]] = []

    # ---- setup -----------------------------------------------------------------------------
    def _scheduler_config(self) -> SchedulerConfig:
        """The configured scheduler settings, KV pools sized by the simulator's formula
        (`neo_sim.capacity`) from this device's measured memory."""
        c = self.config
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            memory = DeviceMemory(float(total), float(total - free), host_memory_bytes())
        else:  # a CPU standing in for a GPU: no device memory to measure
            memory = DeviceMemory(None, self.spec.weight_bytes, host_memory_bytes())
        config = resolve_pools(policy_config(c.policy, c.scheduler), c.kv, self.spec, memory)
        if not config.chunked_prefill_tokens and config.max_batch_tokens < self.max_model_len:
            raise NeoError(
                f"max_batch_tokens ({config.max_batch_tokens}) < max_model_len "
                f"({self.max_model_len}): a preempted request re-prefills its whole sequence in "
                "one iteration; raise max_batch_tokens or lower max_model_len"
            )
        needed = blocks_for(self.max_model_len, config.block_size)
        if max(config.num_gpu_blocks, config.num_cpu_blocks) < needed:
            raise NeoError(
                f"KV pools ({config.num_gpu_blocks} GPU / {config.num_cpu_blocks} CPU blocks) "
                f"cannot hold one {self.max_model_len}-token sequence; raise them or "
                "max_model_len"
            )
        return config

    def _cost_model(self) -> CostModel:
        if self.config.profile:
            return ProfiledCostModel(load_profile(self.config.profile), self.spec)
        from neo_engine.local import probe_hardware

        hardware = host_work(
            lambda: probe_hardware(self.device, self.torch_dtype), self.device.type == "cuda"
        )
        # Probed figures are achieved rates already (see of_probed_rates); a small launch cost.
        eff = Efficiencies.of_probed_rates(launch_s=50e-6, sampling_s=1e-4)
        return RooflineCostModel(self.spec, hardware, eff)

    # ---- requests ----------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: int | None = None,
        arrival_s: float | None = None,
    ) -> int:
        """Queue a request. Everything is validated before the scheduler hears of it, so a
        refused request (NeoError) leaves no trace. `arrival_s`: when it arrived, on the
        engine's clock (`now()`; unset, or later than now: now). A server passes the time it
        received the request and a replay the workload's arrival, since a request waits for
        the step in flight before it is added: the scheduler's TTFT bound and adaptive's
        arrival window count from the arrival, as in the simulator, and so do the request's
        latencies."""
        params = params or SamplingParams()
        if params.n != 1:
            raise NeoError(
                f"n={params.n}: the engine queues one completion per request; add each of "
                "params.samples() (LLM.generate and neo-serve do)",
                param="n",
            )
        if isinstance(prompt, str):
            text = prompt
            tokens = user_input(lambda: self.tokenizer.encode(prompt), "prompt", param=None)
        else:
            text = None
            try:
                tokens = [int(t) for t in prompt]
            except (TypeError, ValueError):
                raise NeoError("prompt must be a string or a list of token ids") from None
        if not tokens:
            raise NeoError("prompt is empty")
        k = params.truncate_prompt_tokens
        if k is not None and len(tokens) > k:  # vLLM's: the prompt's last k tokens
            tokens = tokens[-k:]
            if text is not None:  # the prompt the model sees (an echo shows it)
                text = self.tokenizer.decode(tokens)
        if any(t < 0 or t >= self.spec.vocab_size for t in tokens):
            raise NeoError(
                f"prompt has token ids outside the vocabulary [0, {self.spec.vocab_size})"
            )
        if any(t >= self.spec.vocab_size for t in params.logit_bias or ()):
            raise NeoError(
                f"logit_bias has token ids outside the vocabulary [0, {self.spec.vocab_size})",
                param="logit_bias",
            )
        if any(t >= self.spec.vocab_size for t in params.allowed_token_ids or ()):
            raise NeoError(
                f"allowed_token_ids has token ids outside the vocabulary "
                f"[0, {self.spec.vocab_size})",
                param="allowed_token_ids",
            )
        bad_words = self._bad_word_tokens(params.bad_words)
        if params.max_tokens is None:  # up to the end of the context, as vLLM
            room = self.max_model_len - len(tokens)
            if room < 1:
                raise NeoError(
                    f"prompt ({len(tokens)} tokens) leaves no room for a token in the "
                    f"context length {self.max_model_len}"
                )
            params = replace(params, max_tokens=room)
        if len(tokens) + params.max_tokens > self.max_model_len:
            raise NeoError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) "
                f"exceeds the context length {self.max_model_len}"
            )
        rid = next(self._ids) if request_id is None else request_id
        if rid in self._live:
            raise NeoError(f"request id {rid} is already running")
        gen = None
        if not params.greedy:
            seed = params.seed
            if seed is None:
                seed = hash((self.config.load.seed, rid)) & 0xFFFFFFFF
            gen = torch.Generator().manual_seed(seed)
        now = self.now()
        arrived = now if arrival_s is None else min(arrival_s, now)
        self.policy.add(Request(rid, len(tokens), params.max_tokens, arrival_s=arrived))
        out = RequestOutput(rid, text, list(tokens), arrival_s=arrived)
        if params.prompt_logprobs is not None:
            out.prompt_logprobs = [None]  # the first token has nothing before it
        detokenizer = IncrementalDetokenizer(
            self.tokenizer, params.stop, params.min_tokens, params.include_stop_str_in_output
        )
        self._live[rid] = _Live(out, params, list(tokens), gen, detokenizer, bad_words)
        return rid

    def _bad_word_tokens(self, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Each bad word as the token sequences that would write it: as it stands and after a
        space (a word inside text is usually tokenized with its leading space), encoded without
        special tokens; NeoError naming the field if one cannot be encoded."""
        sequences: set[tuple[int, ...]] = set()
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                encoded = user_input(
                    lambda text=text: self.tokenizer.encode(text, add_special_tokens=False),
                    f"bad_words: {word!r}",
                    param="bad_words",
                )
                ids = tuple(encoded)
                if ids and all(0 <= t < self.spec.vocab_size for t in ids):
                    sequences.add(ids)
        return tuple(sorted(sequences))

    def abort(self, request_id: int) -> bool:
        live = self._live.pop(request_id, None)
        found = self.policy.abort(request_id)
        if live is not None:
            live.output.text = live.detokenizer.finish()
            live.output.finished, live.output.finish_reason = True, "abort"
            live.output.finish_s = self.now()
        return found or live is not None

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def reset_clock(self) -> None:
        """Start the clock at zero now (after a warm-up, before a timed workload)."""
        self._t0 = time.monotonic()
        self._predicted_now = 0.0

    def pause_clock(self, seconds: float) -> None:
        """Real clock only: leave out `seconds` of work that is not serving (a measurement
        taken between steps): times read after it are as if it had not happened."""
        self._t0 += seconds

    def advance_clock_to(self, t: float) -> None:
        """Predicted clock only: jump an idle engine forward to time t (the next arrival)."""
        if self.config.clock != "predicted":
            raise NeoError("advance_clock_to needs clock='predicted'")
        self._predicted_now = max(self._predicted_now, t)

    def now(self) -> float:
        if self.config.clock == "predicted":
            return self._predicted_now
        return time.monotonic() - self._t0

    # ---- the loop ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one iteration; returns the outputs of requests that got a token or finished."""
        self.idle_step = True  # nothing ran: the caller should wait for an arrival
        if not self.policy.has_work:
            return []
        start, began = self.now(), time.perf_counter()
        plan = self.policy.step(start)
        if plan.is_empty:
            if plan.changes_books:  # KV moved or dropped without work: copy it, step again
                self.idle_step = False
                self.executor.run(plan, {}, self.policy.kv)
            return []
        self.idle_step = False
        scoring = frozenset(
            rid
            for rid, live in self._live.items()
            if live.output.prompt_logprobs is not None
            and len(live.output.prompt_logprobs) < len(live.output.prompt_token_ids)
        )
        try:
            result = self.executor.run(
                plan, {rid: s.tokens for rid, s in self._live.items()}, self.policy.kv, scoring
            )
        except Exception as exc:  # a bug in a kernel: the plan's requests fail, others go on
            log.exception("executing step %d failed", plan.step)
            now = self.now()
            return [self._fail(rid, f"internal error: {exc}", now) for rid in plan.request_ids]
        if self.config.clock == "predicted":
            self._predicted_now += plan.predicted_s
        now = self.now()
        stopped: set[int] = set()
        failed: dict[int, str] = {}
        touched: list[RequestOutput] = []
        for rid, (first, logits) in result.prompt_logits.items():
            self._score_prompt(self._live[rid], first, logits)
        lives = [self._live[rid] for rid in result.request_ids]
        sampling = time.perf_counter()
        params = [live.params for live in lives]
        histories = [(live.tokens, len(live.output.prompt_token_ids)) for live in lives]
        blocked = None
        if any(live.params.min_tokens or live.bad_words for live in lives):
            eos = self.tokenizer.eos_token_id
            blocked = [
                blocked_tokens(live.params, tokens, prompt_len, eos, live.bad_words)
                for live, (tokens, prompt_len) in zip(lives, histories)
            ]
        scores = penalized(result.logits, params, histories, blocked)  # raw logits stay
        tokens = sample_rows(scores, params, [live.generator for live in lives])
        sampling_s = time.perf_counter() - sampling
        for row, (rid, live, token) in enumerate(zip(result.request_ids, lives, tokens)):
            if isinstance(token, SamplingError):
                failed[rid] = str(token)
                continue
            if live.params.logprobs is not None:
                live.output.logprobs.append(
                    token_logprob(result.logits[row], token, live.params.logprobs)
                )
            live.tokens.append(token)
            out = live.output
            out.token_ids.append(token)
            if out.first_token_s is None:
                out.first_token_s = now
            if self._hits_stop(live, token):
                stopped.add(rid)
            out.text = live.detokenizer.streamable_text
            touched.append(out)
        for r in self.policy.complete(plan, stopped):
            live = self._live.pop(r.request_id)
            out = live.output
            out.text = live.detokenizer.finish()
            out.finished, out.finish_s = True, now
            out.finish_reason = "stop" if r.request_id in stopped else "length"
            out.cpu_steps, out.gpu_steps = r.cpu_steps, r.gpu_steps
            out.max_host_wait_steps = r.max_host_wait_steps
        for rid, reason in failed.items():  # after complete(): the others' books are settled
            touched.append(self._fail(rid, reason, now))
        self._account(plan, result, start, began, len(result.request_ids), sampling_s)
        return touched

    @staticmethod
    def _score_prompt(live: _Live, first: int, logits) -> None:
        """Prompt log-probabilities from the logits of prefilled positions first, first+1, ...
        (row i predicts the token at first + i + 1); positions already scored (a request
        prefilled again after preemption) are skipped."""
        scored, prompt = live.output.prompt_logprobs, live.output.prompt_token_ids
        top = live.params.prompt_logprobs or 0
        for i in range(logits.shape[0]):
            position = first + i + 1
            if position == len(scored) and position < len(prompt):
                scored.append(token_logprob(logits[i], prompt[position], top))

    def _fail(self, request_id: int, message: str, now: float) -> RequestOutput:
        """End one request with an error, free its KV; the rest of the batch is unaffected."""
        self.policy.abort(request_id)
        live = self._live.pop(request_id, None)
        out = live.output if live is not None else RequestOutput(request_id, None, [])
        out.finished, out.finish_s = True, now
        out.finish_reason, out.error = "error", message
        return out

    def _hits_stop(self, live: _Live, token: int) -> bool:
        """Whether `token` ends the request: a stop token (kept in `token_ids`, its text left
        out, as vLLM leaves it out, unless include_stop_str_in_output), EOS, or text that
        reached a stop string (the detokenizer takes every other token, EOS included: a
        special token adds no text)."""
        p = live.params
        if token in p.stop_token_ids:
            if p.include_stop_str_in_output:
                live.detokenizer.add(token)
            return True
        if live.detokenizer.add(token):
            return True
        return not p.ignore_eos and token == self.tokenizer.eos_token_id

    def _account(
        self, plan: Plan, result, start: float, began: float, tokens: int, sampling_s: float
    ) -> None:
        """Counters, the recent token rate and (if kept) the iteration log; `began` is the
        perf_counter at the step's start, `sampling_s` the seconds `sample_rows` took."""
        c = self._counts
        c["iterations"] += 1
        c["tokens"] += tokens
        c[plan.mode.value] += 1
        self._last_cpu_attention_s = busy_by_lane(result.spans)[Lane.CPU]
        wall = time.monotonic()
        self._recent.append((wall, tokens))
        while self._recent and wall - self._recent[0][0] > 10.0:
            self._recent.pop(0)
        if self.keep_iteration_log:
            duration = result.duration_s + sampling_s
            host_s = time.perf_counter() - began - duration
            self.iterations.append(
                IterationLog(plan, start, duration, result.spans, max(0.0, host_s), sampling_s)
            )

    def stats(self) -> EngineStats:
        p, c = self.policy, self._counts
        span = (self._recent[-1][0] - self._recent[0][0]) if len(self._recent) > 1 else 0.0
        rate = sum(n for _, n in self._recent[1:]) / span if span > 0 else 0.0
        return EngineStats(
            waiting=len(p.waiting),
            running_gpu=len(p.gpu_running),
            running_cpu=len(p.cpu_running),
            swapped=len(p.swapped),
            gpu_kv_usage=p.kv.gpu.usage,
            cpu_kv_usage=p.kv.cpu.usage,
            gpu_kv_blocks_used=p.kv.gpu.num_used,
            cpu_kv_blocks_used=p.kv.cpu.num_used,
            iterations=c["iterations"],
            pipelined_iterations=c["pipelined"],
            sequential_iterations=c["sequential"],
            fused_iterations=c["fused"],
            generated_tokens=c["tokens"],
            cpu_attention_s_last=self._last_cpu_attention_s,
            tokens_per_s=rate,
        )

    def warm_up(self, build_gemms: bool = True) -> None:
        """Run one tiny generation (allocator, caches, lazy torch paths) and, with
        `build_gemms`, build the GEMMs of every iteration size (`warm_gemms`), so that the
        first real requests do not pay for them. Leaves no trace in the counters."""
        rid = self.add_request([1], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
        while rid in self._live:
            self.step()
        self._counts = dict.fromkeys(self._counts, 0)
        self._recent.clear()
        if build_gemms:
            self.warm_gemms()

    def warm_gemms(self) -> None:
        """On a CPU device with prepacked weights: build oneDNN's GEMMs at every row count an
        iteration of up to the scheduler's tokens per iteration runs them at
        (`layers.build_blocked_gemms`): 2.4-3.7 s for one layer of SmolLM2-135M's shapes at up
        to 8,192 tokens on the AMX VM as its speed moved, most of it the large GEMMs' own
        work. Steps with new token counts otherwise pay the builds as they come: a
        prefill-bearing step of the `small` preset took 1.5-1.6x as long with a new count
        (ad hoc, 2026-12-06)."""
        if self.device.type != "cpu" or not self.weights.layers:
            return
        started = time.perf_counter()
        with torch.inference_mode():
            built, sizes = build_blocked_gemms(
                self.weights.layers[0], self.scheduler_config.iteration_tokens, WARM_GEMMS_S
            )
        if sizes:
            log.info(
                "built the GEMMs of %d of %d iteration sizes in %.1f s%s",
                built,
                sizes,
                time.perf_counter() - started,
                "" if built == sizes else " (the rest build when first used)",
            )

    def close(self) -> None:
        self.executor.close()
