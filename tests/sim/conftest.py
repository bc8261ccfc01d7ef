import pytest

from neo_sim.costmodel import RooflineCostModel
from neo_sim.derive import derive_profile
from neo_sim.hardware import PRESETS as HW
from neo_sim.model import PRESETS as MODELS

SMALL_GRIDS = {
    "num_tokens": (1, 4, 16, 64, 256, 1024, 4096),
    "prompt_len": (16, 64, 256, 1024, 4096),
    "num_seqs": (1, 8, 64, 512),
    "bytes": (4096, 2**16, 2**20, 2**24, 2**28),
    "batch": (1, 4, 16, 64),
    "context_len": (16, 128, 1024, 8192),
}


@pytest.fixture(scope="session")
def t4_llama2():
    return RooflineCostModel(MODELS["llama-2-7b"], HW["t4"])


@pytest.fixture(scope="session")
def t4_profile():
    return derive_profile(MODELS["llama-2-7b"], HW["t4"], grids=SMALL_GRIDS)
