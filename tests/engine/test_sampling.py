"""`sample_rows`: a decode batch's tokens in batched ops, the same as row by row, on the
device that computed the logits (NEO_TEST_DEVICE: the CPU here, CUDA on a lent GPU)."""

from __future__ import annotations

import pytest
import torch

from neo_engine.sampling import (
    SamplingError,
    SamplingParams,
    _inverse_cdf,
    blocked_tokens,
    penalized,
    sample,
    sample_rows,
)
from neo_sim.errors import NeoError
from tests.engine.conftest import DEVICE


def test_rows_equal_one_by_one_and_a_bad_row_fails_alone():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=gen)
    logits[1, 7] = logits[1, 9] = 10.0  # a tie: the first index wins, as argmax of one row
    logits[3] = float("-inf")  # no finite logit
    logits = logits.to(DEVICE)
    greedy = SamplingParams(temperature=0)
    sampled = SamplingParams(temperature=0.8, top_k=5, seed=3)
    params = [greedy, greedy, sampled, greedy, sampled]
    generators = [None, None, torch.Generator().manual_seed(3), None]
    generators.append(torch.Generator().manual_seed(4))
    tokens = sample_rows(logits, params, generators)
    assert tokens[0] == int(logits[0].argmax()) and tokens[1] == 7
    assert isinstance(tokens[3], SamplingError)
    masked = logits[:1].clone()
    masked[0, :40] = float("-inf")  # masked entries are fine, a NaN or +inf is not
    broken_nan, broken_inf = masked.clone(), masked.clone()
    broken_nan[0, 45], broken_inf[0, 45] = float("nan"), float("inf")
    rows = torch.cat([masked, broken_nan, broken_inf])
    checked = sample_rows(rows, [greedy, greedy, sampled], [None, None, None])
    assert checked[0] == 40 + int(logits[0, 40:].argmax())
    assert all(isinstance(t, SamplingError) for t in checked[1:])
    for row in (2, 4):
        again = torch.Generator().manual_seed(3 if row == 2 else 4)
        assert tokens[row] == sample(logits[row], params[row], again)


def test_sampled_rows_follow_their_distribution_and_never_pick_a_filtered_token():
    """Batched sampling (one uniform draw per row through the row's cumulative distribution)
    draws each token with its softmax probability, honours temperature and top-k / top-p,
    and a seeded row gives the same token alone or in any batch."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = torch.log(probs).expand(20_000, -1).to(DEVICE, copy=True)  # the last: -inf
    params = [SamplingParams(temperature=1.0)] * len(logits)
    tokens = torch.tensor(sample_rows(logits, params, [None] * len(logits)))
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert torch.allclose(freq, probs.double(), atol=0.012), freq  # ~4 standard errors
    hot = [SamplingParams(temperature=2.0)] * len(logits)
    freq2 = torch.bincount(torch.tensor(sample_rows(logits, hot, [None] * len(logits))))
    expected = torch.softmax(torch.log(probs.double()) / 2.0, dim=-1)
    assert torch.allclose(freq2.double() / len(logits), expected[: len(freq2)], atol=0.012)
    top2 = [SamplingParams(temperature=1.0, top_k=2)] * 2000
    assert set(sample_rows(logits[:2000], top2, [None] * 2000)) == {2, 3}
    nucleus = [SamplingParams(temperature=1.0, top_p=0.5)] * 2000  # keeps 0.4 and 0.3
    assert set(sample_rows(logits[:2000], nucleus, [None] * 2000)) == {2, 3}
    seeded = SamplingParams(temperature=1.0, seed=11)
    alone = sample_rows(logits[:1], [seeded], [torch.Generator().manual_seed(11)])[0]
    mixed = sample_rows(
        logits[:3], [params[0], seeded, params[0]], [None, torch.Generator().manual_seed(11), None]
    )
    assert mixed[1] == alone


def test_the_two_level_inverse_cdf_picks_what_one_full_cumulative_sum_picks():
    """`_inverse_cdf` (float32 block sums, then a sum inside the block) picks what a full
    float64 cumulative sum picks, with a vocabulary that is not a multiple of the block
    (padding), zero weights (filtered tokens), draws at the ends of [0, 1) and unusable rows;
    a draw within float32 rounding of a block boundary may land on the other side of it,
    never on a zero weight, never further away."""
    gen = torch.Generator().manual_seed(5)
    vocab = 1000  # 3 blocks of 256 and a padded fourth
    weights = torch.rand(64, vocab, generator=gen)
    weights[weights < 0.6] = 0.0  # most entries filtered
    weights[7, :] = 0.0
    weights[7, 999] = 2.0  # the only token: the padded block's last real entry
    weights[9, 300] = float("nan")
    weights[11, 768:] = 0.0  # the last block holds no weight
    cdf = weights.double().cumsum(dim=-1)
    draws = torch.rand(64, dtype=torch.float64, generator=gen)
    draws[0], draws[1], draws[2] = 0.0, 1 - 2**-52, 0.5
    draws[11] = 1 - 2**-53  # may round draw * total up to the total
    for row, block in ((3, 1), (4, 2), (5, 1)):  # a draw exactly at a block boundary
        draws[row] = cdf[row, block * 256 - 1] / cdf[row, -1]
    chosen, usable = _inverse_cdf(weights.to(DEVICE), draws.to(DEVICE))
    expected = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).view(-1)
    tolerance = 2**-16  # of the total: float32 block sums of 256 entries, summed over blocks
    for row in range(64):
        if row == 9:
            assert not usable[row]
            continue
        assert usable[row] and weights[row, chosen[row]] > 0
        want = min(int(expected[row]), int(torch.nonzero(weights[row])[-1]))
        if chosen[row] != want:
            low, high = sorted((chosen[row], want))
            assert low // 256 != high // 256, "a miss inside a block"
            crossed = (high // 256) * 256 - 1  # the boundary between them
            gap = abs(float(cdf[row, crossed]) - float(draws[row] * cdf[row, -1]))
            assert gap <= tolerance * float(cdf[row, -1])
            nonzero = torch.nonzero(weights[row, low + 1 : high]).numel()
            assert nonzero == 0, "it skipped a token with weight"
    assert chosen[7] == 999
    assert chosen[11] < 768


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_greedy_rows_are_torch_argmax_first_maximum(compiled, monkeypatch):
    """Greedy tokens are torch.argmax's (the first maximal value) on logits full of ties, in
    every row, whether some rows are sampled or unusable; with the compiled search and with
    torch's argmax (no compiled module)."""
    from neo_engine import cpu_kernel, sampling

    if compiled and (DEVICE != "cpu" or cpu_kernel.load_extension() is None):
        pytest.skip("the compiled search reads logits on the CPU, and needs the host kernels")
    if not compiled:
        monkeypatch.setattr(sampling, "greedy_tokens", lambda logits, maxes: None)
    generator = torch.Generator().manual_seed(3)
    for batch, vocab in [(1, 5), (7, 33), (64, 49152), (3, 100_003)]:
        logits = torch.randint(-4, 3, (batch, vocab), generator=generator).float().to(DEVICE)
        logits[:, -1] = 2.0  # a tie with an earlier maximum, at the very end of the row
        want = logits.argmax(dim=-1).tolist()
        greedy = SamplingParams(temperature=0)
        assert sample_rows(logits, [greedy] * batch, [None] * batch) == want
        if batch < 3:
            continue
        logits[1] = float("-inf")  # unusable: fails alone
        params = [greedy] * batch
        params[2] = SamplingParams(temperature=1.0, seed=1)  # sampled, not greedy
        tokens = sample_rows(logits, params, [None] * batch)
        assert isinstance(tokens[1], SamplingError)
        assert [t for i, t in enumerate(tokens) if i not in (1, 2)] == [
            w for i, w in enumerate(want) if i not in (1, 2)
        ]


def test_penalties_and_bias_as_vllm_applies_them():
    """Repetition (prompt and output tokens: positive logits divided, negative multiplied),
    then frequency (per occurrence in the output) and presence (once), then the bias; a row
    without any is left as it was, and logits without any are returned as they are."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]], device=DEVICE)
    plain = SamplingParams()
    assert penalized(logits, [plain, plain], [([0], 1), ([1], 1)]) is logits
    p = SamplingParams(
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logit_bias={4: -10.0},
    )
    # prompt [0, 1], output [3, 3, 1]
    got = penalized(logits, [p, plain], [([0, 1, 3, 3, 1], 2), ([1], 1)])
    expected = torch.tensor(
        [
            [2.0 / 2, -1.0 * 2 - 0.5 - 0.25, 0.5, 3.0 / 2 - 2 * 0.5 - 0.25, 1.0 - 10.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    assert torch.equal(got.cpu(), expected) and logits[0, 0] == 2.0  # the raw logits stay


@pytest.mark.parametrize(
    "field,value",
    [
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("repetition_penalty", 0.0),
        ("logit_bias", {3: 101.0}),
        ("logit_bias", {-1: 1.0}),
        ("min_p", 1.5),
        ("min_tokens", -1),
        ("allowed_token_ids", []),
        ("allowed_token_ids", [3, -2]),
        ("truncate_prompt_tokens", 0),
        ("bad_words", [" "]),
    ],
)
def test_penalties_out_of_range_are_refused(field, value):
    with pytest.raises(NeoError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_and_bad_words_block_tokens_and_allowed_ids_mask_the_rest():
    """While the output is shorter than min_tokens, EOS (unless ignored) and the stop tokens
    are blocked; from then on they are back. A bad word's last token is blocked where its
    other tokens end the output (a one-token word always). allowed_token_ids leaves only those
    tokens. Blocked tokens are at -inf in the logits sampled from."""
    p = SamplingParams(min_tokens=2, stop_token_ids=(4,))
    assert blocked_tokens(p, [9, 9, 1], 2, eos_token_id=5) == [4, 5]  # one output token
    assert blocked_tokens(p, [9, 9, 1, 2], 2, eos_token_id=5) == []
    keep_eos = SamplingParams(min_tokens=2, ignore_eos=True)
    assert blocked_tokens(keep_eos, [9], 1, eos_token_id=5) == []
    words = ((3,), (1, 2, 0))  # one token, and three whose first two must end the output
    assert blocked_tokens(SamplingParams(), [1, 2], 0, None, words) == [3, 0]
    assert blocked_tokens(SamplingParams(), [1, 2], 1, None, words) == [3]  # 1 is the prompt
    assert blocked_tokens(SamplingParams(), [1, 2, 4], 0, None, words) == [3]
    logits = torch.zeros(1, 6, device=DEVICE)
    plain = SamplingParams()
    assert penalized(logits, [plain], [([9], 1)], [[]]) is logits
    inf = float("-inf")
    early = penalized(logits, [p], [([9, 9, 1], 2)], [[4, 5]])
    assert early[0].tolist() == [0.0, 0.0, 0.0, 0.0, inf, inf]
    only = SamplingParams(allowed_token_ids=[1, 3], logit_bias={0: 5.0, 3: 1.0})
    got = penalized(logits, [only], [([9], 1)])[0].tolist()
    assert got == [inf, 0.0, inf, 1.0, inf, inf]  # a bias cannot bring a token back


def test_min_p_keeps_the_tokens_at_least_min_p_times_as_likely_as_the_likeliest():
    """Probabilities 0.5, 0.3, 0.15, 0.05 with min_p 0.25: the floor is 0.125, so only the
    first three are ever drawn; min_p 0.7 leaves the likeliest alone (0.3 < 0.35)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs).expand(3000, -1).to(DEVICE, copy=True)
    some = [SamplingParams(temperature=1.0, min_p=0.25)] * len(logits)
    assert set(sample_rows(logits, some, [None] * len(logits))) == {0, 1, 2}
    strict = [SamplingParams(temperature=1.0, min_p=0.7)] * 200
    assert set(sample_rows(logits[:200], strict, [None] * 200)) == {0}
