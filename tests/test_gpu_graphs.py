"""The static-cache, graph-shaped backend (autojudge.gpu.graphs) decodes exactly what the
in-process decoder decodes: float64 tiny models on the CPU (where its steps run eagerly), every
mode, batch 1 and ragged batches whose rows end early and join late. Where a CUDA device
exists, its captured graphs replay to the same tokens as its eager steps, for windows 1..64."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.decoding.in_process import InProcessBackend
from autojudge.errors import AutoJudgeError
from autojudge.gpu.graphs import GraphBackend, GraphDecoder
from autojudge.judge import Judge, JudgeMetadata

PROMPTS = [[1, 504, 3458, 314, 253, 1345, 28, 288], [1, 42, 977], [1, 9, 8, 7, 6, 5, 4, 3, 2000, 31, 77, 12],
           [1, 3000, 25, 911, 5]]


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(11).double()
    return make_lm(target, "t11"), make_lm(perturbed(target, 0.08, 11), "d11")


def make_judge(target, draft):
    torch.manual_seed(5)
    meta = JudgeMetadata(target_model=target.name, target_hidden_size=target.hidden_size, draft_model=draft.name,
                         draft_hidden_size=draft.hidden_size, feature_layout="draft+target", threshold=0.5)
    return Judge(weight=torch.randn(target.hidden_size + draft.hidden_size) * 0.3, bias=0.0, meta=meta)


CONFIGS = [
    DecodeConfig(mode="target", max_new_tokens=20),
    DecodeConfig(mode="lossless", window=1, max_new_tokens=20),
    DecodeConfig(mode="lossless", window=5, max_new_tokens=21),
    DecodeConfig(mode="topk", window=4, top_k=3, max_new_tokens=20),
    DecodeConfig(mode="judge", window=4, max_new_tokens=20),
    DecodeConfig(mode="judge", window=8, threshold=0.3, max_new_tokens=20),
]


def same_results(got, want) -> None:
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    for a, b in zip(got, want):
        assert a.finish_reason == b.finish_reason
        for key in ("num_target_calls", "num_draft_tokens", "num_accepted_tokens", "num_accepted_mismatches"):
            assert getattr(a.metrics, key) == getattr(b.metrics, key), key


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.mode}-W{c.window}")
def test_it_decodes_what_the_in_process_decoder_decodes(pair, config):
    target, draft = pair
    judge = make_judge(target, draft)
    eager, graphed = SpeculativeDecoder(target, draft, judge), GraphDecoder(target, draft, judge, capacity=64)
    assert isinstance(graphed.backend, GraphBackend) and not graphed.backend.graphs  # CPU: eager steps
    for prompt in PROMPTS[:2]:
        same_results([graphed.generate(prompt, config)], [eager.generate(prompt, config)])
    same_results(graphed.generate_batch(PROMPTS, config), eager.generate_batch(PROMPTS, config))


def test_rows_that_end_early_leave_and_the_caches_are_reused(pair):
    """An EOS that one row meets early: select() compacts the static batch in place."""
    target, draft = pair
    eager, graphed = SpeculativeDecoder(target, draft), GraphDecoder(target, draft, capacity=64)
    free = eager.generate(PROMPTS[0], DecodeConfig(mode="target", max_new_tokens=20))
    eos = frozenset({free.token_ids[5]})
    config = DecodeConfig(mode="lossless", window=3, max_new_tokens=20)
    want = eager.generate_batch(PROMPTS, config, eos_token_ids=eos)
    assert len({len(r.token_ids) for r in want}) > 1  # rows really end at different cycles
    same_results(graphed.generate_batch(PROMPTS, config, eos_token_ids=eos), want)
    gc.collect()  # a finished batch returns its caches when it is collected
    idle = graphed.backend._idle[(len(PROMPTS), True)]
    assert len(idle) == 1  # the batch's caches went back to the backend
    same_results(graphed.generate_batch(PROMPTS, config, eos_token_ids=eos), want)  # reused, reset
    gc.collect()
    assert len(idle) == 1


def test_the_protocol_step_by_step_with_joins_past_the_static_batch(pair):
    """propose / verify / keep / select / join on both backends, outputs compared at every step;
    joining past the static batch reallocates it."""
    target, draft = pair
    states = [InProcessBackend(target, draft).open(1, True), GraphBackend(target, draft, capacity=64).open(1, True)]
    sequences = [list(PROMPTS[0])]

    def cycle(w: int):
        outs = []
        for state in states:
            proposal = state.propose(sequences, w, need_hidden=True)
            verification = state.verify(sequences, proposal.tokens, need_logits=True)
            outs.append((proposal, verification))
        (p0, v0), (p1, v1) = outs
        assert torch.equal(p0.tokens, p1.tokens) and torch.equal(v0.tokens, v1.tokens)
        torch.testing.assert_close(p1.hidden, p0.hidden, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(v1.hidden, v0.hidden, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(v1.logits, v0.logits, rtol=1e-9, atol=1e-9)
        accepted = [1 + (i % w) for i in range(len(sequences))]  # some drafts kept, the rest cut
        for seq, n, drafted, t in zip(sequences, accepted, p0.tokens.tolist(), v0.tokens.tolist()):
            seq.extend(drafted[: n - 1] + [t[n - 1]])
        lengths = torch.tensor([len(s) - 1 for s in sequences])
        for state in states:
            state.keep(lengths)

    cycle(3)
    for state in states:
        state.join(2)  # past the static batch of 1: reallocated
    sequences += [list(PROMPTS[1]), list(PROMPTS[2])]
    cycle(4)
    cycle(2)
    for state in states:
        state.select(torch.tensor([2, 0]))
    sequences = [sequences[2], sequences[0]]
    cycle(5)
    for state in states:
        state.join(1)
    sequences.append(list(PROMPTS[3]))
    cycle(1)
    cycle(6)


@pytest.mark.parametrize("backend", [InProcessBackend, lambda t, d: GraphBackend(t, d, capacity=64)],
                         ids=["in-process", "graphs"])
def test_a_draft_that_reads_its_lag_apart_proposes_what_it_proposes_reading_it_at_once(pair, backend):
    """catch_up (the loop reads a long lag apart, to time the proposal as a steady one) changes no
    draft token or state, on this cycle or the next: ragged rows, then one row lagging alone."""
    target, draft = pair
    sequences = [list(PROMPTS[0]), list(PROMPTS[1][:1]), list(PROMPTS[2])]
    apart, at_once = (backend(target, draft).open(3, True) for _ in range(2))
    apart.catch_up(sequences)
    for _ in range(2):
        p0, p1 = (state.propose(sequences, 3, need_hidden=True) for state in (apart, at_once))
        assert torch.equal(p0.tokens, p1.tokens)
        torch.testing.assert_close(p0.hidden, p1.hidden, rtol=1e-9, atol=1e-9)
        verified = [state.verify(sequences, p0.tokens, need_logits=False).tokens for state in (apart, at_once)]
        assert torch.equal(*verified)
        for seq, drafted, t in zip(sequences, p0.tokens.tolist(), verified[0].tolist()):
            seq.extend(drafted[:1] + [t[1]])
        for state in (apart, at_once):
            state.keep(torch.tensor([len(s) - 1 for s in sequences]))
        sequences[1] += [7, 8, 9] * 10  # idle cycles' tokens: one row lags, the others have nothing to catch up
        apart.catch_up(sequences)


def test_a_row_past_the_capacity_is_refused(pair):
    target, draft = pair
    with pytest.raises(AutoJudgeError, match="static cache"):
        GraphDecoder(target, draft, capacity=16).generate(PROMPTS[0], DecodeConfig(mode="lossless", max_new_tokens=20))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("window", [1, 2, 8, 16, 64])
def test_captured_graphs_replay_what_the_eager_steps_compute(pair, window):
    target, draft = (type(m)(name=m.name, model=copy.deepcopy(m.model).float().cuda(), tokenizer=m.tokenizer)
                     for m in pair)
    config = DecodeConfig(mode="lossless", window=window, max_new_tokens=3 * window + 5)
    graphed = GraphDecoder(target, draft, capacity=512)
    eager = GraphDecoder(target, draft, capacity=512, graphs=False)
    assert graphed.backend.graphs
    for prompts in (PROMPTS[:1], PROMPTS):
        same_results(graphed.generate_batch(prompts, config), eager.generate_batch(prompts, config))
    gc.collect()
    assert len(graphed.backend._idle[(1, True)][0][0].graphs) >= 1  # the target's verification was captured
