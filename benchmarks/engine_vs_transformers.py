"""Benchmark: offline throughput of neo_engine vs transformers' generate, side by side.

The same ~100M-parameter random Llama (the `small` preset, saved once as an HF safetensors
checkpoint), the same prompts, the same batch, greedy, fp32 on this CPU. transformers gets
the whole batch at once (left padding, its KV cache); neo_engine gets the same requests.
Target (issue 3): >= 3x transformers.

Run: python -m benchmarks.engine_vs_transformers [--batch 32 --prompt-len 128 --new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--policy", default="gpu-only")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

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
    gen = torch.Generator().manual_seed(1)
    prompts = [
        torch.randint(1, spec.vocab_size, (args.prompt_len,), generator=gen).tolist()
        for _ in range(args.batch)
    ]
    total = args.batch * args.new_tokens

    ids = torch.tensor(prompts)
    llm = LLM(directory, policy=args.policy, max_model_len=args.prompt_len + args.new_tokens)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)

    def run_hf() -> list[list[int]]:
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
            )
        return out[:, args.prompt_len :].tolist()

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

    print(
        f"small (~{spec.num_params / 1e6:.0f}M params), batch {args.batch}, prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens, greedy fp32, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  (median of {args.repeats} alternating runs each)")
    print(f"  transformers generate  {hf_s:7.2f} s  {total / hf_s:8.1f} tok/s")
    print(f"  neo_engine ({args.policy})  {neo_s:7.2f} s  {total / neo_s:8.1f} tok/s")
    print(f"  speed-up {hf_s / neo_s:.2f}x; identical outputs for {same}/{args.batch} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
