"""Request: one generation request as the scheduler sees it.

The scheduler tracks token counts only; token ids live in the engine. A request's KV covers
its first `num_computed` tokens. Each iteration computes a token range [start, end) of it:
a prefill computes many, a decode computes one (the last sampled token). When `end` reaches
`seq_len` the iteration samples a new token. The same rule covers chunked prefill (a chunk that
stops short of `seq_len` samples nothing) and recompute after preemption (the "prompt" is then
the prompt plus the tokens generated so far).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from neo_sim.errors import NeoError


class RequestState(StrEnum):
    WAITING = "waiting"  # queued for (re)prefill, no KV
    RUNNING_GPU = "running_gpu"  # KV on the GPU, decoding there
    RUNNING_CPU = "running_cpu"  # KV on the host, decode attention on the CPU
    SWAPPED = "swapped"  # KV parked on the host, not running (GPU-only preemption)
    FINISHED = "finished"
    ABORTED = "aborted"


class Device(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


@dataclass(eq=False, slots=True)
class Request:
    """A request's lengths, state and progress (tokens only)."""

    request_id: int
    prompt_len: int
    max_new_tokens: int
    arrival_s: float = 0.0
    state: RequestState = RequestState.WAITING
    num_computed: int = 0  # tokens whose KV is cached
    num_generated: int = 0  # tokens sampled so far
    admit_order: int = -1  # FCFS rank at first admission; fixes "oldest first"
    last_progress_step: int = 0  # last step a token was computed (starvation bound)
    num_preemptions: int = 0
    num_swaps: int = 0
    gpu_steps: int = 0  # iterations it progressed with KV on the GPU
    cpu_steps: int = 0  # ... with KV on the host
    # The longest a host resident with KV waited for progress, in iterations (the starvation
    # bound's unit: NEO's `max_cpu_wait_steps` caps it where its conditions hold).
    max_host_wait_steps: int = 0
    # When its first token was out (the start of the first step after it), seconds: a TPOT
    # SLO's budget for its next token counts from here (`AdaptivePolicy`); None until then.
    decode_start_s: float | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise NeoError(f"request {self.request_id}: prompt must have >= 1 token")
        if self.max_new_tokens < 1:
            raise NeoError(f"request {self.request_id}: max_new_tokens must be >= 1")

    @property
    def seq_len(self) -> int:
        """Tokens known so far: prompt plus generated."""
        return self.prompt_len + self.num_generated

    @property
    def is_prefilling(self) -> bool:
        """More than the last sampled token lacks KV: the next work is (part of) a prefill."""
        return self.num_computed < self.seq_len - 1 or self.num_computed == 0

    @property
    def is_done(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.ABORTED)

    @property
    def max_seq_len(self) -> int:
        return self.prompt_len + self.max_new_tokens
