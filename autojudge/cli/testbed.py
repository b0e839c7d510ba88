"""``testbed``: make the testbed's pair and measure what it promises (accuracy, agreement, labels)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autojudge.cli.options import json_option, progress_option, status


@click.group()
def testbed() -> None:
    """The testbed: synthetic two-step word problems whose right answers are known, and a
    small target/draft pair trained on them (shipped; `--target testbed` anywhere).

    \b
    Wording tokens (synonyms, connectives) are free; numbers, operators and the verbs that
    name them decide the answer. So every mined mismatch has a known ground truth, and a
    judge that works can be told from one that does not.
    """


@testbed.command("make-pair")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Writes OUT/target and OUT/draft (checkpoint directories); must not exist yet.")
@click.option("--target-steps", type=click.IntRange(1), default=None, help="[default: the shipped pair's]")
@click.option("--draft-steps", type=click.IntRange(1), default=None, help="[default: the shipped pair's]")
@json_option("Print what was made as JSON.")
@progress_option()
def make_pair_command(out, target_steps, draft_steps, as_json, progress):
    """Train the testbed pair from scratch (seeded, on one CPU thread: about 5 minutes).

    The shipped pair (autojudge/testbed/pair/) was made by this command with the defaults; on
    the same torch build it makes the same weights, bit for bit."""
    from dataclasses import replace

    from autojudge.errors import AutoJudgeError
    from autojudge.testbed.pair import DRAFT, TARGET, make_pair

    if out.exists():
        raise AutoJudgeError(f"{out} exists: give a new --out directory")
    target = replace(TARGET, steps=target_steps or TARGET.steps)
    draft = replace(DRAFT, steps=draft_steps or DRAFT.steps)
    made = make_pair(out, target, draft, progress=progress)
    click.echo(json.dumps(made, indent=2) if as_json else
               "\n".join(f"{name}: {m['layers']} layers x {m['hidden']}, {m['parameters']:,} parameters, "
                         f"{m['steps']} steps in {m['seconds']:.0f} s -> {out / name}" for name, m in made.items()))


@testbed.command("report")
@click.option("--target", default="testbed", show_default=True, help="Target model spec.")
@click.option("--draft", default=None, help="Draft model spec [default: the target's own draft].")
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True,
              help="Held-out (test split) problems to measure on.")
@click.option("--mined", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Also score a mining directory's labels against the ground truth.")
@json_option("Print the report as JSON.")
def report_command(target, draft, examples, mined, as_json):
    """The pair's properties on held-out problems: target accuracy, the draft's greedy
    agreement with the target's answers (overall, wording, answer-critical), and with
    --mined, mining's label precision and recall against the ground truth."""
    from autojudge.cli.options import load_pair
    from autojudge.errors import AutoJudgeError
    from autojudge.testbed.measure import label_report, pair_report
    from autojudge.testbed.pair import is_testbed_tokenizer
    from autojudge.testbed.task import Testbed

    target_lm, draft_lm = load_pair(target, draft)
    if not is_testbed_tokenizer(target_lm.tokenizer):
        raise AutoJudgeError(f"{target} does not use the testbed's tokenizer: the testbed measures pairs trained "
                             "on its problems (--target testbed, or a pair made by `testbed make-pair`)")
    dataset = None
    if mined:
        from autojudge.mining import read_mined

        dataset = read_mined(mined)
        if dataset.manifest.get("task") != "testbed" or dataset.manifest.get("target") != target_lm.name:
            raise AutoJudgeError(f"{mined} was mined with task {dataset.manifest.get('task')!r} and target "
                                 f"{dataset.manifest.get('target')!r}; its labels can be scored only against "
                                 f"task 'testbed' and the same target ({target_lm.name!r})")
    status(f"Measuring on {examples} held-out problems ...")
    report = {"pair": pair_report(target_lm, draft_lm, Testbed().load("test", limit=examples))}
    if dataset is not None:
        report["labels"] = label_report(target_lm.tokenizer, dataset.labels)
    click.echo(json.dumps(report, indent=2) if as_json else _text(report))


def _text(report: dict) -> str:
    from autojudge.testbed.measure import percent

    pair = report["pair"]
    lines = [f"target accuracy   {pair['target_accuracy']:.1%} on {pair['examples']} held-out problems",
             (f"draft agreement   {pair['agreement_all']:.1%} overall, {pair['agreement_wording']:.1%} on wording, "
              f"{pair['agreement_critical']:.1%} on answer-critical tokens, {pair['agreement_meaning']:.1%} in "
              "meaning")]
    if "labels" in report:
        labels = report["labels"]
        lines.append(f"mined labels      {labels['labels']}: {percent(labels['important_fraction'])} important; "
                     f"against the ground truth precision {percent(labels['precision'])}, recall "
                     f"{percent(labels['recall'])}")
    return "\n".join(lines)
