"""Benchmark: lm-eval through neo-serve scores what lm-eval scores on transformers directly.

EleutherAI's lm-evaluation-harness (`lm-eval` 0.4.13) speaks OpenAI completions
(`local-completions`): for each choice of a multiple-choice item it sends the context and the
choice as token ids with `echo`, `logprobs=1`, `max_tokens=1`, and sums the echoed prompt
log-probabilities of the choice. Its stock tasks download datasets from the hub; offline, this
script writes a small local task instead: 200 four-way items (sums of small numbers, and the
next item of a known sequence: weekdays, months, number words, letters), generated from a
fixed seed into the results folder with the task's YAML.

The same task then runs twice on the real SmolLM2-135M: through neo-serve (`local-completions`,
the server's default settings, fp32 on this CPU) and on Hugging Face transformers in the same
harness (`--model hf`, fp32). Both runs log every sample; the summary records each run's
accuracy, the items where the two picked different choices, and the largest difference between
the two log-likelihoods of any choice.

Run: python -m benchmarks.lm_eval_check --venv V
  V: the clients' venv (see benchmarks/serve_clients.py) plus `V/bin/pip install lm-eval==0.4.13`
Writes benchmarks/results/lm_eval/ (summary.json, task/, neo_serve/, transformers/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from pathlib import Path

from benchmarks import RESULTS, SMOLLM2, checkpoint_or_exit, write_result
from benchmarks.serve_load import kv_in_use, start_server

DEFAULT_MODEL = SMOLLM2
TASK = "neo_local_mc"
ITEMS, SEED = 200, 0
SEQUENCES = {
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "month": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],  # fmt: skip
    "number": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    "letter": list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}


def make_items(count: int, seed: int) -> list[dict]:
    """Four-way items, half sums, half "what comes next"; the answer's position is random.
    Choices carry no leading space: the harness joins context and choice with one."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        if i % 2 == 0:
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            right = a + b
            wrong = rng.sample([n for n in range(2, 41) if n != right], 3)
            question = f"Question: What is {a} plus {b}?\nAnswer:"
            choices = [str(n) for n in [right, *wrong]]
        else:
            kind = rng.choice(sorted(SEQUENCES))
            seq = SEQUENCES[kind]
            start = rng.randint(0, len(seq) - 4)
            shown, right = seq[start : start + 3], seq[start + 3]
            wrong = rng.sample([w for w in seq if w != right], 3)
            question = f"{', '.join(shown)},"
            choices = [right, *wrong]
        order = list(range(4))
        rng.shuffle(order)
        items.append(
            {
                "question": question,
                "choices": [choices[k] for k in order],
                "answer": order.index(0),
            }
        )
    return items


def write_task(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in make_items(ITEMS, SEED)))
    (folder / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data.resolve()}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    )
    return folder


def run_harness(venv: Path, model_args: list[str], task_dir: Path, out: Path) -> dict:
    argv = [
        str(venv / "bin" / "lm_eval"),
        *model_args,
        "--tasks",
        TASK,
        "--include_path",
        str(task_dir),
        "--output_path",
        str(out),
        "--log_samples",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    return {
        "command": argv,
        "rc": done.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "output_tail": (done.stdout + done.stderr)[-3000:],
    }


def harness_accuracy(out: Path) -> float:
    """The accuracy the harness itself reports (its results_*.json)."""
    files = sorted(out.rglob("results_*.json"))
    if not files:
        raise SystemExit(f"no results_*.json under {out}")
    return json.loads(files[-1].read_text())["results"][TASK]["acc,none"]


def samples(out: Path) -> dict[int, dict]:
    """The harness's per-item log: doc id -> (log-likelihood per choice, the pick, the target)."""
    files = sorted(out.rglob(f"samples_{TASK}_*.jsonl"))
    if not files:
        raise SystemExit(f"no samples_{TASK}_*.jsonl under {out}")
    rows = {}
    for line in files[-1].read_text().splitlines():
        row = json.loads(line)
        lls = [float(r[0][0]) for r in row["resps"]]
        pick, target = lls.index(max(lls)), int(row["target"])
        rows[row["doc_id"]] = {"lls": lls, "pick": pick, "target": target}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, required=True, help="virtual env with lm-eval 0.4.13")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SmolLM2-135M directory")
    p.add_argument("--output", type=Path, default=RESULTS / "lm_eval")
    args = p.parse_args(argv)
    if not (args.venv / "bin" / "lm_eval").exists():
        raise SystemExit(f"{args.venv / 'bin' / 'lm_eval'} not found: install lm-eval (--help)")
    args.model = checkpoint_or_exit(args.model, "lm_eval_check")
    task_dir = write_task(args.output / "task")
    model = str(args.model)
    proc, base = start_server(f"--model {model}")
    try:
        print(f"lm_eval_check: lm-eval local-completions against {base} ...", flush=True)
        served = run_harness(
            args.venv,
            [
                "--model",
                "local-completions",
                "--model_args",
                f"model={model},base_url={base}/v1/completions,tokenizer={model},"
                "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1",
            ],
            task_dir,
            args.output / "neo_serve",
        )
        served["server_after"] = kv_in_use(base)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"  rc {served['rc']} in {served['wall_s']} s", flush=True)
    print("lm_eval_check: lm-eval hf (transformers) ...", flush=True)
    direct = run_harness(
        args.venv,
        ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu"],
        task_dir,
        args.output / "transformers",
    )
    print(f"  rc {direct['rc']} in {direct['wall_s']} s", flush=True)
    comparison = {}
    if served["rc"] == 0 and direct["rc"] == 0:
        a, b = samples(args.output / "neo_serve"), samples(args.output / "transformers")
        if a.keys() != b.keys():
            raise SystemExit("the two runs logged different items")
        comparison = {
            "items": len(a),
            "accuracy_neo_serve": sum(r["pick"] == r["target"] for r in a.values()) / len(a),
            "accuracy_transformers": sum(r["pick"] == r["target"] for r in b.values()) / len(b),
            "harness_accuracy_neo_serve": harness_accuracy(args.output / "neo_serve"),
            "harness_accuracy_transformers": harness_accuracy(args.output / "transformers"),
            "items_picked_differently": [k for k in a if a[k]["pick"] != b[k]["pick"]],
            "max_abs_loglikelihood_difference": max(
                abs(x - y) for k in a for x, y in zip(a[k]["lls"], b[k]["lls"])
            ),
        }
        print(json.dumps(comparison, indent=1))
    write_result(
        args.output / "summary.json",
        "lm_eval_check",
        task={"name": TASK, "items": ITEMS, "seed": SEED, "folder": "task/"},
        server=f"neo-serve --model {args.model.name}",
        runs={"neo_serve": served, "transformers": direct},
        comparison=comparison,
    )
    ok = served["rc"] == 0 and direct["rc"] == 0
    return 0 if ok and not comparison.get("items_picked_differently") else 1


if __name__ == "__main__":
    raise SystemExit(main())
