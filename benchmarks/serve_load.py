"""Load benchmark for neo-serve, in the style of vLLM's serving benchmark.

Sends requests to an OpenAI-compatible server (`--base-url`), or starts `neo-serve` itself
(`--serve "--model dummy:tiny ..."`), with Poisson/gamma arrivals at `--rate` (inf = all at
once), prompt and output lengths from a trace in ../shared/traces/ (or synthetic), streaming
every response. Reports TTFT, TPOT, ITL and E2E percentiles and throughput, counts failures,
and reads the server's /metrics afterwards to check that no KV block is left allocated.
Writes DIR/requests.csv with the same columns as `neo-sim run`, and DIR/summary.json.

Run: python -m benchmarks.serve_load --serve "--model dummy:tiny --max-model-len 1024" \\
        --trace ../shared/traces/azure_conv_2023.csv --num-requests 1000 --rate inf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from neo_sim.latency import RequestRecord
from neo_sim.metrics import GapLog, Metrics
from neo_sim.workload import arrival_times, read_trace


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "neo_engine.server", "--port", str(port), *shlex.split(extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, "neo-serve", timeout_s=300)
    return proc, base


def wait_healthy(proc: subprocess.Popen, base: str, name: str, timeout_s: float) -> None:
    """Wait until the server at `base` answers /health with 200 (a benchmark script may wait
    for a process to come up); exit with its stderr if it dies, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited: {proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"{name} did not come up within {timeout_s:.0f} s")


def kv_in_use(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=60).text
    wanted = (
        "neo:num_requests_running",
        "neo:num_requests_waiting",
        "neo:gpu_kv_blocks_used",
        "neo:cpu_kv_blocks_used",
    )
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.split() and line.split()[0] in wanted
    }


async def one_request(
    client, model, record: RequestRecord, itl: GapLog, t0: float, vocab: int
) -> None:
    prompt = [1 + (record.request_id * 7 + i) % (vocab - 1) for i in range(record.prompt_len)]
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": record.output_len,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                record.status = f"http {r.status_code}"
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if json.loads(line[6:])["choices"]:
                    record.on_token(time.perf_counter() - t0, itl)
        record.finish_s = time.perf_counter() - t0
        record.status = "finished" if record.num_tokens == record.output_len else "short"
    except httpx.HTTPError as exc:
        record.status = f"error {type(exc).__name__}"


async def run(args, base: str) -> tuple[Metrics, float]:
    rng = random.Random(args.seed)
    if args.trace:
        rows = read_trace(args.trace)[: args.num_requests]
        lengths = [(r.prompt_len, r.output_len) for r in rows]
    else:
        lengths = [(args.input_len, args.output_len)] * args.num_requests
    lengths = [
        (max(1, min(p, args.max_prompt_len)), max(1, min(o, args.max_output_len)))
        for p, o in lengths
    ]
    times = arrival_times(len(lengths), args.rate, rng, args.burstiness)
    records = [
        RequestRecord(request_id=i, arrival_s=t, prompt_len=p, output_len=o)
        for i, (t, (p, o)) in enumerate(zip(times, lengths))
    ]
    itl = GapLog()
    model = httpx.get(f"{base}/v1/models", timeout=60).json()["data"][0]["id"]
    limits = httpx.Limits(
        max_connections=args.num_requests + 10, max_keepalive_connections=args.num_requests + 10
    )
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(3600), limits=limits) as c:
        t0 = time.perf_counter()

        async def send(record):
            delay = record.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)  # the arrival process itself, not synchronisation
            record.arrival_s = time.perf_counter() - t0
            await one_request(c, model, record, itl, t0, args.vocab)

        await asyncio.gather(*(send(r) for r in records))
        wall = time.perf_counter() - t0
    return Metrics.of(records, [], itl), wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=None)
    p.add_argument("--serve", default=None, help="start neo-serve with these arguments")
    p.add_argument("--trace", default=None, help="CSV trace for lengths")
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--rate", type=float, default=math.inf)
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--max-prompt-len", type=int, default=512)
    p.add_argument("--max-output-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=256, help="prompt token ids stay below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("runs/serve_load"))
    args = p.parse_args(argv)
    proc = None
    base = args.base_url
    if base is None:
        if not args.serve:
            p.error("give --base-url or --serve")
        proc, base = start_server(args.serve)
    try:
        metrics, wall = asyncio.run(run(args, base))
        leftover = kv_in_use(base)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    frame = metrics.requests_frame()
    summary = metrics.summary()
    failures = int((frame["status"] != "finished").sum())
    leaked = int(
        leftover.get("neo:gpu_kv_blocks_used", 0) + leftover.get("neo:cpu_kv_blocks_used", 0)
    )
    summary.update(wall_s=wall, failures=failures, leaked_kv_blocks=leaked)
    if args.serve:  # the server ran on this machine: record it (torch only now)
        from neo_engine.local import machine_summary

        summary.update(machine=machine_summary(), server=args.serve)
    args.output.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.output / "requests.csv", index=False)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"{len(frame)} requests, rate {args.rate}, {wall:.1f} s wall; failures {failures}; "
        f"KV blocks left allocated {leaked}; server after: {leftover}"
    )
    for key in ("throughput_req_s", "throughput_tok_s"):
        print(f"  {key:18s} {summary[key]:10.2f}")
    for metric in ("ttft", "tpot", "itl", "e2e"):
        print(
            f"  {metric:5s} p50 {summary[f'{metric}_p50']:8.3f} s  p90 "
            f"{summary[f'{metric}_p90']:8.3f} s  p99 {summary[f'{metric}_p99']:8.3f} s"
        )
    print(f"results in {args.output}/ (requests.csv, summary.json)")
    return 0 if failures == 0 and leaked == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
