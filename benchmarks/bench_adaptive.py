"""Adaptive speculation beside fixed-window lossless and the target alone, batch 1, in one process.

Two prompt sets, interleaved prompt by prompt so machine drift hits every method alike:
GSM8K test questions (the draft's home ground) and off-distribution chat prompts (where the
embedded draft rarely agrees). Methods: ``target`` (plain greedy), ``lossless@W`` (fixed
window) and ``adaptive@W`` (window 0..W from the measured acceptance and the cycle cost this
machine measures first). All three must give the same tokens; the script checks it.

    python benchmarks/bench_adaptive.py --prompts 8 --max-new-tokens 96 --window 8
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from prompts import CHAT, gsm8k

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers

@click.command()
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", default="embedded", show_default=True)
@click.option("--prompts", type=int, default=8, show_default=True, help="Per prompt set.")
@click.option("--max-new-tokens", type=int, default=96, show_default=True)
@click.option("--window", type=int, default=8, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
def main(target, draft, prompts, max_new_tokens, window, out):
    quiet_transformers()
    target_lm = load_target(target, device="cpu")
    decoder = SpeculativeDecoder(target_lm, load_draft(draft, target_lm))
    tokenizer = target_lm.tokenizer
    sets = {"gsm8k": gsm8k(prompts), "chat": CHAT[:prompts]}
    configs = {"target": DecodeConfig(mode="target", max_new_tokens=max_new_tokens),
               f"lossless@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens),
               f"adaptive@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens,
                                                  adaptive=True)}
    warm = encode_prompt(tokenizer, sets["gsm8k"][0])
    decoder.generate(warm, configs["target"])  # warm up, and measure the cycle cost once
    cost = decoder.cycle_cost(warm, window)
    report = {"cycle_cost": cost.__dict__, "window": window, "max_new_tokens": max_new_tokens, "sets": {}}
    for name, texts in sets.items():
        totals = {method: {"tokens": 0, "seconds": 0.0, "draft_tokens": 0, "calls": 0} for method in configs}
        for text in texts:
            ids = encode_prompt(tokenizer, text)
            outputs = {}
            for method, config in configs.items():
                start = time.perf_counter()
                result = decoder.generate(ids, config)
                seconds = time.perf_counter() - start
                outputs[method] = result.token_ids
                t = totals[method]
                t["tokens"] += len(result.token_ids)
                t["seconds"] += seconds
                t["draft_tokens"] += result.metrics.num_draft_tokens
                t["calls"] += result.metrics.num_target_calls
            if len({tuple(v) for v in outputs.values()}) != 1:
                raise SystemExit(f"methods disagree on {text!r}: greedy must be greedy")
        base = totals["target"]["tokens"] / totals["target"]["seconds"]
        rows = {}
        for method, t in totals.items():
            speed = t["tokens"] / t["seconds"]
            rows[method] = {"tokens_per_s": speed, "vs_target": speed / base, "tau": t["tokens"] / t["calls"],
                            "mean_window": t["draft_tokens"] / t["calls"]}
            print(f"{name:6s} {method:12s} {speed:7.1f} tokens/s  {speed / base:5.2f}x target  "
                  f"tau {rows[method]['tau']:.2f}  mean window {rows[method]['mean_window']:.2f}")
        report["sets"][name] = rows
    print(json.dumps({"cycle_cost": report["cycle_cost"]}))
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
