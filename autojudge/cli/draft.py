"""``draft distill`` and ``draft eval``: make a draft from the target's own answers, and check it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from autojudge.cli.options import json_option, progress_option


@click.group()
def draft() -> None:
    """Make and check draft models (distilled from the target itself)."""


@draft.command()
@click.option("--target", default="embedded", show_default=True, help="Target model spec (as in generate).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Work directory: teacher data, checkpoints, and the draft artifact (OUT/draft). "
                   "Re-running with the same settings resumes where it stopped.")
@click.option("--data", default="train", show_default=True,
              help="A GSM8K split shipped with the package (train, test) or a JSONL file.")
@click.option("--prompts", type=click.IntRange(1), default=1000, show_default=True,
              help="How many training questions the target answers (the teacher data).")
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True,
              help="Longest teacher answer.")
@click.option("--teacher-batch", type=click.IntRange(1), default=48, show_default=True,
              help="Prompts per batched teacher generation.")
@click.option("--init-layers", default="0,1,2,3", show_default=True,
              help="Target layers the draft starts from (their count is the draft's depth).")
@click.option("--steps", type=click.IntRange(1), default=1500, show_default=True)
@click.option("--batch", "batch_sequences", type=click.IntRange(1), default=16, show_default=True,
              help="Sequences per training step.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--full-vocab", is_flag=True,
              help="Let the draft propose any token. By default it proposes only tokens found in "
                   "the teacher answers, computing just those rows of the LM head (much cheaper).")
@progress_option()
def distill(target, out, data, prompts, max_new_tokens, teacher_batch, init_layers, steps,
            batch_sequences, lr, seed, full_vocab, progress):
    """Distil a small draft from TARGET on the target's own greedy GSM8K answers.

    \b
    1. teacher: the target answers --prompts questions (OUT/teacher.jsonl, append-only);
    2. train: the draft (TARGET's --init-layers, sharing its embedding and LM head) learns
       to predict the target's greedy token (OUT/checkpoint.*, every 50 steps);
    3. export: OUT/draft/ (draft.safetensors fp16 + draft.json with its sha256).
    Use it with: autojudge-trt generate --draft OUT/draft
    """
    from autojudge.distill.teacher import generate_teacher_data
    from autojudge.distill.training import DistillConfig, export_draft, teacher_vocabulary, train_student
    from autojudge.models import encode_prompt, load_target, quiet_transformers
    from autojudge.tasks.gsm8k import format_prompt, load_questions

    quiet_transformers()
    try:
        layers = tuple(int(x) for x in init_layers.split(","))
    except ValueError as exc:
        raise click.BadParameter("comma-separated layer indices, e.g. 0,1,2,3",
                                 param_hint="--init-layers") from exc
    target_lm = load_target(target)
    questions = load_questions(data, limit=prompts)
    prompt_ids = [encode_prompt(target_lm.tokenizer, format_prompt(q)) for q in questions]
    records = generate_teacher_data(target_lm, prompt_ids, out / "teacher.jsonl",
                                    max_new_tokens=max_new_tokens, batch_size=teacher_batch,
                                    progress=progress)
    config = DistillConfig(init_layers=layers, steps=steps, batch_sequences=batch_sequences,
                           lr=lr, seed=seed)
    student = train_student(target_lm, records, out, config, progress=progress)
    command = "autojudge-trt draft distill " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else None
    made_by = {"command": command, "config": {**config.__dict__, "init_layers": list(layers)},
               "teacher_prompts": len(records), "data": str(data)}
    vocab = None if full_vocab else teacher_vocabulary(records, target_lm.eos_token_ids)
    path = export_draft(student, target_lm, out / "draft", layers, made_by, greedy_vocab=vocab)
    click.echo(f"draft written to {path}; try: autojudge-trt generate --draft {path}")


@draft.command("eval")
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", "draft_spec", default=None, help="Draft spec [default: the packaged target's own draft].")
@click.option("--data", default="test", show_default=True,
              help="A GSM8K split shipped with the package (train, test) or a JSONL file.")
@click.option("--prompts", type=click.IntRange(1), default=50, show_default=True)
@click.option("--teacher-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Cache of the target's answers (JSONL, reused and extended).")
@click.option("--max-new-tokens", type=click.IntRange(8), default=256, show_default=True)
@json_option()
def draft_eval(target, draft_spec, data, prompts, teacher_file, max_new_tokens, as_json):
    """Greedy top-1 agreement of a draft with the target on the target's own answers."""
    import tempfile

    from autojudge.distill.teacher import generate_teacher_data
    from autojudge.distill.training import greedy_agreement
    from autojudge.models import draft_spec_for, encode_prompt, load_draft, load_target, quiet_transformers
    from autojudge.tasks.gsm8k import format_prompt, load_questions

    quiet_transformers()
    target_lm = load_target(target)
    draft_lm = load_draft(draft_spec_for(target, draft_spec), target_lm)
    questions = load_questions(data, limit=prompts)
    prompt_ids = [encode_prompt(target_lm.tokenizer, format_prompt(q)) for q in questions]
    path = teacher_file or Path(tempfile.mkdtemp()) / "teacher.jsonl"
    records = generate_teacher_data(target_lm, prompt_ids, path, max_new_tokens=max_new_tokens)
    agreement = greedy_agreement(draft_lm, records)
    report = {"target": target_lm.name, "draft": draft_lm.name, "prompts": len(records),
              "tokens": sum(len(r["completion_ids"]) for r in records), "agreement": agreement}
    click.echo(json.dumps(report, indent=2) if as_json else
               f"{draft_lm.name}: greedy agreement {agreement:.1%} over {report['tokens']} tokens")
