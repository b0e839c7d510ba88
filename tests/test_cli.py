"""The autojudge-trt CLI, driven as a user would (click's runner, a tiny local checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_model

from autojudge.cli import main
from autojudge.judge import Judge, JudgeMetadata


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smol_tokenizer):
    path = tmp_path_factory.mktemp("tiny-target")
    tiny_model(0, layers=4).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_explains_every_option():
    result = _run("generate", "--help")
    assert result.exit_code == 0
    for option in ("--prompt", "--prompt-file", "--mode", "--window", "--judge", "--threshold",
                   "--max-new-tokens", "--json", "--stop", "--draft", "--target"):
        assert option in result.output


@pytest.mark.parametrize("mode", ["target", "lossless", "topk"])
def test_generate_json(tiny_dir, mode):
    result = _run("generate", "--target", str(tiny_dir), "--draft", "layers:2", "--mode", mode,
                  "--prompt", "What is 2 + 2?", "--max-new-tokens", "12", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["token_ids"]) == report["metrics"]["num_generated_tokens"] <= 12
    assert report["metrics"]["mode"] == mode
    assert report["metrics"]["num_target_calls"] >= 1
    assert report["draft"] == (None if mode == "target" else f"{tiny_dir}[layers:2]")


def test_generate_judge_mode_with_artifact(tiny_dir, tmp_path):
    name = str(tiny_dir)
    meta = JudgeMetadata(target_model=name, target_hidden_size=64, draft_model=f"{name}[layers:2]",
                         draft_hidden_size=64, threshold=0.4)
    Judge(weight=torch.zeros(128), bias=0.0, meta=meta).save(tmp_path / "judge")  # p = 0.5
    base = ["generate", "--target", name, "--draft", "layers:2", "--mode", "judge", "--judge",
            str(tmp_path / "judge"), "-p", "Hi", "--max-new-tokens", "16", "--json", "--no-progress"]
    strict = json.loads(_run(*base).stdout)["metrics"]  # 0.5 > 0.4: nothing accepted
    loose = json.loads(_run(*base, "--threshold", "0.5").stdout)["metrics"]  # ties pass
    assert strict["num_accepted_mismatches"] == 0
    assert loose["num_accepted_mismatches"] > 0
    assert loose["mean_acceptance_length"] == 16 / 2  # 9 tokens, then 7 (capped by max tokens)


def test_prompt_from_stdin_and_file(tiny_dir, tmp_path):
    args = ["generate", "--target", str(tiny_dir), "--draft", "layers:1", "--max-new-tokens", "4",
            "--json", "--no-progress", "--prompt-file"]
    from_stdin = CliRunner().invoke(main, [*args, "-"], input="What is 2 + 2?")
    (tmp_path / "q.txt").write_text("What is 2 + 2?")
    from_file = CliRunner().invoke(main, [*args, str(tmp_path / "q.txt")])
    assert json.loads(from_stdin.stdout)["token_ids"] == json.loads(from_file.stdout)["token_ids"]
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    bad = CliRunner().invoke(main, [*args, str(tmp_path / "bad.txt")])
    assert bad.exit_code == 2 and "is not UTF-8 text" in bad.output


def test_text_output_has_metrics_table(tiny_dir):
    result = _run("generate", "--target", str(tiny_dir), "--draft", "layers:1", "-p", "Hi",
                  "--max-new-tokens", "5", "--no-progress")
    assert result.exit_code == 0
    assert "tau (tokens per target call" in result.output and "draft acceptance rate" in result.output


@pytest.mark.parametrize("args, message", [
    ([], "exactly one of --prompt or --prompt-file"),
    (["-p", "  "], "the prompt is empty"),
    (["-p", "x", "--mode", "judge"], "--mode judge needs --judge"),
    (["-p", "x", "--window", "0"], "0 is not in the range 1<=x<=64"),
    (["-p", "x", "--threshold", "2"], "2.0 is not in the range 0<=x<=1"),
])
def test_usage_errors(args, message):
    result = CliRunner().invoke(main, ["generate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_domain_errors_are_one_line_exit_2(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["generate", "--target", str(tiny_dir), "--mode", "judge",
                                       "--draft", "layers:2", "--judge", str(tmp_path), "-p", "x"])
    assert result.exit_code == 2
    assert "error: judge artifact" in result.output and "Traceback" not in result.output
    assert "Loading target" not in result.output  # the cheap check runs before model loading
    result = CliRunner().invoke(main, ["generate", "--target", str(tiny_dir), "-p", "x",
                                       "--draft", "layers:6"])
    assert result.exit_code == 2 and "bad draft spec 'layers:6'" in result.output
    result = CliRunner().invoke(main, ["generate", "--target", str(tiny_dir), "-p", "x"])
    assert result.exit_code == 2 and "needs --draft" in result.output


def test_mine_train_eval_pipeline(tiny_dir, tmp_path):
    """The whole AutoJudge pipeline through the CLI, on a tiny local checkpoint and a task
    given by import path (only the first 8 characters of an answer matter)."""
    models = ["--target", str(tiny_dir), "--draft", "layers:2"]
    task = ["--task", "test_mining:FirstEightCharacters"]
    mined = _run("mine", *task, *models, "--out", str(tmp_path / "mined"), "--max-new-tokens", "20",
                 "--json", "--no-progress")
    assert mined.exit_code == 0, mined.output
    summary = json.loads(mined.stdout)
    assert summary["prompts"] == 6 and summary["labels"] > 0 and 0 < summary["important_fraction"] < 1

    merged = _run("merge", str(tmp_path / "mined"), "--out", str(tmp_path / "merged"))
    assert merged.exit_code == 0 and f"{summary['labels']} labels from 6 prompts" in merged.output

    trained = _run("train", "--data", str(tmp_path / "merged"), "--out", str(tmp_path / "judge"),
                   "--val-fraction", "0.5", "--json", "--no-progress")
    assert trained.exit_code == 0, trained.output
    report = json.loads(trained.stdout)
    assert 0 <= report["val_auc"] <= 1 and report["train_labels"] + report["val_labels"] == summary["labels"]
    judge = Judge.load(tmp_path / "judge")
    assert judge.meta.draft_model == f"{tiny_dir}[layers:2]" and judge.meta.extra["task"] == "first8"

    evaluated = _run("eval", *task, *models, "--limit", "2", "--judge", str(tmp_path / "judge"),
                     "--window", "4", "--top-k", "2", "--thresholds", "calibrated,0.5",
                     "--max-new-tokens", "12", "--out", str(tmp_path / "eval"), "--no-progress")
    assert evaluated.exit_code == 0, evaluated.output
    assert "tradeoff.png" in evaluated.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["target", "lossless/W4", "topk@2/W4", "judge@calibrated/W4",
                                                   "judge@0.5/W4"]
    assert report["batch_size"] == 8  # the default: both examples decoded in one batch
    records = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert {r["batch"] for r in records} == {2}


def test_mining_errors_are_clear(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["mine", "--task", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown task 'nope'" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "j")])
    assert result.exit_code == 2 and "not a mining directory" in result.output
