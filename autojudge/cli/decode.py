"""``generate``: one prompt through the speculative decoder, with its metrics table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from autojudge.cli.options import (MODE_CHOICE, MODE_HELP, json_option, model_options, progress_option, status,
                                    window_option)


@click.command()
@click.option("--prompt", "-p", help="The prompt text (a user message when --chat).")
@click.option("--prompt-file", type=click.File("r", encoding="utf-8"),
              help="Read the prompt from this UTF-8 file ('-' reads standard input).")
@model_options
@click.option("--mode", type=MODE_CHOICE, default="lossless", show_default=True, help=MODE_HELP)
@window_option(8, "Draft tokens proposed per cycle (W). Ignored by --mode target.")
@click.option("--top-k", type=click.IntRange(1), default=4, show_default=True,
              help="K for --mode topk.")
@click.option("--adaptive", is_flag=True,
              help="Adaptive speculation: the window follows the measured acceptance, from --window down to 0 "
                   "(plain target decoding) when drafting does not pay on this machine.")
@click.option("--judge", "judge_path", type=click.Path(path_type=Path),
              help="Judge artifact directory (judge.json + judge.safetensors), for --mode judge.")
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Judge threshold: accept a mismatch iff P(important) <= threshold. "
                   "[default: the artifact's calibrated threshold]")
@click.option("--ignore-judge-models", is_flag=True,
              help="Use a judge whose recorded model names differ from --draft/--target "
                   "(hidden sizes are still checked).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=256, show_default=True,
              help="Stop after this many generated tokens (EOS and --stop may end it sooner).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); the text ends before it.")
@click.option("--chat/--raw", default=True, show_default=True,
              help="Wrap the prompt in the tokenizer's chat template, or feed it raw.")
@click.option("--system", help="System message for --chat.")
@json_option("Print one JSON object: text, tokens, metrics.")
@progress_option("Show a progress bar on stderr while generating.")
def generate(prompt, prompt_file, target, draft, dtype, device, mode, window, top_k, adaptive, judge_path,
             threshold, ignore_judge_models, max_new_tokens, stop, chat, system, as_json, progress):
    """Generate a completion with speculative decoding and report its metrics.

    \b
    Example (embedded SmolLM2-135M-Instruct target and its default draft):
      autojudge-trt generate --prompt "A robe takes 2 bolts of blue fiber and half that much
      white fiber. How many bolts in total does it take?"
    """
    if (prompt is None) == (prompt_file is None):
        raise click.UsageError("give exactly one of --prompt or --prompt-file")
    try:
        text = prompt if prompt is not None else prompt_file.read()
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{prompt_file.name} is not UTF-8 text ({exc})") from exc
    if not text.strip():
        raise click.UsageError("the prompt is empty")
    if mode == "judge" and judge_path is None:
        raise click.UsageError("--mode judge needs --judge DIR (a judge artifact)")
    from tqdm import tqdm

    from autojudge.decoding import DecodeConfig, SpeculativeDecoder
    from autojudge.judge import Judge
    from autojudge.models import draft_spec_for, encode_prompt, load_draft, load_target, quiet_transformers

    draft = draft_spec_for(target, draft) if mode != "target" else None  # fail before loading anything
    quiet_transformers()
    judge = Judge.load(judge_path) if judge_path else None  # cheap: fail before loading models
    status(f"Loading target {target} ...")
    target_lm = load_target(target, dtype=dtype, device=device)
    draft_lm = None
    if mode != "target":
        status(f"Loading draft {draft} ...")
        draft_lm = load_draft(draft, target_lm)
    decoder = SpeculativeDecoder(target_lm, draft_lm, judge, check_judge_names=not ignore_judge_models)
    config = DecodeConfig(mode=mode, window=window, max_new_tokens=max_new_tokens, top_k=top_k,
                          threshold=threshold, stop=tuple(stop), adaptive=adaptive)
    prompt_ids = encode_prompt(target_lm.tokenizer, text, chat=chat, system=system)

    with tqdm(total=max_new_tokens, desc=f"{mode}", unit="tok", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        result = decoder.generate(prompt_ids, config, on_tokens=lambda ids, _: bar.update(len(ids)))

    if as_json:
        click.echo(json.dumps({**result.to_dict(), "target": target_lm.name,
                               "draft": draft_lm.name if draft_lm else None}, indent=2))
        return
    click.echo(result.text)
    _print_metrics(result)


def _print_metrics(result) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result.metrics
    table = Table(title="speculative decoding metrics", show_header=False)
    rows = [
        ("mode", m.mode),
        ("finish reason", result.finish_reason),
        ("tokens generated", m.num_generated_tokens),
        ("target calls", m.num_target_calls),
        ("draft calls", m.num_draft_calls),
        ("tau (tokens per target call, bonus incl.)", f"{m.mean_acceptance_length:.2f}"),
        ("draft acceptance rate", f"{m.draft_acceptance_rate:.1%}"),
        ("accepted mismatches (judge / top-K)", m.num_accepted_mismatches),
        ("accepted per position", " ".join(map(str, m.num_accepted_tokens_per_pos)) or "-"),
        ("wall time", f"{m.wall_time_s:.2f} s"),
        ("tokens/s", f"{m.tokens_per_s:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console(stderr=False).print(table)
