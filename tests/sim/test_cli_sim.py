import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from neo_sim.cli import main

T4 = [
    "--hardware",
    "t4",
    "--model",
    "llama-2-7b",
    "--gpu-kv-blocks",
    "54",
    "--max-batch-tokens",
    "832",
]


def test_run_writes_summary_requests_plots_and_trace(tmp_path, capsys):
    out = tmp_path / "run"
    trace = tmp_path / "trace.json"
    assert (
        main(
            [
                "run",
                *T4,
                "--rate",
                "3",
                "--num-requests",
                "80",
                "--output",
                str(out),
                "--trace-events",
                str(trace),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "throughput (req/s)" in printed and "cost model: profile t4__llama-2-7b (derived" in printed
    )
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "throughput_req_s",
        "throughput_tok_s",
        "ttft_p50",
        "ttft_p90",
        "ttft_p99",
        "tpot_p50",
        "tpot_p90",
        "tpot_p99",
        "e2e_p50",
        "e2e_p90",
        "e2e_p99",
        "gpu_busy",
        "cpu_busy",
    ):
        assert isinstance(summary[key], float), key
    requests = pd.read_csv(out / "requests.csv")
    assert len(requests) == 80 and {"arrival_s", "first_token_s", "finish_s", "ran_on"} <= set(
        requests
    )
    assert (out / "timeline.html").stat().st_size > 1000 and (out / "plotly.min.js").exists()
    events = json.loads(trace.read_text())["traceEvents"]
    lanes = {e["cat"] for e in events if e["ph"] == "X"}
    assert {"gpu"} <= lanes and all(e["dur"] >= 0 for e in events if e["ph"] == "X")
    config = json.loads((out / "config.json").read_text())
    assert config["policy"] == "neo" and config["scheduler"]["num_gpu_blocks"] == 54
    assert config["scheduler"]["num_cpu_blocks"] > 0  # resolved from memory, not left unset


def test_compare_same_arrivals_and_ratios(tmp_path, capsys):
    assert (
        main(
            [
                "compare",
                *T4,
                "--policies",
                "gpu-only,neo",
                "--rate",
                "4",
                "--num-requests",
                "100",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "neo/gpu-only" in printed
    frame = pd.read_csv(tmp_path / "compare.csv")
    assert list(frame["policy"]) == ["gpu-only", "neo"]
    assert frame["throughput_req_s_ratio"].iloc[0] == 1.0
    a = pd.read_csv(tmp_path / "gpu-only" / "requests.csv")
    b = pd.read_csv(tmp_path / "neo" / "requests.csv")
    assert (a["arrival_s"] == b["arrival_s"]).all() and (a["prompt_len"] == b["prompt_len"]).all()
    assert (tmp_path / "compare.html").exists()


def test_compare_names_a_policy_whose_pool_differs(capsys):
    """Chunked prefill keeps activations for its chunk only, so its GPU pool is larger: the
    header says so instead of showing the first policy's pool for all."""
    args = ["compare", "--hardware", "t4", "--model", "llama-2-7b", "--num-requests", "10"]
    assert main([*args, "--policies", "gpu-only,vllm-256,neo"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    blocks = [int(n) for n in re.findall(r"(\d+)(?: blocks|\))", header)]
    assert header.startswith("KV pools: GPU 135 blocks (vllm-256: ") and "neo" not in header
    assert blocks[1] > blocks[0]


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_sweep_runs_the_grid(tmp_path, executor):
    if executor == "dask":
        pytest.importorskip("dask.distributed")
    grid = tmp_path / "grid.toml"
    grid.write_text('policy = ["gpu-only", "neo"]\nrate = [1.0, 4.0]\nnum_requests = 60\n')
    assert (
        main(
            [
                "sweep",
                *T4,
                "--grid",
                str(grid),
                "--executor",
                executor,
                "--workers",
                "2",
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    frame = pd.read_csv(tmp_path / "out" / "sweep.csv")
    assert len(frame) == 4
    assert sorted(zip(frame["policy"], frame["rate"])) == [
        ("gpu-only", 1.0),
        ("gpu-only", 4.0),
        ("neo", 1.0),
        ("neo", 4.0),
    ]
    assert (tmp_path / "out" / "load_latency.html").exists()


def test_trace_workload_from_shared_traces(tmp_path):
    from tests.sim.test_workload import CONV_TRACE

    if not CONV_TRACE.exists():
        pytest.skip("shared traces not present")
    assert (
        main(
            [
                "run",
                "--hardware",
                "a10g",
                "--model",
                "llama-3-8b",
                "--workload",
                f"trace:{CONV_TRACE}",
                "--num-requests",
                "100",
                "--rate",
                "2",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "requests.csv")) == 100


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--hardware", "t4", "--model", "llama-2-7b", "--rate", "0"], "must be > 0"),
        (
            [
                "run",
                "--hardware",
                "t4",
                "--model",
                "llama-2-7b",
                "--workload",
                "trace:/no/such.csv",
            ],
            "no such trace",
        ),
        (["run", "--hardware", "t4", "--model", "llama-2-7b", "--workload", "bogus"], "--workload"),
        (
            ["compare", "--hardware", "t4", "--model", "llama-2-7b", "--policies", "neo,fast"],
            "unknown policy",
        ),
        (
            ["sweep", "--hardware", "t4", "--model", "llama-2-7b", "--grid", "/no/grid.toml"],
            "no such grid",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "neo_sim.cli", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_trace_row_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("num_prefill_tokens,num_decode_tokens,arrived_at\n10,5,0\n10,x,1\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neo_sim.cli",
            "run",
            "--hardware",
            "t4",
            "--model",
            "llama-2-7b",
            "--workload",
            f"trace:{bad}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and f"{bad}:3: malformed row" in proc.stderr


def test_png_export_without_kaleido_warns_and_keeps_going(tmp_path, monkeypatch, caplog):
    """The PNG copy is optional (the `png` extra): without kaleido, no file, a warning that
    says how to get one, and no exception (the HTML is the figure of record)."""
    import sys

    import plotly.graph_objects as go

    from neo_sim import plots

    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]))
    with caplog.at_level("WARNING"):
        assert plots.save_png(fig, tmp_path / "map.png") is None
    assert not (tmp_path / "map.png").exists()
    assert "pip install -e .[png]" in caplog.text


def test_the_table_counts_rejected_requests_only_where_some_were(capsys):
    """A prompt over the per-iteration budget is rejected (a warning names the first): the
    table says how many, beside the completed ones, and leaves the row out where none were."""
    args = ["compare", *T4, "--num-requests", "40", "--policies", "gpu-only,neo"]
    assert main([*args, "--input-len", "800"]) == 0  # some prompts over 832 tokens
    lines = capsys.readouterr().out.splitlines()
    completed = next(line for line in lines if line.startswith("completed requests")).split()
    rejected = next(line for line in lines if line.startswith("rejected requests")).split()
    assert int(rejected[2]) > 0 and int(completed[2]) + int(rejected[2]) == 40
    assert rejected[2] == rejected[3] and rejected[4] == "1.00x"
    assert main([*args, "--input-len", "100"]) == 0
    assert "rejected requests" not in capsys.readouterr().out


def test_a_metric_a_run_does_not_define_reads_a_dash(capsys):
    """One-token outputs have no gap between tokens: TPOT is undefined (NaN in summary.json),
    and the table says "-", not "nan" and "nanx"."""
    args = ["compare", *T4, "--num-requests", "5", "--output-len", "1"]
    assert main([*args, "--policies", "gpu-only,neo"]) == 0
    out = capsys.readouterr().out
    tpot = next(line for line in out.splitlines() if line.startswith("TPOT p50"))
    assert tpot.split()[3:] == ["-", "-", "-"] and "nan" not in out
