"""Scalar features: their values, and that the decoder's judge reads, at every mismatch it judges,
exactly the values training computes for that mined label (logit features and window position)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import perturbed, tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.decoding import loop as decoding_loop
from autojudge.features.scalars import (
    SCALAR_FEATURES,
    WINDOW_AGREEMENT,
    check_names,
    perfect_judge_windows,
    scalar_features,
    window_agreement,
)
from autojudge.judge import Judge, JudgeMetadata
from autojudge.mining import MinedDataset, mine_example
from autojudge.mining.scalars import mined_scalar_features
from autojudge.models import encode_prompt
from autojudge.tasks import Example, Task


def test_logit_features_by_hand():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]]])  # [1, 2, 4]
    draft = torch.tensor([[1, 3]])
    target = torch.tensor([[0, 2, 1]])
    got = scalar_features(SCALAR_FEATURES, draft, target, logits)  # [1, 2, 5]
    for k in range(2):
        z = logits[0, k].double()
        lse = math.log(z.exp().sum())
        p = (z - lse).exp()
        want = [float(z[draft[0, k]] - lse), float(z.max() - lse), float(-(p * p.log()).sum()),
                math.log1p(int((z > z[draft[0, k]]).sum())), [1.0, 0.0][k]]
        torch.testing.assert_close(got[0, k].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    assert scalar_features((), draft, target, None).shape == (1, 2, 0)
    with pytest.raises(ValueError, match="need the target's logits"):
        scalar_features(("target_rank",), draft, target, None)
    with pytest.raises(ValueError, match="unknown scalar feature 'logit'"):
        check_names(["logit"])


def test_window_agreement_counts_earlier_matches():
    draft = torch.tensor([[5, 6, 7, 8, 9]])
    target = torch.tensor([[5, 0, 7, 7, 9, 1]])  # matches at 0, 2, 4
    torch.testing.assert_close(window_agreement(draft, target), torch.tensor([[1.0, 1.0, 0.5, 2 / 3, 2 / 4]]))


def test_perfect_judge_windows_follows_the_cycles():
    # first token from the prompt pass; cycles of 4 from position 1
    where = perfect_judge_windows(20, {1: False, 2: True, 8: False, 11: True, 13: False}, 4)
    # cycle 0..3: 0 match, 1 accepted (k=1), 2 rejected (k=2) -> next cycle at 3
    # cycle 3..6 all match -> bonus 7 -> cycle 8..11: 8 (k=0), 9, 10 match, 11 rejected (k=3)
    # cycle 12..15: 12 match, 13 accepted (k=1)
    assert where == {1: (1, 1), 2: (2, 1), 8: (0, 0), 11: (3, 2), 13: (1, 1)}
    assert perfect_judge_windows(10, {0: False, 9: False}, 4) == {0: (0, 0), 9: (0, 0)}  # 9: a bonus


class CharSum(Task):
    """A result that some swaps keep and others change: the characters' code sum mod 3."""

    name = "charsum"

    def result(self, example, completion):
        return sum(map(ord, completion)) % 3


PROMPTS = [[1, 504, 3458, 314, 253, 1345, 28, 288], [1, 42, 977, 11, 5], [1, 9, 8, 7, 6, 5, 4, 3, 2000, 31]]
MAX_NEW, WINDOW = 40, 4


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(3).double()
    return make_lm(target, "t3"), make_lm(perturbed(copy.deepcopy(target), 0.35, seed=8).double(), "d3")


def perfect_judge_decode(target, draft, labels: dict[int, bool], prompt, monkeypatch):
    """Decode ``prompt`` with a judge that accepts exactly the mismatches mining found unimportant (the
    decode the miner's final answer is); at every mismatch judged up to each cycle's first rejection:
    answer position -> (draft token, the scalars the judge was given [E])."""
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.0,
                         scalar_features=SCALAR_FEATURES)
    judge = Judge(torch.zeros(meta.num_features, dtype=torch.float64), 20.0, meta)
    seen, given, cycle_start = {}, {}, {}
    real_mismatch_ok, real_probabilities, real_cycle = decoding_loop.mismatch_ok, Judge.probabilities, \
        decoding_loop.Running.cycle

    def cycle(self):
        cycle_start["generated"] = len(self.active[0].generated)
        return real_cycle(self)

    def probabilities(judge, draft_hidden, target_hidden, scalars=None):
        given["scalars"] = scalars
        return real_probabilities(judge, draft_hidden, target_hidden, scalars)

    def mismatch_ok(config, backend, threshold, draft_tokens, draft_hidden, verification):
        real_mismatch_ok(config, backend, threshold, draft_tokens, draft_hidden, verification)
        start, w = cycle_start["generated"], draft_tokens.shape[1]
        ok = torch.zeros(1, w, dtype=torch.bool)
        for k in range(w):
            if draft_tokens[0, k] == verification.tokens[0, k]:
                continue
            seen[start + k] = (int(draft_tokens[0, k]), given["scalars"][0, k].clone())
            if labels.get(start + k, True):  # important (or never mined): rejected, nothing later is judged
                break
            ok[0, k] = True
        return ok

    monkeypatch.setattr(decoding_loop.Running, "cycle", cycle)
    monkeypatch.setattr(decoding_loop, "mismatch_ok", mismatch_ok)
    monkeypatch.setattr(Judge, "probabilities", probabilities)
    decoder = SpeculativeDecoder(target, draft, judge)
    result = decoder.generate(prompt, DecodeConfig(mode="judge", window=WINDOW, max_new_tokens=MAX_NEW),
                              eos_token_ids=frozenset())
    return seen, result.token_ids


@pytest.mark.parametrize("prompt", PROMPTS, ids=["p0", "p1", "p2"])
def test_the_judge_reads_the_scalars_training_computes_for_each_mined_label(pair, prompt, monkeypatch):
    target, draft = pair
    monkeypatch.setattr(target, "eos_token_ids", frozenset())
    mined = mine_example(target, draft, CharSum(), Example(id="x", question=""), prompt, MAX_NEW)
    record = mined.record
    labels = [{"index": 0, "example_id": "x", **label} for label in record["labels"]]
    assert any(label["important"] for label in labels) and not all(label["important"] for label in labels)
    data = MinedDataset(labels, mined.draft_hidden, mined.target_hidden, {}, {0: {
        "index": 0, "example_id": "x", "prompt_len": record["prompt_len"], "final_ids": record["final_ids"]}})
    scalars = mined_scalar_features(target, data, {0: prompt}, WINDOW, progress=False)
    assert scalars.greedy_agreement == 1.0  # the recomputed target token is each label's
    seen, answer = perfect_judge_decode(target, draft, {lb["pos"]: lb["important"] for lb in labels}, prompt,
                                        monkeypatch)
    by_pos = {label["pos"]: row for row, label in enumerate(labels)}
    # The perfect judge's decode is the miner's answer up to the budget's last windows (the decoder
    # shrinks them there) or a bonus token: no decode drafts there, so the target's token stays
    # where the miner may have kept an unimportant draft token.
    head = MAX_NEW - WINDOW - 1
    differs = [i for i in range(head) if answer[i] != record["final_ids"][i]]
    if differs:
        assert differs[0] in by_pos and not labels[by_pos[differs[0]]]["important"]
        head = differs[0]
    compared = 0
    for pos, (token, given) in seen.items():
        if pos >= head:
            continue
        assert pos in by_pos, f"the decoder judged a mismatch at {pos} that mining did not label"
        row = by_pos[pos]
        assert token == labels[row]["draft_token"]
        torch.testing.assert_close(given.double(), scalars.values[row].double(), atol=1e-4, rtol=1e-4)
        compared += 1
    assert compared >= 3
    agreement = scalars.columns([WINDOW_AGREEMENT])[:, 0]
    assert (agreement < 1).any(), "some judged mismatch should follow an accepted one in its window"


def test_speculate_counts_cycles_and_the_ceiling_reads_the_labels():
    from autojudge.evaluation.ceiling import ceiling
    from autojudge.features.scalars import speculate

    assert speculate({}, 10, 4) == (2, {})  # 0..3 + bonus 4, 5..8 + bonus 9
    assert speculate({2: False}, 10, 4) == (3, {2: (2, 2)})  # rejected at 2; 3..6 + bonus 7; 8..
    assert speculate({2: True, 9: False}, 10, 4) == (2, {2: (2, 2)})  # accepted; 9 is a bonus: never judged
    labels = [{"index": 0, "pos": 1, "important": False}, {"index": 0, "pos": 3, "important": False},
              {"index": 0, "pos": 7, "important": True}, {"index": 1, "pos": 0, "important": True}]
    data = MinedDataset(labels, torch.zeros(4, 1), torch.zeros(4, 1), {})
    got = ceiling(data, 4)
    # prompt 0, positions 0..7: perfect: 0..3 (1, 3 accepted) + bonus 4, then 5..7 (7 rejected): 2 cycles;
    # lossless: rejected at 1, at 3, at 7: 3 cycles. prompt 1, position 0: one cycle either way
    assert (got["positions"], got["perfect_judge_tau"], got["lossless_tau"]) == (9, 9 / 3, 9 / 4)
    assert got["ceiling_over_lossless"] == pytest.approx(4 / 3) and got["unimportant_fraction"] == 0.5


def test_mined_scalars_on_the_testbed_from_a_merged_directory_and_the_train_cli(tmp_path, monkeypatch):
    """The real path: mine testbed problems, merge (which keeps each prompt's final answer), re-encode
    the prompts from the task's split, compute and cache the scalars, train with them from the CLI,
    and decode with the judge."""
    import json

    from click.testing import CliRunner

    from autojudge.cli import main
    from autojudge.errors import AutoJudgeError
    from autojudge.mining import merge, mine, read_mined
    from autojudge.mining.scalars import task_prompts
    from autojudge.models import load_draft, load_target
    from autojudge.testbed.task import Testbed

    target = load_target("testbed")
    draft = load_draft("testbed", target)
    task = Testbed()
    mine(target, draft, task, task.load("train", limit=12, offset=3), tmp_path / "mined", split="train@3",
         batch_size=4, progress=False)
    merged = merge(tmp_path / "mined", tmp_path / "merged")
    data = read_mined(tmp_path / "merged")
    assert data.prompts == merged.prompts and len(data.prompts) == 12
    prompts = task_prompts(target, task, data)
    scalars = mined_scalar_features(target, data, prompts, 4, tmp_path / "merged", progress=False)
    assert scalars.values.shape == (len(data.labels), len(SCALAR_FEATURES)) and scalars.greedy_agreement == 1.0
    assert (tmp_path / "merged" / "scalars-w4.safetensors").exists()
    monkeypatch.setattr(type(target), "hidden_states", lambda *a, **k: pytest.fail("recomputed, not cached"))
    again = mined_scalar_features(target, data, prompts, 4, tmp_path / "merged", progress=False)
    assert torch.equal(again.values, scalars.values)
    monkeypatch.undo()
    data.prompts[min(data.prompts)]["example_id"] = "elsewhere"
    with pytest.raises(AutoJudgeError, match="was mined from example 'elsewhere'"):
        task_prompts(target, task, data)

    out = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "mined"), "--out", str(tmp_path / "judge"),
                                    "--scalar-features", "target_logprob,window_agreement", "--scalar-window", "4",
                                    "--target", "testbed", "--cv-folds", "3", "--json", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{"):])["scalar_features"] == ["target_logprob", "window_agreement"]
    judge = Judge.load(tmp_path / "judge")
    assert judge.scalar_features == ("target_logprob", "window_agreement")
    result = SpeculativeDecoder(target, draft, judge).generate(
        encode_prompt(target.tokenizer, task.prompt(task.load("test", limit=1)[0]), system=task.system),
        DecodeConfig(mode="judge", window=4, max_new_tokens=48))
    assert result.metrics.num_generated_tokens > 0
    bad = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "mined"), "--out", str(tmp_path / "j2"),
                                    "--scalar-features", "logit"])
    assert bad.exit_code != 0 and "unknown scalar feature 'logit'" in bad.output
