"""The speculative loop: lossless is exact, caches are reused, lossy modes follow the rule."""

from __future__ import annotations

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge import Judge, JudgeMetadata
from autojudge.models import encode_prompt, load_draft

PROMPT = [1, 504, 3458, 314, 253, 1345, 28, 288]


@pytest.fixture(scope="module")
def tiny_pairs(make_lm):
    """(target, draft) pairs: several seeds; drafts that agree often, rarely, or always."""
    pairs = {}
    for seed in (0, 1, 2):
        target = tiny_model(seed)
        pairs[f"noisy-{seed}"] = (make_lm(target, f"t{seed}"), make_lm(perturbed(target, 0.07, seed), f"d{seed}"))
    target = tiny_model(7)
    pairs["stranger"] = (make_lm(target, "t7"), make_lm(tiny_model(8), "d8"))
    pairs["copy"] = (make_lm(target, "t7"), make_lm(perturbed(target, 0.0, 0), "d7copy"))
    return pairs


def _greedy(target, prompt=PROMPT, max_new_tokens=40, **kw):
    return SpeculativeDecoder(target).generate(prompt, DecodeConfig(mode="target", max_new_tokens=max_new_tokens), **kw)


def test_target_mode_equals_huggingface_greedy(tiny_pairs):
    target, _ = tiny_pairs["noisy-0"]
    ours = _greedy(target).token_ids
    hf = target.model.generate(torch.tensor([PROMPT]), max_new_tokens=40, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(PROMPT):].tolist()
    assert ours == hf


@pytest.mark.parametrize("pair", ["noisy-0", "noisy-1", "noisy-2", "stranger", "copy"])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8, 11, 16])
def test_lossless_is_identical_to_target_greedy(tiny_pairs, pair, window):
    target, draft = tiny_pairs[pair]
    reference = _greedy(target, eos_token_ids=frozenset())
    result = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=window, max_new_tokens=40), eos_token_ids=frozenset())
    assert result.token_ids == reference.token_ids
    assert result.metrics.num_generated_tokens == 40
    assert result.metrics.num_accepted_mismatches == 0


def test_lossless_is_identical_in_bfloat16(make_lm):
    target_model = tiny_model(3).to(torch.bfloat16)
    target = make_lm(target_model, "t3-bf16")
    draft = make_lm(perturbed(target_model, 0.07, 3), "d3-bf16")
    reference = _greedy(target, eos_token_ids=frozenset())
    result = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=4, max_new_tokens=40), eos_token_ids=frozenset())
    assert result.token_ids == reference.token_ids
    assert 0 < result.metrics.num_accepted_tokens < result.metrics.num_draft_tokens


def test_noisy_draft_gets_partial_acceptance(tiny_pairs):
    """Guards the fixtures: the lossless tests above must exercise accepts and rejects."""
    target, draft = tiny_pairs["noisy-0"]
    m = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=4, max_new_tokens=40), eos_token_ids=frozenset()).metrics
    assert 0.2 < m.draft_acceptance_rate < 0.95


def test_copy_draft_accepts_everything_and_adds_bonus(tiny_pairs):
    target, draft = tiny_pairs["copy"]
    m = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=4, max_new_tokens=40), eos_token_ids=frozenset()).metrics
    assert m.draft_acceptance_rate == 1.0
    assert m.num_target_calls == 8  # 40 tokens / (4 accepted + 1 bonus)
    assert m.mean_acceptance_length == 5.0
    assert m.num_accepted_tokens_per_pos == [8, 8, 8, 8]


@pytest.mark.parametrize("pair", ["copy", "noisy-1"])
@pytest.mark.parametrize("window", [3, 8])
def test_eos_inside_a_window_ends_generation(tiny_pairs, pair, window):
    target, draft = tiny_pairs[pair]
    free = _greedy(target, eos_token_ids=frozenset()).token_ids
    position = next(i for i in range(9, len(free)) if free[i] not in free[:i])  # first time seen
    eos = frozenset({free[position]})
    result = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=window, max_new_tokens=40), eos_token_ids=eos)
    assert result.token_ids == free[: position + 1]
    assert result.finish_reason == "eos"
    assert result.token_ids == _greedy(target, eos_token_ids=eos).token_ids


@pytest.mark.parametrize("max_new_tokens", [1, 2, 7, 13])
def test_max_new_tokens_is_exact(tiny_pairs, max_new_tokens):
    target, draft = tiny_pairs["copy"]
    result = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=8, max_new_tokens=max_new_tokens), eos_token_ids=frozenset())
    assert len(result.token_ids) == max_new_tokens
    assert result.finish_reason == "length"


def test_stop_string_cuts_text_and_tokens(tiny_pairs):
    target, draft = tiny_pairs["noisy-2"]
    reference = _greedy(target, eos_token_ids=frozenset())
    text = reference.text
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    result = SpeculativeDecoder(target, draft).generate(
        PROMPT, DecodeConfig(mode="lossless", window=4, max_new_tokens=40, stop=(stop,)),
        eos_token_ids=frozenset())
    assert result.finish_reason == "stop"
    assert result.text == text[: text.find(stop)]
    assert result.token_ids == reference.token_ids[: len(result.token_ids)]
    assert len(result.token_ids) < 40


def test_kv_caches_are_reused_not_reprefilled(tiny_pairs):
    target, draft = tiny_pairs["noisy-0"]
    fed = {"target": 0, "draft": 0}
    for role, lm in (("target", target), ("draft", draft)):
        original = lm.hidden_states

        def counting(ids, cache, _role=role, _original=original, **kwargs):
            fed[_role] += ids.shape[1]
            return _original(ids, cache, **kwargs)

        lm.hidden_states = counting
    try:
        m = SpeculativeDecoder(target, draft).generate(
            PROMPT, DecodeConfig(mode="lossless", window=4, max_new_tokens=40), eos_token_ids=frozenset()).metrics
    finally:
        del target.hidden_states, draft.hidden_states
    # The target reads the prompt once, then per cycle the last committed token + w drafts.
    assert fed["target"] == len(PROMPT) + (m.num_target_calls - 1) + m.num_draft_tokens
    # The draft reads each position at most once more after a rejection (the correction).
    assert fed["draft"] <= len(PROMPT) + m.num_generated_tokens + m.num_draft_tokens


# ------------------------------------------------------------------ lossy modes


def _judge_for(target, draft, weight, bias, threshold, layout="draft+target", scalars=()):
    meta = JudgeMetadata(target_model=target.name, target_hidden_size=target.hidden_size,
                         draft_model=draft.name, draft_hidden_size=draft.hidden_size,
                         feature_layout=layout, threshold=threshold, scalar_features=scalars)
    return Judge(weight=weight, bias=bias, meta=meta)


def _reference_judge_decode(target, draft, judge, window, max_new_tokens):
    """ALGORITHM.md section 4 without caches: every forward re-reads the whole sequence."""
    def states(lm, seq):
        return lm.hidden_states(torch.tensor([seq]), lm.new_cache())[0]  # [S, H]

    seq = list(PROMPT)
    while len(seq) - len(PROMPT) < max_new_tokens:
        w = min(window, max_new_tokens - (len(seq) - len(PROMPT)) - 1)
        drafts = []
        for _ in range(w):
            drafts.append(int(draft.logits(states(draft, seq + drafts)[-1]).argmax()))
        h_target = states(target, seq + drafts)[-(w + 1):]  # [w+1, Ht]
        logits = target.logits(h_target)  # [w+1, V]
        t = logits.argmax(-1).tolist()
        n = 0
        if w:
            h_draft = states(draft, seq + drafts)[-w:]  # state after reading each d_k
            scalars = judge.scalars(torch.tensor([drafts]), torch.tensor([t]), logits[None, :w])  # [1, w, E] | None
            probs = judge.probabilities(h_draft[None], h_target[None, 1:], scalars)[0]
            while n < w and (drafts[n] == t[n] or probs[n] <= judge.meta.threshold):
                n += 1
        seq += drafts[:n] + [t[n]]
    return seq[len(PROMPT):]


@pytest.mark.parametrize("window", [2, 5])
@pytest.mark.parametrize("layout, scalars", [("draft+target", ()), ("target", ()),
                                             ("draft+target", SCALAR_FEATURES), ("target", ("target_logprob",))])
def test_judge_mode_matches_cache_free_reference(tiny_pairs, window, layout, scalars):
    target, draft = tiny_pairs["noisy-1"]
    gen = torch.Generator().manual_seed(3)
    features = target.hidden_size + (draft.hidden_size if layout == "draft+target" else 0)
    weight = torch.randn(features + len(scalars), generator=gen) * 0.1
    if scalars:  # the scalars alone decide: a decoder that misreads them fails the reference
        weight[:features] = 0
        weight[features:] = torch.randn(len(scalars), generator=gen)
    # centred on their values at this pair's mismatches: their variation, not their level, decides
    typical = {"target_logprob": -5.0, "target_top_logprob": -4.3, "target_entropy": 8.85, "target_rank": 1.0,
               "window_agreement": 0.7}
    bias = -sum(float(w) * typical[name] for w, name in zip(weight[features:], scalars))
    judge = _judge_for(target, draft, weight, bias, 0.5, layout, scalars)
    result = SpeculativeDecoder(target, draft, judge).generate(
        PROMPT, DecodeConfig(mode="judge", window=window, max_new_tokens=30), eos_token_ids=frozenset())
    assert result.token_ids == _reference_judge_decode(target, draft, judge, window, 30)
    assert result.metrics.num_accepted_mismatches > 0  # the judge really accepted some
    if scalars:  # and rejected others
        assert result.metrics.num_draft_tokens > result.metrics.num_accepted_tokens


def test_judge_that_rejects_everything_is_lossless(tiny_pairs):
    target, draft = tiny_pairs["noisy-0"]
    judge = _judge_for(target, draft, torch.zeros(128), -1.0, 0.2)  # p = sigmoid(-1) = 0.27 > 0.2
    cfg = dict(window=4, max_new_tokens=40)
    judged = SpeculativeDecoder(target, draft, judge).generate(PROMPT, DecodeConfig(mode="judge", **cfg))
    assert judged.token_ids == _greedy(target).token_ids
    assert judged.metrics.num_accepted_mismatches == 0


def test_judge_that_accepts_everything_takes_whole_windows(tiny_pairs):
    target, draft = tiny_pairs["stranger"]
    judge = _judge_for(target, draft, torch.zeros(128), -1.0, 0.2)
    m = SpeculativeDecoder(target, draft, judge).generate(
        PROMPT, DecodeConfig(mode="judge", window=4, max_new_tokens=40, threshold=0.3),
        eos_token_ids=frozenset()).metrics  # threshold override: 0.27 <= 0.3 passes
    assert m.mean_acceptance_length == 5.0
    assert m.num_accepted_mismatches > 20


def test_topk_k1_is_lossless_and_larger_k_accepts_mismatches(tiny_pairs):
    target, draft = tiny_pairs["noisy-2"]
    decoder = SpeculativeDecoder(target, draft)
    greedy = _greedy(target, eos_token_ids=frozenset()).token_ids
    k1 = decoder.generate(PROMPT, DecodeConfig(mode="topk", top_k=1, window=4, max_new_tokens=40),
                          eos_token_ids=frozenset())
    k8 = decoder.generate(PROMPT, DecodeConfig(mode="topk", top_k=8, window=4, max_new_tokens=40),
                          eos_token_ids=frozenset())
    assert k1.token_ids == greedy
    assert k8.metrics.num_accepted_mismatches > 0
    assert k8.metrics.mean_acceptance_length > k1.metrics.mean_acceptance_length


@pytest.mark.parametrize("bad, message", [
    (dict(mode="nope"), "unknown mode"),
    (dict(window=0), "window must be in 1..64"),
    (dict(window=65), "window must be in 1..64"),
    (dict(mode="judge"), "needs a judge"),
    (dict(threshold=1.5), "threshold must be in [0, 1]"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(stop=("",)), "stop strings"),
])
def test_bad_config_is_a_clear_error(tiny_pairs, bad, message):
    target, draft = tiny_pairs["noisy-0"]
    with pytest.raises(AutoJudgeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SpeculativeDecoder(target, draft).generate(PROMPT, DecodeConfig(**bad))


# ------------------------------------------------------------------ the real embedded target


@pytest.mark.parametrize("question", [
    "What is 7 times 8?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
])
def test_lossless_on_embedded_target_with_default_draft(embedded_target, question):
    draft = load_draft("embedded", embedded_target)
    prompt = encode_prompt(embedded_target.tokenizer, question)
    decoder = SpeculativeDecoder(embedded_target, draft)
    reference = decoder.generate(prompt, DecodeConfig(mode="target", max_new_tokens=24))
    result = decoder.generate(prompt, DecodeConfig(mode="lossless", window=4, max_new_tokens=24))
    assert result.token_ids == reference.token_ids
    assert result.text == reference.text and reference.text.strip()
