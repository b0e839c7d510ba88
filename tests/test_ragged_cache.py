"""RaggedCache: rows read through holes (left padding, dropped slots, a recycled row) get the
states of a dense read of their own tokens, before and after compaction."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from autojudge.models.ragged_cache import RaggedCache, block_width


@pytest.fixture(scope="module")
def target(make_lm):
    return make_lm(tiny_model(11).double(), "t11")


def dense(target, ids: list[int]) -> torch.Tensor:
    return target.hidden_states(torch.tensor([ids]), target.new_cache())[0]  # [S, H]


def test_holes_are_invisible(target):
    cache = RaggedCache(target, 2)
    cache.read(torch.tensor([[0, 0, 1, 5], [1, 2, 3, 4]]), torch.tensor([[False, False, True, True], [True] * 4]))
    cache.read(torch.tensor([[6, 99], [5, 5]]), torch.ones(2, 2, dtype=torch.bool))
    cache.keep(torch.tensor([3, 6]))  # row 0 rejects its 99
    out = cache.read(torch.tensor([[0, 7, 8], [1, 2, 3]]), torch.tensor([[False, True, True], [True] * 3]))
    assert cache.lengths.tolist() == [5, 9]
    torch.testing.assert_close(out[0, 1:], dense(target, [1, 5, 6, 7, 8])[3:])
    torch.testing.assert_close(out[1], dense(target, [1, 2, 3, 4, 5, 5, 1, 2, 3])[6:])


def test_a_recycled_row_and_compaction_change_nothing_a_row_sees(target):
    """Row 1 idles (all holes), is emptied with keep_row and starts over; compact() then
    squeezes the holes out: both rows go on exactly as dense reads of their tokens."""
    cache = RaggedCache(target, 2)
    cache.read(torch.tensor([[1, 2, 3], [0, 0, 0]]), torch.tensor([[True] * 3, [False] * 3]))  # row 1 idle
    cache.read(torch.tensor([[4, 5], [7, 8]]), torch.ones(2, 2, dtype=torch.bool))
    cache.keep_row(1, 0)  # row 1 gives everything up, e.g. for the next prompt
    cache.keep_row(0, 4)  # row 0 drops its 5
    assert cache.lengths.tolist() == [4, 0] and cache.width == 5
    out = cache.read(torch.tensor([[0, 6], [9, 10]]), torch.tensor([[False, True], [True, True]]))
    torch.testing.assert_close(out[0, 1:], dense(target, [1, 2, 3, 4, 6])[4:])
    torch.testing.assert_close(out[1], dense(target, [9, 10]))
    assert not out.isnan().any()

    cache.compact()
    assert cache.width == 5 and cache.slots.sum(dim=1).tolist() == [5, 2]
    out = cache.read(torch.tensor([[11, 12], [13, 14]]), torch.ones(2, 2, dtype=torch.bool))
    torch.testing.assert_close(out[0], dense(target, [1, 2, 3, 4, 6, 11, 12])[5:])
    torch.testing.assert_close(out[1], dense(target, [9, 10, 13, 14])[2:])


def test_rows_leave_a_cache_cropped_to_no_slots(target):
    """Every row gives its tokens up (a draft cache whose rows were all replaced by new, unread
    ones), the cache crops to 0 slots, one row leaves: the others read on (the batcher met
    this: "Sizes of tensors must match", a 3-row input against a 4-row cache)."""
    cache = RaggedCache(target, 3)
    cache.read(torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.ones(3, 2, dtype=torch.bool))
    cache.keep(torch.tensor([0, 0, 0]))
    assert cache.width == 0
    cache.select(torch.tensor([0, 2]))
    out = cache.read(torch.tensor([[7, 8], [9, 10]]), torch.ones(2, 2, dtype=torch.bool))
    torch.testing.assert_close(out[0], dense(target, [7, 8]))
    torch.testing.assert_close(out[1], dense(target, [9, 10]))


def test_a_row_that_feeds_far_more_reads_its_excess_alone():
    assert block_width([64] + [1] * 15) == 1  # a prompt chunk beside decoding rows: 79 positions, not 1024
    assert block_width([5, 5, 5]) == 5 and block_width([7]) == 7
    assert block_width([20, 18, 19, 17]) == 20  # close lengths: one padded forward is cheaper
    assert block_width([40, 36, 1, 1]) == 1
    assert block_width([40, 0, 0, 0]) == 0  # a draft catching up one row: it reads alone, the others nothing


def test_a_block_where_only_one_row_reads_is_read_by_that_row_alone(target):
    """A draft catching up (``catch_up``): one row reads a long lag, the others nothing (the served
    batch failed every row with "IndexError: list index out of range" here)."""
    g = torch.Generator().manual_seed(4)
    lag = torch.randint(3, 400, (30,), generator=g).tolist()
    cache = RaggedCache(target, 3)
    cache.read(torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.ones(3, 2, dtype=torch.bool))
    out = cache.read(torch.tensor([[0] * 30, lag, [0] * 30]), torch.tensor([[False] * 30, [True] * 30, [False] * 30]))
    torch.testing.assert_close(out[1], dense(target, [3, 4, *lag])[2:])
    assert cache.lengths.tolist() == [2, 32, 2]
    out = cache.read(torch.tensor([[7], [8], [9]]), torch.ones(3, 1, dtype=torch.bool))
    torch.testing.assert_close(out[:, 0], torch.stack([dense(target, seq)[-1] for seq in
                                                       ([1, 2, 7], [3, 4, *lag, 8], [5, 6, 9])]))


def test_rows_read_alone_see_what_a_dense_read_of_their_tokens_sees(target):
    """A row's long prompt chunk (its first, then its second after decode cycles) read alone
    beside rows that feed one token: every row gets a dense read's states, and so do the
    cycles after, read together."""
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 400, (50,), generator=g).tolist()
    cache = RaggedCache(target, 3)
    cache.read(torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 0]]), torch.tensor([[True] * 3, [True] * 3, [False] * 3]))
    ids = torch.tensor([[0] * 24 + [7], [0] * 24 + [8], prompt[:25]])
    fed = torch.tensor([[False] * 24 + [True], [False] * 24 + [True], [True] * 25])
    out = cache.read(ids, fed)  # row 2 reads its first chunk alone
    assert cache.width == 3 + 24 + 1
    torch.testing.assert_close(out[2], dense(target, prompt[:25]))
    torch.testing.assert_close(out[0, -1], dense(target, [1, 2, 3, 7])[-1])
    cache.keep(torch.tensor([4, 3, 25]))  # row 1 drops its 8
    ids = torch.tensor([[0] * 24 + [9], [0] * 24 + [10], prompt[25:]])
    out = cache.read(ids, torch.tensor([[False] * 24 + [True], [False] * 24 + [True], [True] * 25]))
    torch.testing.assert_close(out[2], dense(target, prompt)[25:])
    torch.testing.assert_close(out[1, -1], dense(target, [4, 5, 6, 10])[-1])
    out = cache.read(torch.tensor([[11, 12], [13, 14], [15, 16]]), torch.ones(3, 2, dtype=torch.bool))
    torch.testing.assert_close(out[0], dense(target, [1, 2, 3, 7, 9, 11, 12])[-2:])
    torch.testing.assert_close(out[1], dense(target, [4, 5, 6, 10, 13, 14])[-2:])
    torch.testing.assert_close(out[2], dense(target, [*prompt, 15, 16])[-2:])


def test_gqa_attention_equals_transformers_sdpa_under_a_ragged_mask(target):
    """CPU models run "sdpa_gqa" (grouped KV heads kept grouped under a mask): same states
    as transformers' SDPA, which copies the KV heads first."""
    assert target.model.config._attn_implementation == "sdpa_gqa"
    ids = torch.tensor([[0, 0, 1, 5, 6], [1, 2, 3, 4, 5]])
    fed = torch.tensor([[False, False, True, True, True], [True] * 5])
    states = {}
    try:
        for impl in ("sdpa", "sdpa_gqa"):
            target.model.set_attn_implementation(impl)
            cache = RaggedCache(target, 2)
            cache.read(ids, fed)
            states[impl] = cache.read(torch.tensor([[7, 8], [9, 9]]), torch.ones(2, 2, dtype=torch.bool))
    finally:
        target.model.set_attn_implementation("sdpa_gqa")
    torch.testing.assert_close(states["sdpa_gqa"], states["sdpa"])
