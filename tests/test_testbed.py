"""The testbed: problems, styles and ground truth, the tokenizer, the pair's training, and the
shipped pair's promised properties."""

from __future__ import annotations

import pytest
import torch

from autojudge.models import encode_prompt, load_draft, load_target
from autojudge.testbed.measure import critical, label_report
from autojudge.testbed.pair import ANSWER_PROMPT, DRAFT, TARGET, make_pair, make_tokenizer, training_batch
from autojudge.testbed.problems import DRAFT_STYLE, TARGET_STYLE, meaning, problem
from autojudge.testbed.task import Testbed


def test_problems_are_a_pure_function_of_split_and_index():
    assert problem("train", 3) == problem("train", 3)
    assert problem("train", 3).question != problem("test", 3).question
    questions = {problem("test", i).question for i in range(200)}
    assert len(questions) == 200


def test_both_styles_state_the_gold_answer_and_differ_only_in_wording():
    task, tokenizer = Testbed(), make_tokenizer()
    wording_differences = number_spellings = 0
    for example in task.load("test", limit=100):
        p = problem("test", int(example.id.rsplit("/", 1)[1]))
        mine, theirs = p.solution(TARGET_STYLE).split(), p.solution(DRAFT_STYLE).split()
        assert task.result(example, " ".join(mine)) == task.result(example, " ".join(theirs)) == example.gold
        assert task.determined(example, " ".join(mine)) and not task.determined(example, " ".join(mine[:-1]))
        assert len(mine) == len(theirs)  # one word a slot: the styles align token by token
        for t, d in zip(mine, theirs):
            assert meaning(t) == meaning(d), (t, d)  # a style never changes what the answer says
            ids = tokenizer.convert_tokens_to_ids([t, d])
            assert not critical(tokenizer, *ids)
            number_spellings += t != d and t.isdigit()
            wording_differences += t != d and not t.isdigit()
        assert tokenizer.unk_token_id not in tokenizer(" ".join(theirs))["input_ids"]
        assert tokenizer.unk_token_id not in tokenizer(example.question)["input_ids"]
    assert wording_differences == 700 and number_spellings >= 200  # 7 slots; small numbers spelled


def test_meaning_is_the_ground_truth_of_a_swap():
    tokenizer = make_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    assert meaning("thus") is None and meaning("four") == meaning("4") == "4"
    assert meaning("bought") == meaning("won") == "+" and meaning("sold") == "-"
    assert not critical(tokenizer, *ids(["so", "hence"]))
    assert not critical(tokenizer, *ids(["4", "four"]))
    assert critical(tokenizer, *ids(["4", "five"]))
    assert critical(tokenizer, *ids(["bought", "lost"]))
    assert not critical(tokenizer, *ids(["bought", "got"]))
    assert critical(tokenizer, *ids(["+", "-"]))
    labels = [{"target_token": ids("4"), "draft_token": ids("5"), "important": True},
              {"target_token": ids("so"), "draft_token": ids("thus"), "important": True},
              {"target_token": ids("4"), "draft_token": ids("four"), "important": False},
              {"target_token": ids("+"), "draft_token": ids("-"), "important": False}]
    report = label_report(tokenizer, labels)
    assert report["precision"] == 0.5 and report["recall"] == 0.5 and report["important_fraction"] == 0.5
    assert label_report(tokenizer, [])["precision"] is None  # nothing to measure, not 0%
    assert critical(tokenizer, *ids(["so", "####"])) and critical(tokenizer, *ids(["20", "<eos>"]))


def test_training_batches_use_the_chat_template_prompt_and_label_only_answers():
    tokenizer = make_tokenizer()
    ids, labels = training_batch(tokenizer, TARGET_STYLE, TARGET, step=0)
    p = problem("lm", 0)
    prompt = encode_prompt(tokenizer, p.question)
    assert tokenizer.convert_ids_to_tokens(prompt[-1]) == ANSWER_PROMPT
    assert ids[0, : len(prompt)].tolist() == prompt
    assert (labels[0, : len(prompt) - 1] == -100).all()
    answer = labels[0, len(prompt) - 1:]
    answer = answer[answer != -100].tolist()
    assert answer[-1] == tokenizer.eos_token_id
    assert ids[0, len(prompt): len(prompt) + len(answer)].tolist() == answer  # label p is token p + 1


def test_make_pair_is_seeded_and_loads_as_a_pair(tmp_path):
    from dataclasses import replace

    small = {"target": replace(TARGET, steps=3, batch=4), "draft": replace(DRAFT, steps=3, batch=4)}
    make_pair(tmp_path / "a", progress=False, **small)
    make_pair(tmp_path / "b", progress=False, **small)
    target = load_target(str(tmp_path / "a" / "target"))
    draft = load_draft(str(tmp_path / "a" / "draft"), target)
    again = load_target(str(tmp_path / "b" / "target"))
    ours, theirs = target.model.state_dict(), again.model.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert draft.hidden_size < target.hidden_size


@pytest.fixture(scope="module")
def pair():
    target = load_target("testbed")
    return target, load_draft("testbed", target)


def test_the_shipped_pair_keeps_its_promises(pair):
    """Issue 18's properties, on 200 held-out problems: the target answers right, and the draft
    agrees with it in the regime of the paper's 1B draft for an 8B target."""
    from autojudge.testbed.measure import pair_report

    report = pair_report(*pair, Testbed().load("test", limit=200))
    assert report["target_accuracy"] >= 0.98
    assert 0.55 <= report["agreement_all"] <= 0.75
    assert report["agreement_wording"] > 0.7  # most wording tokens agree ...
    assert 0.90 <= report["agreement_meaning"] <= 0.99  # ... and some answer-critical ones do not (95.0%)


def test_mine_train_decode_on_the_testbed(pair, tmp_path):
    """End to end on the shipped pair, with thresholds that a label bug or a judge reading the
    wrong features fails: mining agrees with the ground truth, the judge separates important
    from unimportant mismatches, and decoding with it keeps the target's answers while
    accepting more tokens per cycle than lossless."""
    from autojudge.decoding import SpeculativeDecoder
    from autojudge.evaluation import Run, evaluate
    from autojudge.judge.training import TrainConfig, train_judge
    from autojudge.mining import mine, read_mined

    target, draft = pair
    task = Testbed()
    mine(target, draft, task, task.load("train", limit=64), tmp_path / "mined", split="train@0", batch_size=8,
         progress=False)
    mined = read_mined(tmp_path / "mined")
    labels = label_report(target.tokenizer, mined.labels)
    assert labels["labels"] >= 300
    assert 0.10 <= labels["important_fraction"] <= 0.40
    assert labels["precision"] >= 0.95 and labels["recall"] >= 0.95
    judge, report = train_judge(mined, TrainConfig(val_fraction=0.3, target_recall=1.0), progress=False)
    assert report.val_auc >= 0.95 and report.cv_auc >= 0.95
    result = evaluate(SpeculativeDecoder(target, draft, judge), task, task.load("test", limit=64),
                      [Run("lossless", 4), Run("judge", 4), Run("judge", 4, threshold=0.5)], tmp_path / "eval",
                      progress=False, batch_size=16)
    runs = {r["name"]: r for r in result["runs"]}
    lossless, calibrated, half = runs["lossless/W4"], runs["judge@calibrated/W4"], runs["judge@0.5/W4"]
    assert lossless["agreement_with_target"] == 1.0
    # Mining's features taken one position early (draft or target side) still train a judge with
    # validation AUC ~1 (the other side carries the signal), but the decoder's true features then
    # read as "unimportant": at 0.5 such a judge kept 20% of answers (and 92-94% at its calibrated
    # threshold) where the right one keeps 94% (and 100%); see the issue-18 note.
    assert calibrated["agreement_with_target"] >= 0.95 and calibrated["accuracy"] >= 0.95
    assert half["agreement_with_target"] >= 0.85
    assert calibrated["tau"] >= 1.4 * lossless["tau"]

    # answer-level calibration on held-out train problems: the threshold keeps the requested share of
    # the target's answers there, is stored with its curve, and keeps them on the test split too
    from autojudge.judge import Judge
    from autojudge.judge.calibration import AnswerCalibration, calibrate_answers

    answered, record = calibrate_answers(target, draft, judge, task, task.load("train", limit=48, offset=64),
                                         AnswerCalibration(0.95, 4, points=6), tmp_path / "calibration",
                                         split="train@64", progress=False)
    assert record["met"] and record["chosen"]["retention"] >= 0.95 and record["prompts"] == 48
    assert record["chosen"]["threshold"] > 0  # it accepts mismatches
    assert [p["threshold"] for p in record["curve"]] == sorted(p["threshold"] for p in record["curve"])
    assert record["curve"][0]["threshold"] == 0.0 and record["curve"][0]["retention"] == 1.0  # lossless
    assert record["curve"][-1]["retention"] < 0.95  # the grid reaches thresholds that lose answers
    saved = Judge.load(answered.save(tmp_path / "answered"))
    assert saved.meta.threshold == record["chosen"]["threshold"]
    assert saved.meta.extra["token_threshold"] == judge.meta.threshold
    assert saved.meta.extra["answer_calibration"]["curve"] == record["curve"]
    held_out = evaluate(SpeculativeDecoder(target, draft, saved), task, task.load("test", limit=64),
                        [Run("judge", 4)], tmp_path / "eval-answered", progress=False, batch_size=8)
    answer_calibrated = next(r for r in held_out["runs"] if r["mode"] == "judge")
    assert answer_calibrated["agreement_with_target"] >= 0.95
    assert answer_calibrated["tau"] >= 1.4 * lossless["tau"]


def test_cli_testbed_report_and_quickstart(tmp_path):
    import json

    from click.testing import CliRunner

    from autojudge.cli import main

    result = CliRunner().invoke(main, ["testbed", "report", "--examples", "20", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["pair"]["target_accuracy"] >= 0.95 and report["pair"]["examples"] == 20
    result = CliRunner().invoke(main, ["quickstart", "--out", str(tmp_path / "q"), "--mine-prompts", "8",
                                       "--eval-prompts", "4", "--calibration-prompts", "6", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "against the ground truth: precision" in result.output and "judge@calibrated/W4" in result.output
    assert "answer calibration on 6 held-out prompts (train@8, W4)" in result.output and "<- calibrated" in result.output
    mined = str(tmp_path / "q" / "mined")
    result = CliRunner().invoke(main, ["testbed", "report", "--examples", "4", "--mined", mined])
    assert result.exit_code == 0 and "mined labels" in result.output, result.output
    result = CliRunner().invoke(main, ["testbed", "report", "--target", str(tmp_path / "q" / "judge")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["testbed", "make-pair", "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and "exists" in result.output
    result = CliRunner().invoke(main, ["generate", "--target", str(tmp_path), "-p", "x"])
    assert result.exit_code == 2 and "needs --draft" in result.output
