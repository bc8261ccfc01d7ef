"""Benchmark: which drift probe tracks the engine's small decode steps on this machine.

`neo-sim validate` needs to tell a wrong cost model from a machine that ran slower than when it
was profiled. This runs the fidelity workload's engine (`dummy:small`, gpu-only, the profile
of this machine) in blocks for `--seconds`: each block times the reference kernel
(`opbench.reference_kernel`, cache-resident compute) and the memory read bandwidth
(`bandwidth.ReadProbe`), then serves 3 requests (64 prompt + 24 new tokens, one after the
other, batch 1) and compares its decode-only steps with the timing model's prediction on the
same plans. It reports, over the blocks, the correlation of measured / predicted with each
probe, and the measured / predicted ratio in the profiled bandwidth state (within 10% of the
bandwidth at profiling) and out of it.

Run: python -m benchmarks.bandwidth_drift [--seconds 240] [--profile P]
Writes benchmarks/results/bandwidth_drift.json with the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import RESULTS, write_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=240.0, help="how long to sample")
    p.add_argument(
        "--profile", help="profile to predict with; unset: this machine's (as neo-sim validate)"
    )
    p.add_argument("--output", type=Path, default=RESULTS / "bandwidth_drift.json")
    args = p.parse_args(argv)

    from neo_engine.bandwidth import ReadProbe, in_state
    from neo_engine.fidelity import (
        STATE_TOLERANCE,
        profile_of_this_machine,
        warm_up,
        workload_engine,
    )
    from neo_engine.opbench import reference_kernel
    from neo_engine.sampling import SamplingParams
    from neo_engine.validate import FidelitySettings
    from neo_sim.profile import load_profile
    from neo_sim.profiled import ProfiledCostModel
    from neo_sim.timing import TimingModel

    settings = FidelitySettings()
    profile_path = profile_of_this_machine(args.profile, settings.model)
    profile = load_profile(profile_path)
    engine = workload_engine(settings, "gpu-only", profile_path)
    warm_up(engine, settings.requests)
    cost = ProfiledCostModel(profile, engine.spec)
    timing = TimingModel(cost, engine.scheduler_config.block_size, lanes_share_compute=True)
    reference, probe = reference_kernel(profile.model), ReadProbe()
    prompt = list(range(1, settings.requests.input_len + 1))
    params = SamplingParams(max_tokens=settings.requests.output_len, temperature=0, ignore_eos=True)
    blocks = []
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        reference_ms, read_gbs = reference(), probe.read_gbs()
        first = len(engine.iterations)
        for _ in range(3):
            engine.add_request(prompt, params)
            while engine.has_unfinished():
                engine.step()
        decodes = [it for it in engine.iterations[first:] if not it.plan.prefills]
        measured = sum(it.duration_s + it.host_s for it in decodes)
        predicted = sum(timing.run(it.plan).duration_s for it in decodes)
        blocks.append(
            {
                "t_s": round(time.perf_counter() - started, 2),
                "reference_kernel_ms": reference_ms,
                "read_gbs": read_gbs,
                "measured_over_predicted": measured / predicted,
            }
        )
    engine.close()

    ratio = np.array([b["measured_over_predicted"] for b in blocks])
    ref = np.array([b["reference_kernel_ms"] for b in blocks])
    gbs = np.array([b["read_gbs"] for b in blocks])
    profile_gbs = profile.provenance.machine.get("read_gbs")
    states = {}
    if profile_gbs:
        near = np.array(in_state(gbs.tolist(), profile_gbs, STATE_TOLERANCE))
        for name, mask in (("profiled_state", near), ("other_state", ~near)):
            states[name] = {
                "blocks": int(mask.sum()),
                "median_read_gbs": float(np.median(gbs[mask])) if mask.any() else None,
                "median_measured_over_predicted": float(np.median(ratio[mask]))
                if mask.any()
                else None,
            }

    def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
        """Pearson's r, where there are enough blocks for one (None otherwise)."""
        return float(np.corrcoef(a, b)[0, 1]) if len(a) >= 3 else None

    summary = {
        "blocks": len(blocks),
        "correlation_with_reference_kernel_ms": correlation(ratio, ref),
        "correlation_with_inverse_read_gbs": correlation(ratio, 1 / gbs),
        "read_gbs_range": [float(gbs.min()), float(gbs.max())],
        "reference_kernel_ms_range": [float(ref.min()), float(ref.max())],
        "measured_over_predicted_range": [float(ratio.min()), float(ratio.max())],
        "measured_over_predicted_median": statistics.median(ratio.tolist()),
        "profile": profile_path.name,
        "profile_read_gbs": profile_gbs,
        "by_state": states,
    }
    print({k: v for k, v in summary.items() if k != "by_state"})
    for name, state in states.items():
        print(name, state)
    write_result(args.output, "bandwidth_drift", summary=summary, blocks=blocks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
