import json
import subprocess
import sys

import pytest

from neo_sim.cli import main


def test_plan_prints_each_step(capsys):
    assert (
        main(
            [
                "plan",
                "--hardware",
                "t4",
                "--model",
                "llama-2-7b",
                "--gpu-kv-blocks",
                "54",
                "--max-batch-tokens",
                "832",
                "--num-requests",
                "16",
                "--steps",
                "6",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("step ") >= 6 and "cost model: profile t4__llama-2-7b (derived" in out


def test_plan_writes_output(tmp_path):
    assert (
        main(
            [
                "plan",
                "--hardware",
                "a10g",
                "--model",
                "llama-3-8b",
                "--steps",
                "2",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    plans = json.loads((tmp_path / "plans.json").read_text())
    assert len(plans) == 2 and plans[0]["step"] == 1
    decodes = [d for sb in plans[1]["sub_batches"] for d in sb["gpu_decodes"]]
    assert decodes and all(set(d) == {"request_id", "context_len"} for d in decodes)


def test_cost_prints_json(capsys):
    assert (
        main(
            [
                "cost",
                "--hardware",
                "t4",
                "--model",
                "llama-2-7b",
                "--op",
                "cpu_decode_attn",
                "--sizes",
                "1024,8192",
                "--batch",
                "8",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["op"] == "cpu_decode_attn" and data["sizes"] == [1024, 8192]
    assert data["seconds"][1] > data["seconds"][0] > 0


def test_cost_reads_a_profile_file(tmp_path, t4_profile, capsys):
    from neo_sim.profile import save_profile

    path = save_profile(t4_profile, tmp_path / "t4.json")
    assert main(["cost", "--hardware", str(path), "--op", "linear", "--sizes", "64,100000"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["lookup"] == ["interpolated", "extrapolated"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["plan", "--hardware", "t5", "--model", "llama-2-7b"], "unknown hardware preset"),
        (["plan", "--hardware", "t4", "--model", "llama-9"], "unknown model"),
        (
            [
                "cost",
                "--hardware",
                "t4",
                "--model",
                "llama-2-7b",
                "--op",
                "linear",
                "--sizes",
                "a,b",
            ],
            "--sizes",
        ),
        (["cost", "--hardware", "missing.json", "--op", "linear"], "no such profile"),
        # A preset without --model names the models it ships profiles for, or says it has none.
        (["run", "--hardware", "h100"], "shipped profiles for h100: llama-2-7b, llama-3-8b"),
        (["run", "--hardware", "h100x2"], "no shipped profile for h100x2"),
        (
            ["compare", "--hardware", "t4", "--model", "llama-2-7b", "--policies", "neo,apex,neo"],
            "--policies names 'neo' twice",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "neo_sim.cli", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_argparse_rejects_nonpositive_sizes():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neo_sim.cli",
            "plan",
            "--hardware",
            "t4",
            "--model",
            "tiny",
            "--num-requests",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "must be >= 1" in proc.stderr


@pytest.fixture()
def bad_files(tmp_path, t4_profile):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)
    inf_trace = tmp_path / "inf.csv"
    inf_trace.write_text("num_prefill_tokens,num_decode_tokens,arrived_at\n10,5,inf\n")
    nan_fit = tmp_path / "nan.json"
    data = t4_profile.to_dict()
    data["fit"]["linear"]["bytes_per_s"] = float("nan")
    nan_fit.write_text(json.dumps(data))
    return {"garbage": garbage, "inf": inf_trace, "nan": nan_fit}


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--hardware", "{garbage}"], "not a text file (a profile is JSON)"),
        (["--hardware", "t4", "--model", "{garbage}"], "not a text file (an HF config"),
        (
            ["--hardware", "t4", "--model", "tiny", "--workload", "trace:{garbage}"],
            "a trace is CSV",
        ),
        (["--hardware", "t4", "--model", "tiny", "--workload", "trace:{inf}"], "finite time"),
        (["--hardware", "{nan}"], "fit.linear"),
        (
            ["--hardware", "t4", "--model", "llama-2-7b", "--policy", "gpu-only"]
            + ["--gpu-kv-blocks", "0", "--num-requests", "3"],
            "none of the 3 requests can ever run",
        ),
        (["--hardware", "t4", "--model", "tiny", "--num-requests", "100000000"], "GB of memory"),
        (  # an --output it cannot write in: said before the run, not after it
            ["--hardware", "t4", "--model", "tiny", "--output", "{garbage}/results"],
            "cannot write results there (Not a directory)",
        ),
    ],
)
def test_bad_files_and_flags_are_one_line_exit_2(bad_files, argv, needle, capsys):
    argv = [a.format(**bad_files) for a in argv]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("error:") == 1
