"""The operator registry drives the cost-model interface, the profile schema, the derived
grids and `neo-sim cost`."""

from __future__ import annotations

import json

import pytest

from neo_sim.cli import main
from neo_sim.costmodel import RooflineCostModel
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS
from neo_sim.operators import OPERATORS, SAMPLED
from neo_sim.opwork import work
from neo_sim.profile import profile_from_dict


def test_a_cost_model_with_arguments_out_of_order_is_refused():
    """The first wave's two decode attentions took their arguments in opposite orders."""

    with pytest.raises(TypeError, match=r"gpu_decode_attn must take \('batch', 'total_tokens'\)"):

        class Swapped(RooflineCostModel):  # checked when the class is defined
            def gpu_decode_attn(self, total_tokens: int, batch: int) -> float:  # wrong order
                return 0.0

    with pytest.raises(TypeError, match="launch must take no arguments"):

        class Method(RooflineCostModel):
            def launch(self) -> float:  # a method where the registry says property
                return 0.0


def test_the_interface_declares_exactly_the_registered_operators():
    from neo_sim.costmodel import CostModel

    assert set(CostModel.__abstractmethods__) == set(OPERATORS)


def test_every_operator_has_its_work_and_round_trips_its_axes():
    model = MODELS["llama-2-7b"]
    for op in SAMPLED:
        args = (4, 4096) if len(op.args) == 2 else (256,)
        assert op.from_axes(*op.to_axes(*args)) == pytest.approx(args)
        w = work(op.name, model, *args)
        assert w.flops >= 0 and w.num_bytes > 0


def test_derived_profiles_store_every_sampled_operator_under_its_axes(t4_profile):
    data = t4_profile.to_dict()
    for op in SAMPLED:
        for axis in op.axes:
            assert axis in data["samples"][op.name]
        assert op.name in data["fit"]
    assert "launch" in data["samples"]
    del data["samples"]["lm_head"]
    with pytest.raises(Exception, match="samples.lm_head"):
        profile_from_dict(data, "x.json")


@pytest.mark.parametrize("name", list(OPERATORS))
def test_neo_sim_cost_prints_every_operator(name, capsys):
    assert main(["cost", "--hardware", "t4", "--model", "llama-2-7b", "--op", name]) == 0
    out = json.loads(capsys.readouterr().out)
    cost = RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])
    assert out["args"] == list(OPERATORS[name].args) and len(out["seconds"]) == 4
    if name == "launch":
        assert out["seconds"] == [cost.launch] * 4
    assert all(t >= 0 for t in out["seconds"])
