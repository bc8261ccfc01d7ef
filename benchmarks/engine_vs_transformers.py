"""Benchmark: offline throughput of neo_engine vs transformers' generate, side by side.

The same ~100M-parameter random Llama (the `small` preset, saved once as an HF safetensors
checkpoint), the same prompts, the same batch, greedy, fp32 on this CPU. transformers gets
the whole batch at once (left padding, its KV cache); neo_engine gets the same requests.
Target: >= 3x transformers' throughput.

Two shapes of batch:
- uniform (default): every prompt --prompt-len tokens, every output --new-tokens tokens: this
  isolates per-token efficiency (kernels, overheads), as no request finishes early;
- --trace CSV: the prompt and output lengths of the trace's first --batch requests (the public
  Azure traces), times --length-scale so that a CPU run stays short. Real requests differ in
  length: transformers pads prompts to the longest and decodes the whole batch until its
  longest output is done (as it does when requests stop at EOS at different times), each output
  is then cut to its own length; neo_engine gives each request its own max_tokens and batches
  continuously. This is the shape of vLLM's offline throughput benchmark.

Run: python -m benchmarks.engine_vs_transformers [--batch 32 --prompt-len 128 --new-tokens 64]
     python -m benchmarks.engine_vs_transformers --batch 32 \
         --trace ../shared/traces/azure_conv_2023.csv --length-scale 0.125
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import RESULTS, write_result
from benchmarks.vs_vllm_cpu import path_facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--policy", default="gpu-only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--trace", help="take prompt/output lengths from this trace CSV")
    p.add_argument("--length-scale", type=float, default=1.0, help="scale the trace's lengths")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results JSON (default: benchmarks/results/engine_vs_transformers/<shape>.json)",
    )
    args = p.parse_args(argv)

    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from neo_engine import LLM, SamplingParams
    from neo_sim.model import PRESETS

    spec = PRESETS["small"]
    config = LlamaConfig(
        **{
            k: v
            for k, v in spec.to_hf_config().items()
            if k not in ("architectures", "model_type", "torch_dtype")
        },
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval()
    directory = tempfile.mkdtemp(prefix="neo-bench-small-")
    model.save_pretrained(directory, safe_serialization=True)
    prompt_lens, output_lens = batch_lengths(args)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, spec.vocab_size, (n,), generator=gen).tolist() for n in prompt_lens]
    total = sum(output_lens)
    longest_prompt, longest_output = max(prompt_lens), max(output_lens)

    # transformers: one left-padded batch, decoded until its longest output is done.
    ids = torch.zeros(args.batch, longest_prompt, dtype=torch.long)  # pad_token_id 0
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, longest_prompt - len(prompt) :] = torch.tensor(prompt)
        mask[row, longest_prompt - len(prompt) :] = 1
    llm = LLM(directory, policy=args.policy, max_model_len=longest_prompt + longest_output)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in output_lens]

    def run_hf() -> list[list[int]]:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=longest_output,
                min_new_tokens=longest_output,
                do_sample=False,
            )
        return [
            row[longest_prompt : longest_prompt + n] for row, n in zip(out.tolist(), output_lens)
        ]

    def run_neo() -> list[list[int]]:
        return [o.token_ids for o in llm.generate(prompts, params)]

    run_hf(), run_neo()  # warm-up (and the kernel build)
    hf_times, neo_times = [], []
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
        start = time.perf_counter()
        hf_tokens = run_hf()
        hf_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        neo_tokens = run_neo()
        neo_times.append(time.perf_counter() - start)
    hf_s, neo_s = statistics.median(hf_times), statistics.median(neo_times)
    same = sum(a == b for a, b in zip(neo_tokens, hf_tokens))

    if args.trace:
        shape = (
            f"lengths of {args.trace} x {args.length_scale}: prompts {min(prompt_lens)}-"
            f"{longest_prompt} (mean {statistics.mean(prompt_lens):.0f}), outputs "
            f"{min(output_lens)}-{longest_output} (mean {statistics.mean(output_lens):.0f})"
        )
    else:
        shape = f"prompt {args.prompt_len}, {args.new_tokens} new tokens"
    print(
        f"small (~{spec.num_params / 1e6:.0f}M params), batch {args.batch}, {shape}, greedy "
        f"fp32, {torch.get_num_threads()} threads"
    )
    print(f"  (median of {args.repeats} alternating runs each)")
    print(f"  transformers generate  {hf_s:7.2f} s  {total / hf_s:8.1f} tok/s")
    print(f"  neo_engine ({args.policy})  {neo_s:7.2f} s  {total / neo_s:8.1f} tok/s")
    print(f"  speed-up {hf_s / neo_s:.2f}x; identical outputs for {same}/{args.batch} prompts")
    lengths = "trace" if args.trace else f"{args.prompt_len}+{args.new_tokens}"
    name = f"batch{args.batch}-{lengths}"
    output = args.output or RESULTS / "engine_vs_transformers" / f"{name}.json"
    write_result(
        output,
        "engine_vs_transformers",
        settings={k: v for k, v in vars(args).items() if k != "output"},
        shape=shape,
        generated_tokens=total,
        transformers_s=hf_times,
        neo_engine_s=neo_times,
        transformers_tok_s=total / hf_s,
        neo_engine_tok_s=total / neo_s,
        speed_up=hf_s / neo_s,
        identical_outputs=same,
        transformers_version=transformers.__version__,
        neo_engine_path=path_facts(llm),
    )
    return 0


def batch_lengths(args) -> tuple[list[int], list[int]]:
    """(prompt lengths, output lengths) of the batch: uniform, or a trace's scaled lengths."""
    if not args.trace:
        return [args.prompt_len] * args.batch, [args.new_tokens] * args.batch
    from neo_sim.workload import read_trace

    rows = read_trace(args.trace)[: args.batch]
    if len(rows) < args.batch:
        raise SystemExit(f"{args.trace} has only {len(rows)} requests")
    scaled = [
        (
            max(1, round(r.prompt_len * args.length_scale)),
            max(1, round(r.output_len * args.length_scale)),
        )
        for r in rows
    ]
    return [p for p, _ in scaled], [o for _, o in scaled]


if __name__ == "__main__":
    raise SystemExit(main())
