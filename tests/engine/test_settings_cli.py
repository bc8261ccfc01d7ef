"""The engine's tools take their flags from the same settings dataclasses as the simulator."""

from __future__ import annotations

import pytest

from neo_engine.config import ENGINE_KV, EngineConfig, LoadSettings
from neo_engine.profiler import CheckSettings, ProfileSettings
from neo_engine.profiler import build_parser as profile_parsers
from neo_engine.server import ServerSettings
from neo_engine.server import build_parser as serve_parser
from neo_engine.validate import FidelitySettings, add_arguments
from neo_sim import settings
from neo_sim.errors import NeoError
from neo_sim.scheduler import SchedulerConfig
from neo_sim.units import GB
from tests.sim.test_settings import assert_flags_match


def test_neo_serve_flags_are_engine_and_server_settings_with_their_defaults():
    parser = serve_parser()
    engine_names = set(settings.names(EngineConfig))
    server_names = set(settings.names(ServerSettings))
    ruled = {"max_batch_tokens"}  # the server works it out (test below)
    checked = assert_flags_match(parser, EngineConfig.of("m"), server_names | ruled | {"help"})
    checked += assert_flags_match(parser, ServerSettings(), engine_names | {"help"})
    assert checked >= 20
    args = parser.parse_args(["--model", "dummy:tiny", "--max-batch-tokens", "4096"])
    config = settings.from_args(EngineConfig, args)
    assert config == EngineConfig.of("dummy:tiny")
    assert config.scheduler == SchedulerConfig()  # the simulator's scheduler defaults
    assert config.kv == ENGINE_KV  # the one stated difference


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], 2048),  # dummy:tiny's own context, 2048, is vLLM's server budget too
        (["--max-model-len", "1000"], 2048),
        (["--max-model-len", "3000"], 3000),  # every prompt must fit one iteration
        (["--max-batch-tokens", "1024", "--max-model-len", "1024"], 1024),  # as given
    ],
)
def test_neo_serve_budget_unset_is_vllms_server_rule(flags, expected):
    from neo_engine.server import SERVING_BATCH_TOKENS, engine_config

    args = serve_parser().parse_args(["--model", "dummy:tiny", *flags])
    budget = engine_config(args).scheduler.max_batch_tokens
    assert SERVING_BATCH_TOKENS == 2048 and budget == expected
    assert "unset: max(max_model_len, 2048)" in " ".join(serve_parser().format_help().split())


def test_vllm_names_of_the_same_setting_are_accepted():
    """vLLM's max_num_batched_tokens is our max_batch_tokens (tokens per iteration): a vLLM
    user's keyword and flag work unchanged."""
    config = EngineConfig.of("dummy:tiny", max_num_batched_tokens=2048)
    assert config.scheduler.max_batch_tokens == 2048
    args = serve_parser().parse_args(["--model", "m", "--max-num-batched-tokens", "1024"])
    assert settings.from_args(EngineConfig, args).scheduler.max_batch_tokens == 1024
    assert "--max-num-batched-tokens" in serve_parser().format_help()


def test_neo_profile_and_validate_flags_match_their_settings():
    measure, check = profile_parsers()
    assert assert_flags_match(measure, ProfileSettings(LoadSettings("m")), {"help"}) >= 6
    assert assert_flags_match(check, CheckSettings("p"), {"help"}) >= 6
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert assert_flags_match(parser, FidelitySettings(), {"help"}) >= 15


def test_llm_keywords_are_flat_settings():
    config = EngineConfig.of("dummy:tiny", device="cpu", gpu_kv_blocks=8, max_num_seqs=3)
    assert config.load.device == "cpu" and config.scheduler.num_gpu_blocks == 8
    assert config.scheduler.max_num_seqs == 3
    with pytest.raises(NeoError, match="unknown setting 'max_seqs'"):
        EngineConfig.of("dummy:tiny", max_seqs=3)
    with pytest.raises(NeoError, match="unknown dtype"):
        EngineConfig.of("dummy:tiny", dtype="float8")


def test_engine_pools_follow_the_shared_formula_on_a_cpu_device():
    from neo_engine.engine import LLMEngine

    engine = LLMEngine(EngineConfig.of("dummy:tiny", max_model_len=256))
    block = 16 * engine.spec.kv_bytes_per_token
    assert engine.scheduler_config.num_gpu_blocks == int(ENGINE_KV.cpu_device_kv_gb * GB // block)
    assert engine.scheduler_config.num_cpu_blocks == int(ENGINE_KV.cpu_kv_gb * GB // block)
    engine.close()


def test_engine_refuses_a_token_budget_below_the_context():
    from neo_engine.engine import LLMEngine

    with pytest.raises(NeoError, match="max_batch_tokens"):
        LLMEngine(
            EngineConfig.of("dummy:tiny", max_model_len=512, max_batch_tokens=256, gpu_kv_blocks=64)
        )


def test_the_engine_refuses_a_renamed_policy_with_its_new_name():
    with pytest.raises(NeoError, match="policy 'adaptive-chunked' is now named 'adaptive'"):
        EngineConfig.of("dummy:tiny", policy="adaptive-chunked")
