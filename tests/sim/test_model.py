import json

import pytest

from neo_sim.errors import NeoError
from neo_sim.model import PRESETS, ModelSpec, parse_model_arg, resolve_model

# Published parameter counts (model cards), in billions.
PUBLISHED_PARAMS_B = {
    "llama-2-7b": 6.74,
    "llama-2-13b": 13.0,
    "llama-2-70b": 69.0,
    "llama-3-8b": 8.03,
    "llama-3-70b": 70.6,
    "smollm2-135m": 0.135,
}


@pytest.mark.parametrize("name,billions", PUBLISHED_PARAMS_B.items())
def test_preset_parameter_counts_match_model_cards(name, billions):
    assert PRESETS[name].num_params / 1e9 == pytest.approx(billions, rel=0.01)


def test_test_models_have_the_promised_sizes():
    assert 1e6 < PRESETS["tiny"].num_params < 10e6
    assert 80e6 < PRESETS["small"].num_params < 130e6


def test_kv_bytes_per_token_llama2_7b():
    # 32 layers x 2 (K,V) x 4096 x 2 bytes = 512 KiB per token in fp16
    assert PRESETS["llama-2-7b"].kv_bytes_per_token == 32 * 2 * 4096 * 2


def test_gqa_shrinks_kv_not_q():
    m = PRESETS["llama-3-8b"]
    assert m.kv_size * 4 == m.q_size
    assert m.kv_bytes_per_token == 32 * 2 * 1024 * 2


def test_hf_config_round_trip(tmp_path):
    spec = PRESETS["llama-3.1-8b"]
    (tmp_path / "config.json").write_text(json.dumps(spec.to_hf_config()))
    again = ModelSpec.from_hf_config(tmp_path, name=spec.name)
    assert again == spec


def test_parse_model_arg_forms(tmp_path):
    assert parse_model_arg("tiny").spec is PRESETS["tiny"]
    ref = parse_model_arg("dummy:small")
    assert ref.dummy and ref.spec is PRESETS["small"] and ref.checkpoint_dir is None
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["tiny"].to_hf_config()))
    ref = parse_model_arg(str(tmp_path))
    assert ref.checkpoint_dir == tmp_path and ref.spec.hidden_size == 256
    assert resolve_model(str(tmp_path / "config.json")).num_layers == 4


@pytest.mark.parametrize("arg", ["llama-9", "dummy:nope", ""])
def test_unknown_model_is_a_clear_error(arg):
    with pytest.raises(NeoError, match="model"):
        parse_model_arg(arg)


def test_config_missing_field_names_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(NeoError, match="num_hidden_layers"):
        ModelSpec.from_hf_config(tmp_path)


def test_config_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(NeoError, match="not valid JSON"):
        ModelSpec.from_hf_config(tmp_path / "config.json")


def test_bad_dimensions_rejected():
    with pytest.raises(NeoError, match="num_kv_heads"):
        ModelSpec("bad", 2, 64, 4, 3, 128, 100)
    with pytest.raises(NeoError, match="num_layers"):
        ModelSpec("bad", 0, 64, 4, 4, 128, 100)
