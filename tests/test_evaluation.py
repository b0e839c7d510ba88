"""The trade-off sweep: runs, report, plot and resume, on tiny models."""

import json

import pytest
import torch
from conftest import perturbed, tiny_model
from test_mining import FirstEightCharacters

from autojudge.decoding import SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.evaluation import Run, evaluate, sweep
from autojudge.judge import Judge, JudgeMetadata


@pytest.fixture(scope="module")
def pair(make_lm):
    target = tiny_model(0, layers=2)
    return make_lm(target, "tiny-target"), make_lm(perturbed(target, 0.6, seed=1), "tiny-draft")


def constant_judge(target, draft, bias: float) -> Judge:
    """p(important) = sigmoid(bias) everywhere: bias >> 0 accepts no mismatch, << 0 all."""
    meta = JudgeMetadata(target.name, target.hidden_size, draft.name, draft.hidden_size, threshold=0.5)
    return Judge(torch.zeros(meta.num_features), bias, meta)


def test_sweep_report_plot_and_resume(pair, tmp_path, monkeypatch):
    target, draft = pair
    task = FirstEightCharacters()
    examples = task.load()[:3]
    decoder = SpeculativeDecoder(target, draft, constant_judge(target, draft, bias=-20.0))
    runs = sweep(window=4, top_ks=[3], thresholds=[None, 0.0], with_judge=True)
    assert [r.name for r in runs] == ["target", "lossless/W4", "topk@3/W4", "judge@calibrated/W4", "judge@0/W4"]
    report = evaluate(decoder, task, examples, runs, tmp_path, max_new_tokens=16, progress=False)
    rows = {r["name"]: r for r in report["runs"]}
    assert rows["lossless/W4"]["agreement_with_target"] == 1.0
    assert rows["judge@0/W4"]["agreement_with_target"] == 1.0  # p = 2e-9 > 0: accepts nothing
    assert rows["judge@0/W4"]["tau"] == pytest.approx(rows["lossless/W4"]["tau"])
    accept_all = rows["judge@calibrated/W4"]  # p <= 0.5 everywhere: every draft token accepted
    assert accept_all["tau"] > rows["lossless/W4"]["tau"] and accept_all["accepted_mismatches"] > 0
    assert rows["target"]["tau"] == 1.0 and rows["target"]["target_calls_per_token"] == 1.0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["runs"] == report["runs"]
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    calls = []
    monkeypatch.setattr(decoder, "generate_batch", lambda *a, **k: calls.append(a) or pytest.fail("recomputed"))
    again = evaluate(decoder, task, examples, runs, tmp_path, max_new_tokens=16, progress=False)
    assert again["runs"] == report["runs"] and not calls

    retrained = SpeculativeDecoder(target, draft, constant_judge(target, draft, bias=-19.0))
    with pytest.raises(AutoJudgeError, match="judge runs of another judge.*another --out"):
        evaluate(retrained, task, examples, runs, tmp_path, max_new_tokens=16, progress=False)
    no_judge = [r for r in runs if r.mode != "judge"]  # runs that do not depend on the judge still resume
    assert evaluate(retrained, task, examples, no_judge, tmp_path, max_new_tokens=16, progress=False)["runs"] == \
        [r for r in report["runs"] if not r["name"].startswith("judge")]
    assert not calls


def test_run_names_and_configs():
    assert Run("judge", 8, threshold=0.25).config(64).threshold == 0.25
    assert Run("topk", 4, top_k=8).config(64).top_k == 8
    assert Run("judge", 8).name == "judge@calibrated/W8"


def test_batched_sweep_records_what_the_batch1_sweep_records(make_lm, tmp_path):
    """batch_size 2 over 3 examples (a full batch, then a batch of one) gives the same records
    as one at a time (float64, so rounding cannot flip a greedy choice); a batched sweep
    resumes an unbatched one."""
    target_model = tiny_model(4, layers=2).double()
    target = make_lm(target_model, "tiny-target-64")
    draft = make_lm(perturbed(target_model, 0.3, seed=2), "tiny-draft-64")
    task = FirstEightCharacters()
    examples = task.load()[:3]
    decoder = SpeculativeDecoder(target, draft, constant_judge(target, draft, bias=-20.0))
    runs = sweep(window=3, top_ks=[2], thresholds=[None], with_judge=True)

    def records(path):
        rows = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
        return {(r["run"], r["example_id"]): {k: v for k, v in r.items() if k not in ("seconds", "batch")}
                for r in rows}

    one = evaluate(decoder, task, examples, runs, tmp_path / "one", max_new_tokens=16, progress=False)
    two = evaluate(decoder, task, examples, runs, tmp_path / "two", max_new_tokens=16, progress=False, batch_size=2)
    assert records(tmp_path / "one") == records(tmp_path / "two")
    assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in one["runs"]] == \
        [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in two["runs"]]
    assert two["batch_size"] == 2
    batches = [json.loads(line)["batch"] for line in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert set(batches) == {1, 2}

    partial = tmp_path / "partial"  # resume: examples 0-1 done one at a time, the rest batched
    evaluate(decoder, task, examples[:2], runs, partial, max_new_tokens=16, progress=False)
    evaluate(decoder, task, examples, runs, partial, max_new_tokens=16, progress=False, batch_size=3)
    assert records(partial) == records(tmp_path / "one")


def test_a_task_that_fails_on_one_output_scores_it_wrong_and_the_sweep_goes_on(pair, tmp_path):
    from test_mining import FailsOnSomeOutputs

    target, draft = pair
    task = FailsOnSomeOutputs()
    report = evaluate(SpeculativeDecoder(target, draft), task, task.load()[:3], [Run("target"), Run("lossless", 4)],
                      tmp_path, max_new_tokens=16, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").open()]
    failed = [r for r in records if r["example_id"] == "q1"]
    assert len(failed) == 2 and all("cannot parse this output" in r["error"] and not r["correct"] for r in failed)
    assert all("error" not in r for r in records if r["example_id"] != "q1")
    assert len(report["runs"]) == 2

