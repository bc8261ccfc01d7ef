"""`benchmarks.prepacked_weights` runs end to end and writes its result (one batch, one
repeat; the committed run took ~4 minutes)."""

from __future__ import annotations

import json


def test_prepacked_weights_writes_both_engines_side_by_side(tmp_path, smollm2_dir):
    from benchmarks.prepacked_weights import main

    out = tmp_path / "prepacked.json"
    argv = ["--batches", "2", "--repeats", "1", "--output", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "prepacked_weights" and result["machine"]["cpu"]
    assert set(result["decode_gemm"]) == {"prepacked", "one copy"}
    (row,) = result["runs"]
    assert row["batch"] == 2 and row["same_tokens"] in (0, 1, 2)
    tok_s = row["output_tok_s"]
    assert row["ratio"] == tok_s["prepacked"] / tok_s["one copy"] > 0
