import json

import pytest

from neo_sim.errors import NeoError
from neo_sim.profile import SCHEMA_VERSION, load_profile, save_profile


@pytest.fixture()
def profile_dict(t4_profile):
    return t4_profile.to_dict()


def write(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return path


def test_round_trip(tmp_path, t4_profile):
    path = save_profile(t4_profile, tmp_path / "x.json")
    again = load_profile(path)
    assert again.model == t4_profile.model and again.hardware == t4_profile.hardware
    assert again.samples == t4_profile.samples
    assert again.fits == t4_profile.fits
    assert again.provenance.kind == "derived"


def test_fit_is_recomputed_when_absent(tmp_path, profile_dict, t4_profile):
    del profile_dict["fit"]
    again = load_profile(write(tmp_path, profile_dict))
    for op, fit in t4_profile.fits.items():
        assert again.fits[op].bytes_per_s == pytest.approx(fit.bytes_per_s, rel=1e-3)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d["samples"].pop("cpu_decode_attn"), "samples.cpu_decode_attn"),
        (
            lambda d: d["samples"]["linear"]["seconds"].__setitem__(0, -1.0),
            "samples.linear.seconds",
        ),
        (lambda d: d["samples"]["linear"]["num_tokens"].reverse(), "samples.linear.num_tokens"),
        (
            lambda d: d["samples"]["gpu_decode_attn"]["seconds"].pop(),
            "samples.gpu_decode_attn.seconds",
        ),
        (lambda d: d["provenance"].__setitem__("kind", "guessed"), "provenance.kind"),
        (lambda d: d.pop("model"), "model"),
        (lambda d: d["model"].__setitem__("hidden_size", -4), "model"),
        (lambda d: d["hardware"]["gpu"].pop("memory_bytes"), "hardware"),
        (lambda d: d.__setitem__("schema_version", SCHEMA_VERSION + 1), "schema_version"),
        (lambda d: d["samples"]["launch"].__setitem__("seconds", "fast"), "samples.launch.seconds"),
    ],
)
def test_bad_profiles_fail_with_one_line_naming_file_and_field(
    tmp_path, profile_dict, mutate, field
):
    mutate(profile_dict)
    path = write(tmp_path, profile_dict)
    with pytest.raises(NeoError) as info:
        load_profile(path)
    message = str(info.value)
    assert str(path) in message and field in message and "\n" not in message


def test_future_schema_says_upgrade(tmp_path, profile_dict):
    profile_dict["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(NeoError, match="upgrade"):
        load_profile(write(tmp_path, profile_dict))


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(NeoError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(NeoError, match="no such profile"):
        load_profile(tmp_path / "missing.json")


def test_incompatible_model_dimensions(tmp_path, profile_dict):
    profile_dict["model"]["num_kv_heads"] = 7  # 32 heads are not a multiple of 7
    with pytest.raises(NeoError, match="num_kv_heads"):
        load_profile(write(tmp_path, profile_dict))


def test_shipped_derived_profiles_cite_every_efficiency_factor():
    # Issue 5: every number of a derived profile is sourced; efficiency factors are either
    # inside a cited measurement or labelled an assumption, and the shipped files carry it.
    import dataclasses
    import json
    from pathlib import Path

    from neo_sim.costmodel import EFFICIENCY_SOURCES, Efficiencies

    factors = {f.name for f in dataclasses.fields(Efficiencies) if f.name != "sources"}
    assert set(EFFICIENCY_SOURCES) == factors
    for name, text in EFFICIENCY_SOURCES.items():
        assert any(
            tag in text
            for tag in ("(assumption)", "[artifact]", "arXiv", "github.com", "issue", "measured")
        ), name
    shipped = sorted(Path(__file__).parents[2].joinpath("profiles").glob("*.json"))
    derived = [json.loads(p.read_text()) for p in shipped]
    derived = [d for d in derived if d["provenance"]["kind"] == "derived"]
    assert len(derived) == 8
    for d in derived:
        lines = [s for s in d["provenance"]["sources"] if s.startswith("efficiency ")]
        assert {line.split(":")[0].removeprefix("efficiency ") for line in lines} == factors


def test_a_rescaled_profile_scales_each_operator_inside_and_beyond_its_grid(t4_profile):
    from neo_sim.profiled import ProfiledCostModel

    base = ProfiledCostModel(t4_profile)
    slower = ProfiledCostModel(t4_profile.rescaled({"linear": 2.0, "cpu_decode_attn": 1.5}))
    top = t4_profile.samples["linear"].xs[-1]
    for tokens in (1, 37, int(top), int(4 * top)):  # on, between and beyond the grid
        assert slower.linear(tokens) == pytest.approx(2.0 * base.linear(tokens), rel=1e-12)
    assert slower.cpu_decode_attn(8, 8 * 300) == pytest.approx(
        1.5 * base.cpu_decode_attn(8, 8 * 300), rel=1e-12
    )
    assert slower.gpu_decode_attn(8, 8 * 300) == base.gpu_decode_attn(8, 8 * 300)  # no factor
