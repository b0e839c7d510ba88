"""Tokens/s of our decoder beside Hugging Face's, in one process, on the same prompts.

Methods, interleaved prompt by prompt so that machine drift hits all alike:

- ``hf_greedy``: ``target.generate(do_sample=False)``;
- ``ours_target``: our loop in mode ``target`` (plain greedy);
- ``hf_assisted@W``: ``target.generate(assistant_model=draft)`` with a constant window W
  (``num_assistant_tokens_schedule="constant"``, confidence early-exit off), the same draft;
- ``ours_lossless@W``: our loop in mode ``lossless`` with window W;
- with ``--plain-head``, also ``ours_*_plain_head``: the same with the screened greedy head
  off (full fp32 LM head), to measure what that optimisation brings.

Every method must produce the same tokens (greedy is greedy); the script checks it.

    python benchmarks/bench_decoder.py --prompts 8 --max-new-tokens 96 --windows 2,4,8
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import torch

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.tasks.gsm8k import load_questions


@click.command()
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", default="embedded", show_default=True)
@click.option("--data", default="test", show_default=True,
              help="A GSM8K split shipped with the package (train, test) or a GSM8K-style JSONL file.")
@click.option("--prompts", type=int, default=8, show_default=True)
@click.option("--max-new-tokens", type=int, default=96, show_default=True)
@click.option("--windows", default="2,4,8", show_default=True, help="Comma-separated W values.")
@click.option("--dtype", default="float32", show_default=True)
@click.option("--threads", type=int, default=0, help="torch threads (0: torch's default).")
@click.option("--plain-head", is_flag=True, help="Also time our loop with the full fp32 LM head.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
def main(target, draft, data, prompts, max_new_tokens, windows, dtype, threads, plain_head, out):
    quiet_transformers()
    if threads:
        torch.set_num_threads(threads)
    target_lm = load_target(target, dtype=dtype)
    draft_lm = load_draft(draft, target_lm)
    decoder = SpeculativeDecoder(target_lm, draft_lm)
    window_list = [int(w) for w in windows.split(",")]
    eos = sorted(target_lm.eos_token_ids)

    def hf_generate(ids, assistant_window=None):
        kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                      pad_token_id=eos[0])
        if assistant_window:
            cfg = draft_lm.model.generation_config
            cfg.num_assistant_tokens = assistant_window
            cfg.num_assistant_tokens_schedule = "constant"
            cfg.assistant_confidence_threshold = 0.0
            kwargs["assistant_model"] = draft_lm.model
        start = time.perf_counter()
        out_ids = target_lm.model.generate(torch.tensor([ids]), **kwargs)[0, len(ids):].tolist()
        return out_ids, time.perf_counter() - start

    def ours(ids, mode, window=8, screened=True):
        target_lm.screened_greedy = draft_lm.screened_greedy = screened
        r = decoder.generate(ids, DecodeConfig(mode=mode, window=window, max_new_tokens=max_new_tokens))
        return r.token_ids, r.metrics.wall_time_s, r.metrics

    methods = {"hf_greedy": lambda ids: hf_generate(ids) + (None,),
               "ours_target": lambda ids: ours(ids, "target")}
    if plain_head:
        methods["ours_target_plain_head"] = lambda ids: ours(ids, "target", screened=False)
    for w in window_list:
        methods[f"hf_assisted@{w}"] = lambda ids, w=w: hf_generate(ids, w) + (None,)
        methods[f"ours_lossless@{w}"] = lambda ids, w=w: ours(ids, "lossless", w)
        if plain_head:
            methods[f"ours_lossless@{w}_plain_head"] = lambda ids, w=w: ours(ids, "lossless", w, False)

    prompt_ids = [encode_prompt(target_lm.tokenizer, q) for q in load_questions(data, limit=prompts)]
    with torch.inference_mode():
        for fn in methods.values():  # warm-up
            fn(prompt_ids[0][:16])
        totals = {name: {"tokens": 0, "seconds": 0.0, "target_calls": 0, "identical": True}
                  for name in methods}
        for i, ids in enumerate(prompt_ids):
            reference = None
            for name, fn in methods.items():
                tokens, seconds, metrics = fn(ids)
                reference = tokens if reference is None else reference
                t = totals[name]
                t["tokens"] += len(tokens)
                t["seconds"] += seconds
                t["target_calls"] += metrics.num_target_calls if metrics else 0
                t["identical"] &= tokens == reference
            print(f"prompt {i + 1}/{len(prompt_ids)} done", file=sys.stderr)

    for t in totals.values():
        t["tokens_per_s"] = t["tokens"] / t["seconds"]
        t["tau"] = t["tokens"] / t["target_calls"] if t["target_calls"] else None
    base = totals["hf_greedy"]["tokens_per_s"]
    print(f"\n{'method':<28}{'tokens/s':>10}{'vs hf_greedy':>14}{'tau':>7}{'same tokens':>13}")
    for name, t in totals.items():
        tau = f"{t['tau']:.2f}" if t["tau"] else "-"
        print(f"{name:<28}{t['tokens_per_s']:>10.2f}{t['tokens_per_s'] / base:>13.2f}x{tau:>7}"
              f"{str(t['identical']):>13}")
    print()
    ratios = {}
    for w in window_list:
        ratio = totals[f"ours_lossless@{w}"]["tokens_per_s"] / totals[f"hf_assisted@{w}"]["tokens_per_s"]
        ratios[f"ours_lossless_vs_hf_assisted@{w}"] = ratio
        print(f"ours_lossless@{w} / hf_assisted@{w} = {ratio:.2f}x")
    ratios["ours_target_vs_hf_greedy"] = totals["ours_target"]["tokens_per_s"] / base
    print(f"ours_target / hf_greedy = {ratios['ours_target_vs_hf_greedy']:.2f}x")

    report = {"target": target_lm.name, "draft": draft_lm.name, "prompts": prompts,
              "max_new_tokens": max_new_tokens, "dtype": dtype, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "methods": totals, "ratios": ratios}
    if out:
        out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
