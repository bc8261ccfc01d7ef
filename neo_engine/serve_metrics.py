"""Prometheus metrics of the server, in vLLM's names under the `neo:` prefix.

Gauges and counters are read from the engine's counters at scrape time (a custom collector);
latency histograms observe every finished request. Beside vLLM's names, the offload-specific
ones: requests resident on the CPU, KV blocks used per pool, host attention time of the last
iteration, and iterations by mode (pipelined, sequential, fused).
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from neo_engine.async_engine import AsyncEngine

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineCollector:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    def collect(self):
        yield InfoMetricFamily(
            "neo:engine",
            "model, dtypes and why, host kernel path and CPU features of this engine",
            value=self.engine.build_info,
        )
        s = self.engine.stats()
        gauges = [
            (
                "neo:num_requests_running",
                "requests running (GPU or CPU)",
                s.running_gpu + s.running_cpu,
            ),
            ("neo:num_requests_waiting", "requests waiting to be admitted", s.waiting),
            ("neo:num_requests_swapped", "requests swapped out, not running", s.swapped),
            (
                "neo:num_requests_cpu_resident",
                "running requests whose KV is on the CPU",
                s.running_cpu,
            ),
            ("neo:gpu_cache_usage_perc", "GPU KV pool usage, 0-1", s.gpu_kv_usage),
            ("neo:cpu_cache_usage_perc", "CPU KV pool usage, 0-1", s.cpu_kv_usage),
            ("neo:gpu_kv_blocks_used", "GPU KV blocks in use", s.gpu_kv_blocks_used),
            ("neo:cpu_kv_blocks_used", "CPU KV blocks in use", s.cpu_kv_blocks_used),
            (
                "neo:cpu_attention_seconds",
                "host attention time of the last iteration",
                s.cpu_attention_s_last,
            ),
            (
                "neo:generation_tokens_per_second",
                "generated tokens/s over the last 10 s",
                s.tokens_per_s,
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        iterations = CounterMetricFamily(
            "neo:iterations", "engine iterations by mode", labels=["mode"]
        )
        iterations.add_metric(["pipelined"], s.pipelined_iterations)
        iterations.add_metric(["sequential"], s.sequential_iterations)
        iterations.add_metric(["fused"], s.fused_iterations)
        yield iterations
        yield CounterMetricFamily(
            "neo:generation_tokens", "tokens generated", value=s.generated_tokens
        )


class ServerMetrics:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        kw = {"registry": self.registry, "buckets": LATENCY_BUCKETS}
        self.ttft = Histogram("neo:time_to_first_token_seconds", "time to first token", **kw)
        self.tpot = Histogram("neo:time_per_output_token_seconds", "time per output token", **kw)
        self.e2e = Histogram("neo:e2e_request_latency_seconds", "end-to-end latency", **kw)

    def render(self) -> bytes:
        for out in self.engine.take_finished():
            latency = out.latency()
            for histogram, value in (
                (self.ttft, latency.ttft_s),
                (self.tpot, latency.tpot_s),
                (self.e2e, latency.e2e_s),
            ):
                if not math.isnan(value):  # no first token (aborted early), or one token only
                    histogram.observe(value)
        return generate_latest(self.registry)
