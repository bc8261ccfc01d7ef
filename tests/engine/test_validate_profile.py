"""`neo-sim validate` simulates with a profile of the machine it runs on, never a committed
profile measured elsewhere: it reuses one measured here, or measures one and caches it."""

from __future__ import annotations

import json

from neo_engine import fidelity
from neo_engine.validate import SHIPPED_PROFILE


def test_a_profile_is_measured_once_per_machine_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shipped = json.loads((fidelity.REPO / SHIPPED_PROFILE).read_text())
    elsewhere = {**shipped["provenance"]["machine"], "cpu": "some other CPU"}
    shipped["provenance"]["machine"] = elsewhere
    monkeypatch.setattr(fidelity, "SHIPPED_PROFILE", str(tmp_path / "shipped.json"))
    (tmp_path / "shipped.json").write_text(json.dumps(shipped))
    calls = []

    def measure(argv):  # stands in for neo-profile: this machine's facts, the same samples
        calls.append(argv)
        out = argv[argv.index("--output") + 1]
        machine = fidelity.this_engine_machine()  # as neo-profile records it
        here = {**shipped, "provenance": {**shipped["provenance"], "machine": machine}}
        with open(out, "w") as f:
            json.dump(here, f)

    first = fidelity.profile_of_this_machine(None, "dummy:small", measure)
    assert len(calls) == 1 and first.parent == tmp_path / "neo" / "profiles"
    again = fidelity.profile_of_this_machine(None, "dummy:small", measure)
    assert again == first and len(calls) == 1


def test_a_requested_profile_from_elsewhere_is_used_with_a_warning(tmp_path, capsys):
    path = tmp_path / "p.json"
    data = json.loads((fidelity.REPO / SHIPPED_PROFILE).read_text())
    data["provenance"]["machine"]["cpu"] = "some other CPU"
    path.write_text(json.dumps(data))
    assert fidelity.profile_of_this_machine(str(path), "dummy:small") == path
    assert "measured on another machine" in capsys.readouterr().err
