"""`sample_rows`: a decode batch's tokens in batched ops, the same as row by row."""

from __future__ import annotations

import torch

from neo_engine.sampling import SamplingError, SamplingParams, sample, sample_rows


def test_rows_equal_one_by_one_and_a_bad_row_fails_alone():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=gen)
    logits[1, 7] = logits[1, 9] = 10.0  # a tie: the first index wins, as argmax of one row
    logits[3] = float("-inf")  # no finite logit
    greedy = SamplingParams(temperature=0)
    sampled = SamplingParams(temperature=0.8, top_k=5, seed=3)
    params = [greedy, greedy, sampled, greedy, sampled]
    generators = [None, None, torch.Generator().manual_seed(3), None]
    generators.append(torch.Generator().manual_seed(4))
    tokens = sample_rows(logits, params, generators)
    assert tokens[0] == int(logits[0].argmax()) and tokens[1] == 7
    assert isinstance(tokens[3], SamplingError)
    for row in (2, 4):
        again = torch.Generator().manual_seed(3 if row == 2 else 4)
        assert tokens[row] == sample(logits[row], params[row], again)
