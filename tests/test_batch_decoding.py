"""The batched loop gives every row exactly what the batch-1 loop gives it (float64 models, so
no rounding can flip a greedy choice), in every mode, with ragged prompts and endings."""

from __future__ import annotations

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge import Judge, JudgeMetadata

# Ragged on purpose: lengths 3..12, so prefill and every later block carry holes.
PROMPTS = [[1, 504, 3458, 314, 253, 1345, 28, 288], [1, 42, 977], [1, 9, 8, 7, 6, 5, 4, 3, 2000, 31, 77, 12],
           [1, 3000, 25, 911, 5], [1, 504, 3458, 314, 253, 1345, 28, 289]]


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(11).double()
    return make_lm(target, "t11"), make_lm(perturbed(target, 0.08, 11), "d11")


def _judge(target, draft, layout="draft+target", threshold=0.5):
    torch.manual_seed(5)
    scalars = SCALAR_FEATURES if layout.endswith("+scalars") else ()  # "...+scalars": every scalar feature too
    meta = JudgeMetadata(target_model=target.name, target_hidden_size=target.hidden_size,
                         draft_model=draft.name, draft_hidden_size=draft.hidden_size,
                         feature_layout=layout.removesuffix("+scalars"), threshold=threshold,
                         scalar_features=scalars)
    return Judge(weight=torch.randn(meta.num_features) * 0.3, bias=0.0, meta=meta)


CASES = [  # (config, judge feature layout)
    (DecodeConfig(mode="target", max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="lossless", window=1, max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="lossless", window=4, max_new_tokens=31), "draft+target"),
    (DecodeConfig(mode="lossless", window=7, max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="topk", window=4, top_k=3, max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="judge", window=4, max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="judge", window=5, threshold=0.3, max_new_tokens=30), "draft+target"),
    (DecodeConfig(mode="judge", window=4, max_new_tokens=30), "target"),
    (DecodeConfig(mode="judge", window=4, max_new_tokens=31), "draft+target+scalars"),
]


@pytest.mark.parametrize("config, layout", CASES,
                         ids=lambda c: f"{c.mode}-W{c.window}-{c.max_new_tokens}" if isinstance(c, DecodeConfig) else c)
def test_every_row_equals_the_batch1_decoder(pair, config, layout):
    """Tokens, text, finish reason and per-row metrics, including rows cut by their budget
    in the middle of a window (max_new_tokens 31 with W=4)."""
    target, draft = pair
    decoder = SpeculativeDecoder(target, draft, _judge(target, draft, layout))
    batched = decoder.generate_batch(PROMPTS, config)
    assert len(batched) == len(PROMPTS)
    mismatches = rejected = 0
    for prompt, got in zip(PROMPTS, batched):
        want = decoder.generate(prompt, config)
        assert got.token_ids == want.token_ids
        assert got.text == want.text and got.finish_reason == want.finish_reason
        for key in ("num_generated_tokens", "num_target_calls", "num_draft_tokens", "num_accepted_tokens",
                    "num_accepted_mismatches", "num_accepted_tokens_per_pos"):
            assert getattr(got.metrics, key) == getattr(want.metrics, key), key
        mismatches += got.metrics.num_accepted_mismatches
        rejected += got.metrics.num_draft_tokens - got.metrics.num_accepted_tokens
    if config.mode in ("topk", "judge"):
        assert mismatches > 0 and rejected > 0  # the rule accepted some mismatches and rejected others


def test_rows_end_at_eos_and_stop_strings_and_leave_the_batch(pair):
    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    free = decoder.generate(PROMPTS[0], DecodeConfig(mode="target", max_new_tokens=30))
    eos = frozenset({free.token_ids[6]})  # row 0 ends at its 7th token; others go on (or not)
    decoder.backend.eos_token_ids = eos
    stop = decoder.backend.tokenizer.decode(free.token_ids[10:12])
    for config in (DecodeConfig(mode="lossless", window=4, max_new_tokens=30),
                   DecodeConfig(mode="lossless", window=3, max_new_tokens=30, stop=(stop,))):
        batched = decoder.generate_batch(PROMPTS, config)
        wanted = [decoder.generate(p, config) for p in PROMPTS]
        assert [r.token_ids for r in batched] == [r.token_ids for r in wanted]
        assert [r.finish_reason for r in batched] == [r.finish_reason for r in wanted]
        assert [r.text for r in batched] == [r.text for r in wanted]
        assert batched[0].finish_reason == "eos" and len(batched[0].token_ids) <= 7
        assert {r.finish_reason for r in batched} != {"eos"}  # rows ended at different cycles


def test_empty_prompts_are_refused(pair):
    target, draft = pair
    with pytest.raises(AutoJudgeError, match="at least one token"):
        SpeculativeDecoder(target, draft).generate_batch([[1, 2], []])


@pytest.mark.parametrize("config", [DecodeConfig(mode="lossless", window=4, max_new_tokens=30),
                                    DecodeConfig(mode="judge", window=3, max_new_tokens=30)], ids=["lossless", "judge"])
def test_a_sequence_that_joins_a_running_batch_gets_what_it_gets_alone(pair, config):
    """Two rows decode for a few cycles, then three more join (their caches start empty beside
    rows that already hold tokens and holes): every row still equals the batch-1 decoder."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft, _judge(target, draft))
    running = Running(decoder.backend, decoder.backend.eos_token_ids)
    running.join(PROMPTS[:2], config)
    for _ in range(3):
        running.cycle()
    assert all(len(row.generated) > 0 for row in running.active)
    running.join(PROMPTS[2:], config)
    while running.active:
        running.cycle()
    for prompt, got in zip(PROMPTS, running.results()):
        want = decoder.generate(prompt, config)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert got.metrics.num_target_calls == want.metrics.num_target_calls


def test_a_batch_of_one_holds_no_holes(pair):
    """Rejected draft tokens of a single row are cropped, not masked: the cache is exactly the
    committed sequence but its last token after every cycle (as a plain KV cache would be)."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    running = Running(decoder.backend, frozenset())
    running.join(PROMPTS[:1], DecodeConfig(mode="lossless", window=4, max_new_tokens=30))
    rejected = 0
    while running.active:
        before = running.rows[0].metrics.num_draft_tokens - running.rows[0].metrics.num_accepted_tokens
        running.cycle()
        rejected += running.rows[0].metrics.num_draft_tokens - running.rows[0].metrics.num_accepted_tokens - before
        if running.active:  # (the row leaves the batch when it ends, and its caches go)
            cache = running.state.target_cache
            assert cache.width == int(cache.lengths[0]) == len(running.rows[0].tokens) - 1
            assert bool(cache.slots.all())
    assert rejected > 0  # some cycles did reject draft tokens


MIXED = [  # one request each, as a server's clients send them: every mode, its own window, budget and threshold
    DecodeConfig(mode="judge", window=4, max_new_tokens=30),
    DecodeConfig(mode="target", max_new_tokens=25),
    DecodeConfig(mode="lossless", window=7, max_new_tokens=31),
    DecodeConfig(mode="topk", window=4, top_k=3, max_new_tokens=30),
    DecodeConfig(mode="judge", window=5, threshold=0.3, max_new_tokens=28),
    DecodeConfig(mode="fly", window=7, fly_entropy=0.05, max_new_tokens=30),
    DecodeConfig(mode="lossless", window=2, max_new_tokens=30),
]


@pytest.mark.parametrize("chunk, repeat", [(None, 1), (4, 1), (None, 6), (16, 6)],
                         ids=["whole-prefill", "chunked-prefill", "long-whole-prefill", "long-chunked-prefill"])
def test_requests_that_join_and_leave_a_running_batch_get_what_they_get_alone(pair, chunk, repeat):
    """Continuous batching: requests with different modes, windows, thresholds and budgets join
    a running batch at different cycles (their prompts fed whole, or 4 or 16 tokens a cycle), one
    is cancelled on the way (while its prompt is fed, when chunked); every other request equals
    its batch-1 decode, metrics included. Long prompts (18-72 tokens) are read alone beside the
    decoding rows (:func:`autojudge.models.ragged_cache.block_width`)."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft, _judge(target, draft))
    running = Running(decoder.backend, decoder.backend.eos_token_ids, prefill_chunk=chunk)
    prompts = [PROMPTS[i % len(PROMPTS)] * repeat for i in range(len(MIXED))]
    index, ended, cancelled = {}, set(), None
    for cycle in range(400):
        if cycle % 2 == 0 and len(index) < len(MIXED):  # a request joins every other cycle
            i = len(index)
            index[i] = running.join([prompts[i]], MIXED[i])[0]
        if cycle == 5:  # the lossless W7 request, which joined a cycle ago (still feeding its prompt when chunked)
            cancelled = index[2]
            running.cancel(cancelled)
        ended.update(running.cycle())
        if len(index) == len(MIXED) and not running.active:
            break
    assert ended == set(index.values()) and running.state is None  # all left; the caches went with them
    sizes = set()
    for i, config in enumerate(MIXED):
        got = running.pop(index[i])
        sizes.add(round(got.metrics.mean_batch_size, 3))
        if index[i] == cancelled:
            assert got.finish_reason == "cancelled" and len(got.token_ids) < config.max_new_tokens
            continue
        want = decoder.generate(prompts[i], config)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason, config
        for key in ("num_target_calls", "num_draft_tokens", "num_accepted_tokens", "num_accepted_mismatches"):
            assert getattr(got.metrics, key) == getattr(want.metrics, key), (config, key)
    assert max(sizes) > 2  # requests really shared cycles
    assert not running.rows  # popped results are forgotten


def test_a_long_prompt_is_fed_in_chunks_beside_running_rows(pair):
    """A prompt of 12 tokens with a chunk of 4 takes three cycles to feed; meanwhile the running
    row keeps committing tokens every cycle, and the newcomer's output is its batch-1 output."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    config = DecodeConfig(mode="lossless", window=3, max_new_tokens=20)
    running = Running(decoder.backend, frozenset(), prefill_chunk=4)
    first = running.join([PROMPTS[1]], config)[0]  # 3 tokens: fed at once
    running.cycle()
    late = running.join([PROMPTS[2]], config)[0]  # 12 tokens: 4 + 4 + 4
    grown = []
    for _ in range(3):
        before = len(running.rows[first].generated)
        running.cycle()
        grown.append(len(running.rows[first].generated) - before)
        if len(grown) < 3:
            assert running.rows[late].generated == [] and running.rows[late].metrics.num_target_calls == 0
    assert all(g >= 1 for g in grown) and len(running.rows[late].generated) >= 1
    while running.active:
        running.cycle()
    for index, prompt in ((first, PROMPTS[1]), (late, PROMPTS[2])):
        want = decoder.generate(prompt, config, eos_token_ids=frozenset())
        got = running.pop(index)
        assert got.token_ids == want.token_ids and got.metrics.num_target_calls == want.metrics.num_target_calls


def test_rows_joining_together_share_a_cycles_prompt_tokens(pair):
    """A cycle feeds at most prefill_chunk prompt tokens: two rows joining together get half each,
    one left feeding gets them all (a lone joiner is read in few cycles, a crowd never stalls the
    batch for long); each row's output is still its batch-1 output."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    config = DecodeConfig(mode="lossless", window=3, max_new_tokens=8)
    long_prompt = PROMPTS[2] * 2  # 24 tokens
    running = Running(decoder.backend, frozenset(), prefill_chunk=8)
    short, long_ = running.join([PROMPTS[2], long_prompt], config)  # 12 and 24 tokens
    fed = []
    while running.rows[long_].prefilling:
        running.cycle()
        fed.append((running.rows[short].fed, running.rows[long_].fed))
    assert fed == [(4, 4), (8, 8), (12, 12), (12, 20), (12, 24)]  # 4 + 4, then 8 for the one left
    while running.active:
        running.cycle()
    for index, prompt in ((short, PROMPTS[2]), (long_, long_prompt)):
        want = decoder.generate(prompt, config, eos_token_ids=frozenset())
        assert running.pop(index).token_ids == want.token_ids


def test_each_cycle_is_reported_with_its_rows_and_window(pair):
    """``on_cycle`` sees every cycle: how many rows it held, fed a prompt chunk, drafted, and the
    batch's window (a target row and a prompt chunk draft nothing)."""
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    records = []
    running = Running(decoder.backend, frozenset(), prefill_chunk=8, on_cycle=records.append)
    running.join([PROMPTS[1]], DecodeConfig(mode="lossless", window=3, max_new_tokens=8))  # 3 tokens: fed at once
    running.join([PROMPTS[2]], DecodeConfig(mode="target", max_new_tokens=8))  # 12 tokens: 4, then 8
    cycles = 0
    while running.active:
        running.cycle()
        cycles += 1
    assert len(records) == cycles
    seen = [(r.rows, r.feeding, r.drafting, r.window) for r in records]
    assert seen[:2] == [(2, 2, 1, 3), (2, 1, 1, 3)]
    assert all(r.drafting <= 1 and (r.window > 0) == (r.drafting > 0) and r.seconds > r.read_s >= 0 for r in records)
    assert seen[-1][0] == 1  # one row left: the other ended first


def test_a_batch_that_never_empties_does_not_grow(pair):
    """Rows keep joining and leaving a running batch for many cycles (a server's life): holes left by
    departed rows, late joiners and rejected drafts are squeezed out, so the caches stay within twice
    their longest row (plus HOLE_SLACK), and every request still gets its batch-1 tokens."""
    from autojudge.decoding.in_process import HOLE_SLACK
    from autojudge.decoding.loop import Running

    target, draft = pair
    decoder = SpeculativeDecoder(target, draft)
    config = DecodeConfig(mode="lossless", window=4, max_new_tokens=12)
    running = Running(decoder.backend, frozenset())
    joined, widest = {}, 0
    for cycle in range(120):
        if len(running.active) < 3:
            prompt = PROMPTS[cycle % len(PROMPTS)]
            joined[running.join([prompt], config)[0]] = prompt
        running.cycle()
        if running.active:
            for cache in (running.state.target_cache, running.state.draft_cache):
                assert cache.width <= 2 * int(cache.lengths.max()) + HOLE_SLACK
                widest = max(widest, cache.width)
    while running.active:
        running.cycle()
    alone = {tuple(p): decoder.generate(p, config, eos_token_ids=frozenset()).token_ids for p in PROMPTS}
    assert len(joined) > 20 and all(running.pop(i).token_ids == alone[tuple(p)] for i, p in joined.items())
    assert widest > 40  # holes did pile up, and were squeezed out
