"""One source per setting: flags are generated from the settings dataclasses, defaults match."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from neo_sim import settings
from neo_sim.capacity import DeviceMemory, KVCacheSettings, memory_of_hardware, resolve_pools
from neo_sim.cli import build_parser
from neo_sim.costmodel import RooflineCostModel
from neo_sim.errors import NeoError
from neo_sim.hardware import PRESETS
from neo_sim.model import PRESETS as MODELS
from neo_sim.runs import RunSpec
from neo_sim.scheduler import SchedulerConfig, make_policy, policy_config
from neo_sim.units import GB, GiB

# Flags of the commands themselves, not settings of a run (none of them repeats a setting).
COMMAND_FLAGS = {
    "help",
    "output",
    "trace_events",
    "policies",
    "rates",
    "grid",
    "executor",
    "workers",
    "dask_address",
    "steps",
    "op",
    "sizes",
    "batch",
    "hardware",  # sweep: a comma-separated list
    "run",
}


def value_at(obj, path: tuple[str, ...]):
    for name in path:
        obj = getattr(obj, name)
    return obj


def assert_flags_match(parser: argparse.ArgumentParser, defaults, extra: set[str]) -> int:
    """Every flag of `parser` is a setting of `defaults`' class with the same default, or one
    of the command's own flags. Returns how many settings were checked."""
    known = settings.names(type(defaults))
    checked = 0
    for action in parser._actions:
        if action.dest in extra:
            continue
        if action.dest in known:
            expected = value_at(defaults, known[action.dest])
            if action.required:
                continue
            assert action.default == expected, f"--{action.dest}: {action.default} != {expected}"
            checked += 1
        else:
            raise AssertionError(f"--{action.dest} is neither a setting nor a command flag")
    return checked


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["run", "compare", "sweep", "plan"])
def test_neo_sim_flags_are_the_run_settings_with_their_defaults(command):
    parser = subparsers(build_parser())[command]
    checked = assert_flags_match(parser, RunSpec.of(hardware="t4"), COMMAND_FLAGS)
    assert checked >= 20  # workload, scheduler and KV settings all came through


def test_the_cli_runs_the_documented_starvation_bound():
    """The first wave's CLI defaulted to 64 while the library said 256."""
    args = subparsers(build_parser())["run"].parse_args(["--hardware", "t4"])
    spec = settings.from_args(RunSpec, args)
    assert spec.scheduler.max_cpu_wait_steps == SchedulerConfig().max_cpu_wait_steps == 256
    assert spec == RunSpec.of(hardware="t4")


def test_a_hand_written_flag_would_be_caught():
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, RunSpec)
    parser.add_argument("--verbose-extra", default=1)
    with pytest.raises(AssertionError, match="neither a setting"):
        assert_flags_match(parser, RunSpec.of(hardware="t4"), COMMAND_FLAGS)
    drifted = argparse.ArgumentParser()
    settings.add_arguments(drifted, RunSpec)
    drifted.set_defaults(max_cpu_wait_steps=64)
    with pytest.raises(AssertionError, match="max_cpu_wait_steps"):
        assert_flags_match(drifted, RunSpec.of(hardware="t4"), COMMAND_FLAGS)


def test_flat_settings_route_to_their_groups_and_aliases_work():
    spec = RunSpec.of(hardware="t4", rate=2.0, gpu_kv_blocks=54, cpu_kv_gb=20, seed=3)
    assert spec.requests.rate == 2.0 and spec.requests.seed == 3
    assert spec.scheduler.num_gpu_blocks == 54 and spec.kv.cpu_kv_gb == 20
    changed = spec.with_(max_cpu_wait_steps=10, input_len=99)
    assert changed.scheduler.max_cpu_wait_steps == 10 and changed.requests.input_len == 99
    assert changed.scheduler.num_gpu_blocks == 54  # the rest is kept
    assert settings.build(RunSpec, changed.flat()) == changed
    with pytest.raises(NeoError, match="unknown setting 'max_cpu_wait'"):
        spec.with_(max_cpu_wait=1)


def test_bounds_are_checked_once_for_code_and_flags():
    with pytest.raises(NeoError, match="max_batch_size must be >= 1"):
        SchedulerConfig(max_batch_size=0)
    with pytest.raises(NeoError, match="rate must be > 0"):
        RunSpec.of(hardware="t4", rate=0.0)
    parser = subparsers(build_parser())["run"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--hardware", "t4", "--max-batch-size", "0"])


def test_flat_names_are_unique_across_groups():
    @dataclasses.dataclass(frozen=True)
    class Clash:
        scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
        block_size: int = settings.setting(16, "twice")

    with pytest.raises(TypeError, match="defined twice"):
        settings.names(Clash)


def test_one_capacity_formula_for_hardware_and_measured_memory():
    model, hw = MODELS["llama-2-7b"], PRESETS["t4"]
    config = resolve_pools(
        SchedulerConfig(), KVCacheSettings(), model, memory_of_hardware(hw, model)
    )
    assert config.num_gpu_blocks == 135  # the README's main job: 16 GB T4 minus 12.6 GiB
    assert config.num_cpu_blocks == int(
        hw.cpu.memory_bytes * 0.5 // (16 * model.kv_bytes_per_token)
    )
    # The same formula on a device's measured memory: 80 GB total, 14 GB already resident.
    measured = DeviceMemory(80e9, 14e9, 256 * GiB)
    config = resolve_pools(SchedulerConfig(), KVCacheSettings(cpu_kv_gb=10), model, measured)
    reserve = 4096 * (4 * 4096 + 2 * 11008) * 2 + 0.5 * GiB
    block = 16 * model.kv_bytes_per_token
    assert config.num_gpu_blocks == int((80e9 * 0.9 - 14e9 - reserve) // block)
    assert config.num_cpu_blocks == int(10 * GB // block)
    # Explicit block counts win; a CPU device has a KV space setting instead of memory.
    cpu_device = DeviceMemory(None, 1e9, 16 * GiB)
    kept = resolve_pools(SchedulerConfig(num_gpu_blocks=7), KVCacheSettings(), model, cpu_device)
    assert kept.num_gpu_blocks == 7
    stand_in = resolve_pools(SchedulerConfig(), KVCacheSettings(), model, cpu_device)
    assert stand_in.num_gpu_blocks == int(1.0 * GB // block)


def test_chunked_prefill_keeps_activations_for_its_chunk_only():
    """vllm-N's iterations hold at most N tokens, so its device pool keeps activations for N
    (vLLM profiles max_num_batched_tokens), not for max_batch_tokens: on the T4 at an
    8192-token budget that is the difference between one Llama-2-7B request of 1,000 tokens
    resident and more than two. A policy that prefills whole prompts refuses the setting."""
    model, hw = MODELS["llama-2-7b"], PRESETS["t4"]
    memory = memory_of_hardware(hw, model)
    base = SchedulerConfig(max_batch_tokens=8192)
    whole = resolve_pools(policy_config("gpu-only", base), KVCacheSettings(), model, memory)
    chunked = resolve_pools(policy_config("vllm-256", base), KVCacheSettings(), model, memory)
    per_token = (4 * 4096 + 2 * 11008) * 2  # activation bytes a token of an iteration holds
    block = 16 * model.kv_bytes_per_token
    extra = int((8192 - 256) * per_token // block)
    assert chunked.iteration_tokens == 256 and whole.iteration_tokens == 8192
    capped = policy_config("vllm-512", SchedulerConfig(max_batch_tokens=300))
    assert capped.iteration_tokens == 300  # a chunk above the cap does not lift it
    assert extra - 1 <= chunked.num_gpu_blocks - whole.num_gpu_blocks <= extra + 1
    assert chunked.num_gpu_blocks * 16 > 2 * 1050 > whole.num_gpu_blocks * 16
    with pytest.raises(NeoError, match="prefills whole prompts"):
        policy_config("symmetric", dataclasses.replace(base, chunked_prefill_tokens=512))


def test_adaptive_chunks_only_where_the_chunks_buy_kv():
    """adaptive takes 1024-token chunks where the smaller activation reserve enlarges
    the GPU pool by 5% or more (2x H100 + 70B at 8192 tokens: 1,988 -> 2,324 blocks; at 4096:
    2,180 -> 2,324, +6.6%) and prefills whole prompts where it would not (one H100 + 8B: +0.6%
    at 8192; an A10G + 8B at 4096: +4.4%; 2x H100 at 2048: +2.1%), since chunks admit prompts
    more slowly; building the policy keeps the choice."""
    cost = RooflineCostModel(MODELS["llama-3-8b"], PRESETS["h100"])

    def chunk(hw: str, model: str, budget: int) -> int:
        config = policy_config("adaptive", SchedulerConfig(max_batch_tokens=budget))
        m = MODELS[model]
        config = resolve_pools(config, KVCacheSettings(), m, memory_of_hardware(PRESETS[hw], m))
        return make_policy("adaptive", config, cost).config.chunked_prefill_tokens

    assert chunk("h100x2", "llama-3.1-70b", 8192) == 1024
    assert chunk("h100x2", "llama-3.1-70b", 4096) == 1024
    assert chunk("t4", "llama-2-7b", 8192) == 1024
    assert chunk("h100", "llama-3-8b", 8192) == 0
    assert chunk("a10g-g5.2xlarge", "llama-3-8b", 4096) == 0
    assert chunk("h100x2", "llama-3.1-70b", 2048) == 0
    with pytest.raises(NeoError, match="prefills whole"):
        policy_config("symmetric", SchedulerConfig(kv_chunk_tokens=512))


def test_a_setting_the_policy_fixes_cannot_be_asked_otherwise():
    """vllm-256 fixes its chunk and adaptive its conditional chunk: another value asked for is
    refused by name (it used to lose silently to the policy's), the policy's own value and the
    default pass, and the error names the variant that takes the setting as given."""
    chunked = SchedulerConfig(chunked_prefill_tokens=512)
    with pytest.raises(NeoError, match=r"vllm-256 fixes chunked_prefill_tokens=256 .*gpu-only"):
        policy_config("vllm-256", chunked)
    with pytest.raises(NeoError, match=r"adaptive fixes kv_chunk_tokens=1024 .*adaptive-whole"):
        policy_config("adaptive", SchedulerConfig(kv_chunk_tokens=512))
    assert (
        policy_config("vllm-256", SchedulerConfig(chunked_prefill_tokens=256)).iteration_tokens
        == 256
    )
    assert (
        policy_config("adaptive-whole", SchedulerConfig(kv_chunk_tokens=512)).kv_chunk_tokens == 512
    )
    assert policy_config("adaptive", chunked).chunked_prefill_tokens == 512  # not a fixed one
    with pytest.raises(NeoError, match="'adaptive-chunked' is now named 'adaptive'"):
        policy_config("adaptive-chunked", SchedulerConfig())


def test_a_renamed_policy_is_refused_with_its_new_name_wherever_it_is_named(capsys):
    """A former name (`RENAMED`) reaches every way of naming a policy: a run spec and the
    --policy flag say its new name, not only the list of choices."""
    with pytest.raises(NeoError, match="policy 'adaptive-chunked' is now named 'adaptive'"):
        RunSpec.of(hardware="t4", policy="adaptive-chunked")
    parser = subparsers(build_parser())["run"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--hardware", "t4", "--policy", "adaptive-chunked"])
    assert "'adaptive-chunked' is now named 'adaptive'" in capsys.readouterr().err
    with pytest.raises(NeoError, match="policy must be one of gpu-only, "):
        RunSpec.of(hardware="t4", policy="adaptive-chunky")


def test_tensor_parallel_gpus_each_keep_their_shard_of_the_mlp_activations():
    """Under tensor parallelism every GPU holds the hidden-size buffers of an iteration whole
    but only 1/tp of the MLP intermediates (as of the weights): on 2x H100 + Llama-3.1-70B at
    8192 tokens, each GPU keeps 8192 x intermediate_size x 2 bytes (~0.47 GB) less than a lone
    GPU would, and the pool over both GPUs is that much larger."""
    model, hw = MODELS["llama-3.1-70b"], PRESETS["h100x2"]
    config = SchedulerConfig(max_batch_tokens=8192)
    memory = memory_of_hardware(hw, model)
    split = resolve_pools(config, KVCacheSettings(), model, memory)
    unsharded = resolve_pools(
        config, KVCacheSettings(), model, dataclasses.replace(memory, tp=1)
    )  # the same bytes charged as one device: one reserve of the whole MLP
    per_gpu = (4 * model.hidden_size + model.intermediate_size) * model.dtype_bytes * 8192
    whole = (4 * model.hidden_size + 2 * model.intermediate_size) * model.dtype_bytes * 8192
    block = 16 * model.kv_bytes_per_token
    free = hw.total_gpu_memory_bytes * 0.9 - model.weight_bytes - 2 * (per_gpu + 0.5 * GiB)
    assert split.num_gpu_blocks == int(free // block)
    assert unsharded.num_gpu_blocks == int((free + 2 * per_gpu - whole + 0.5 * GiB) // block)


def test_a_model_that_cannot_fit_says_what_to_do():
    model, hw = MODELS["llama-2-70b"], PRESETS["t4"]
    with pytest.raises(NeoError, match="--gpu-kv-blocks"):
        resolve_pools(SchedulerConfig(), KVCacheSettings(), model, memory_of_hardware(hw, model))
