"""neo-profile: measure -> save -> load -> predict, `check`, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from neo_engine.config import LoadSettings
from neo_engine.profiler import main, measure
from neo_sim.profile import Provenance, load_profile, make_profile, save_profile
from neo_sim.profiled import Lookup, ProfiledCostModel

TINY_GRIDS = {
    "num_tokens": (1, 8, 32),
    "prompt_len": (16, 64),
    "num_seqs": (1, 4),
    "bytes": (4096, 65536),
    "batch": (1, 4),
    "context_len": (16, 64),
}


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    from neo_engine.local import probe_hardware

    device = torch.device("cpu")
    spec = LoadSettings("dummy:tiny").model_spec()
    samples, launch, fused_saving = measure(spec, device, TINY_GRIDS, repeats=1, passes=1)
    provenance = Provenance("measured", "2026-01-01", "test", "tiny grids")
    profile = make_profile(
        "test-tiny",
        probe_hardware(device),
        spec,
        provenance,
        samples,
        launch,
        fused_decode_saving=fused_saving,
    )
    return save_profile(profile, tmp_path_factory.mktemp("prof") / "tiny.json"), samples


def test_round_trip_predicts_the_measured_grid_exactly(tiny_profile):
    path, samples = tiny_profile
    profile = load_profile(path)
    cost = ProfiledCostModel(profile)
    for n, t in zip(samples["linear"].xs, samples["linear"].seconds):
        value, how = cost.explain("linear", n)
        assert how == Lookup.INTERPOLATED and value == pytest.approx(t, rel=1e-12)
    s = samples["cpu_decode_attn"]
    for b, row in zip(s.batch, s.seconds):
        for c, t in zip(s.context_len, row):
            assert cost.cpu_decode_attn(int(b), int(b * c)) == pytest.approx(t, rel=1e-9)
    assert all(t > 0 for t in samples["h2d"].seconds) and profile.launch_s > 0


def test_validate_reports_drift_since_profiling(tiny_profile, tmp_path):
    """A profile that recorded the reference kernel's time and the memory bandwidth (neo-profile
    does) gives validate's drift since profiling; one that did not says so."""
    import dataclasses

    from neo_engine.fidelity import since_profiling
    from neo_engine.opbench import reference_kernel

    path, _ = tiny_profile
    profile = load_profile(path)
    assert "not known" in since_profiling(profile, 0.2, 40.0)
    assert reference_kernel(profile.model, repeats=5)() > 0
    machine = {"reference_kernel_ms": 0.25, "read_gbs": 52.0}
    recorded = dataclasses.replace(
        profile, provenance=dataclasses.replace(profile.provenance, machine=machine)
    )
    again = save_profile(recorded, tmp_path / "with-reference.json")
    text = since_profiling(load_profile(again), 0.3, 33.0)
    assert "0.2500 to 0.3000 ms (+20%)" in text
    assert "bandwidth read 52.0 GB/s at profiling, 33.0 GB/s at the start of validate" in text


def test_neo_sim_accepts_a_measured_profile(tiny_profile, tmp_path):
    from neo_sim.cli import main as sim_main

    path, _ = tiny_profile
    assert (
        sim_main(
            [
                "run",
                "--hardware",
                str(path),
                "--num-requests",
                "20",
                "--input-len",
                "40",
                "--output-len",
                "8",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["completed"] == 20 and "profile test-tiny (measured" in summary["cost_model"]


def test_check_reports_error_per_operator(tiny_profile, capsys, tmp_path):
    path, _ = tiny_profile
    out_json = tmp_path / "check.json"
    assert (
        main(
            [
                "check",
                str(path),
                "--points",
                "2",
                "--passes",
                "1",
                "--repeats",
                "1",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "cpu_decode_attn" in printed and "noise floor" in printed
    rows = json.loads(out_json.read_text())["rows"]
    assert {r["op"] for r in rows} >= {"linear", "gpu_decode_attn", "cpu_decode_attn", "d2h"}
    assert all(r["mape"] >= 0 and r["grid_mape"] is not None for r in rows)


def test_check_on_another_model_scales(tiny_profile, capsys):
    path, _ = tiny_profile
    assert (
        main(
            [
                "check",
                str(path),
                "--model",
                "dummy:small",
                "--points",
                "1",
                "--passes",
                "1",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    assert "scaled from tiny" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["check", "/no/such/profile.json"], "no such profile"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "neo_engine.profiler", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_an_output_it_cannot_write_is_refused_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["--model", "dummy:tiny", "--quick", "--output", str(blocker / "p.json")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "cannot write the profile p.json there" in err and "expected ~" not in out


def test_shipped_profiles_load_and_are_labelled_derived():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.json"))
    kinds = {p.name: load_profile(p).provenance.kind for p in shipped}
    assert kinds["t4__llama-2-7b.json"] == "derived"
    assert kinds["h100x8__llama-3-70b.json"] == "derived"
    assert kinds["cpu-2core-vm__small.json"] == "measured"
    for name in ("a10g-g5.2xlarge", "a10g-g5.4xlarge", "a10g-g5.8xlarge", "a10g-g5.16xlarge"):
        assert kinds[f"{name}__llama-3-8b.json"] == "derived"


def test_lm_head_is_timed_with_the_sampling_it_covers(monkeypatch):
    """The `lm_head` operator covers the sampling of its logits (neo_sim.operators): the
    profiler adds the greedy sampling the engine runs after the forward pass, and the engine's
    iteration log counts it in the iteration, not in its unpriced host work."""
    from neo_engine import LLM, SamplingParams
    from neo_engine import engine as engine_module
    from neo_engine.opbench import InSituBench

    bench = InSituBench(LoadSettings("dummy:tiny").model_spec(), torch.device("cpu"), repeats=1)
    assert bench.time_sampling(4) > 0
    monkeypatch.setattr(InSituBench, "time_sampling", lambda self, n: 1.0)
    assert bench.time_lm_head(4) > 1.0
    bench.close()

    slow = 0.05
    real = engine_module.sample_rows

    def slow_sampling(*args):
        time.sleep(slow)
        return real(*args)

    monkeypatch.setattr(engine_module, "sample_rows", slow_sampling)
    llm = LLM("dummy:tiny", policy="gpu-only")
    llm.engine.keep_iteration_log = True
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    logs = llm.engine.iterations
    assert logs and all(it.duration_s >= slow and it.host_s < slow for it in logs)
    llm.engine.close()


def test_in_situ_layer_time_is_the_mean_over_the_layers_of_a_run(monkeypatch):
    """An iteration sums its layers, so a per-layer operator is what the layers of one run
    cost on average (one slow layer counts), and the median over runs of that."""
    from types import SimpleNamespace

    from neo_engine.opbench import InSituBench
    from neo_sim.lanes import Lane, Span, Task

    bench = InSituBench(LoadSettings("dummy:tiny").model_spec(), torch.device("cpu"), repeats=3)
    runs = iter([[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0], [50.0] * 4])
    executor = SimpleNamespace(
        run=lambda *args: SimpleNamespace(
            spans=[Span(Lane.GPU, Task.POST, 0.0, d, layer=i) for i, d in enumerate(next(runs))]
        )
    )
    monkeypatch.setattr(bench, "_executor_for", lambda blocks: executor)
    bench._capacity = 64  # what _executor_for would have sized
    # the first run is the warm-up; then per-run means 3.0, 2.0, 50.0 -> their median
    assert bench.decode(2, 16)[Task.POST] == 3.0


def test_the_fused_decode_saving_is_the_stages_sum_less_the_fused_layer(monkeypatch):
    """Per batch, the stages timed one by one (as the operators are) less the same plan's
    layer run in one call as the engine runs it; a least-squares line through the points;
    nothing where the engine does not fuse."""
    from neo_engine import opbench
    from neo_sim.lanes import Task

    bench = opbench.InSituBench(
        LoadSettings("dummy:tiny").model_spec(), torch.device("cpu"), repeats=1
    )
    stages = {Task.PRE: 1.0, Task.GPU_ATTN: 0.5, Task.POST: 1.5}
    monkeypatch.setattr(
        bench, "decode", lambda b, c: {t: v + 0.1 * b / 3 for t, v in stages.items()}
    )
    monkeypatch.setattr(bench, "fused_decode", lambda b, c: 2.0 + 0.05 * b)
    saving = opbench.measure_fused_decode_saving(bench, batches=(1, 4, 16), rounds=2)
    assert saving.fixed_s == pytest.approx(1.0) and saving.per_seq_s == pytest.approx(0.05)
    monkeypatch.setattr(bench, "fused_decode", lambda b, c: None)
    assert opbench.measure_fused_decode_saving(bench) is None
    bench.close()


def test_in_situ_runs_a_decode_plan_fused_only_when_asked():
    """The bench's executor keeps the engine's fused layers (where they apply) off, so that
    the operators' stages are timed one by one, and runs a decode plan fused for
    `fused_decode` alone: one per-layer time, its stages' spans absent."""
    from neo_engine.cpu_kernel import load_extension
    from neo_engine.opbench import InSituBench
    from neo_engine.weights import can_prepack
    from neo_sim.lanes import Task

    if load_extension() is None or not can_prepack(torch.float32, torch.device("cpu")):
        pytest.skip("no compiled host kernels or no oneDNN prepacking here")
    spec = LoadSettings("dummy:tiny", dtype="float32", kv_dtype="float32").model_spec()
    bench = InSituBench(spec, torch.device("cpu"), repeats=1)
    layer_s = bench.fused_decode(4, 16)
    assert layer_s is not None and layer_s > 0
    staged = bench.decode(4, 16)
    assert Task.LAYER not in staged and staged[Task.PRE] > 0 and staged[Task.POST] > 0
    bench.close()
    unpacked = InSituBench(spec, torch.device("cpu"), repeats=1, prepack=False)
    assert unpacked.fused_decode(4, 16) is None  # the engine fuses prepacked weights only
    unpacked.close()


def test_the_engines_host_overhead_is_read_from_its_decode_steps():
    """neo-profile reads the engine's own work per step (scheduling, bookkeeping,
    detokenizing) from a real engine's decode steps: some fixed time, growing with the batch."""
    from neo_engine.opbench import measure_host_overhead

    overhead = measure_host_overhead(LoadSettings("dummy:tiny"), batches=(1, 8), steps=4)
    assert overhead.fixed_s >= 0 and overhead.per_seq_s >= 0
    assert 0 < overhead.seconds(8) < 0.05


def test_untimed_work_is_the_step_outside_the_timed_tasks(monkeypatch):
    """The host overhead a profile measures is a step's time outside the operators it times:
    the host work between forward passes plus the forward pass's time no task's span covers
    (the sampling is the LM head operator's, so it is not counted)."""
    from neo_engine import LLM, SamplingParams
    from neo_engine import executor as executor_module
    from neo_sim.lanes import covered_s

    slow = 0.05
    real = executor_module.Executor._prepare

    def slow_prepare(self, *args, **kwargs):  # untimed work inside the forward pass
        time.sleep(slow)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(executor_module.Executor, "_prepare", slow_prepare)
    llm = LLM("dummy:tiny", policy="gpu-only")
    llm.engine.keep_iteration_log = True
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    for it in llm.engine.iterations:
        forward = it.duration_s - it.sampling_s - covered_s(it.spans)
        assert 0 < it.sampling_s < it.duration_s
        assert it.untimed_s >= it.host_s + slow * 0.9
        assert abs(it.untimed_s - (it.host_s + forward)) < 1e-9
    llm.engine.close()


def test_measure_samples_the_bandwidth_between_points():
    """The profile records the memory bandwidth its points were measured at (the median of
    samples taken between points): `measure` samples a trace it is given."""
    from neo_engine.bandwidth import BandwidthTrace, ReadProbe
    from neo_sim.grids import points
    from neo_sim.operators import SAMPLED

    spec = LoadSettings("dummy:tiny").model_spec()
    trace = BandwidthTrace(time.perf_counter, every_s=0.0, probe=ReadProbe(num_bytes=2**20))
    measure(spec, torch.device("cpu"), TINY_GRIDS, repeats=1, passes=1, bandwidth=trace)
    jobs = sum(len(list(points(TINY_GRIDS, op))) for op in SAMPLED)
    assert len(trace.samples) == jobs  # every_s=0: one sample before each point
    assert all(gbs > 0 for _, gbs in trace.samples)


def test_the_profiler_keeps_the_weights_as_the_engine_would():
    """`--no-prepack-weights` reaches the operator benches, so a profile measured with it
    prices an engine run with it (and records that in its engine build)."""
    from neo_engine.opbench import InSituBench
    from neo_engine.weights import PrepackedWeight, can_prepack

    spec = LoadSettings("dummy:tiny", dtype="float32").model_spec()
    if not can_prepack(torch.float32, torch.device("cpu")):
        pytest.skip("torch without oneDNN's prepacking ops")
    packed = InSituBench(spec, torch.device("cpu"), repeats=1)
    plain = InSituBench(spec, torch.device("cpu"), repeats=1, prepack=False)
    assert isinstance(packed.weights.layers[0].gate_up, PrepackedWeight)
    assert isinstance(plain.weights.layers[0].gate_up, torch.Tensor)
    assert plain.time_linear(8) > 0
    for bench in (packed, plain):
        bench.close()
