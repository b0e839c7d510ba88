"""How good and how cheap is a draft? Three numbers, measured in one process:

1. greedy top-1 agreement with the target on the target's own answers to GSM8K test
   questions (teacher-forced; the answers are cached in --teacher-file);
2. the cost of one drafted token relative to one target forward for one token (both with a
   warm KV cache of a typical prompt length, median of many repetitions);
3. tokens/s of ``lossless`` at each window beside ``target`` on the same prompts,
   interleaved prompt by prompt, with the outputs checked identical.

    python benchmarks/bench_draft.py --draft embedded --prompts 50 --speed-prompts 6 --windows 2,3,4,6
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click
import torch

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.distill.teacher import generate_teacher_data
from autojudge.distill.training import greedy_agreement
from autojudge.models import crop_cache, encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.tasks.gsm8k import format_prompt, load_questions


@torch.inference_mode()
def step_cost_ms(lm, prompt: list[int], repeats: int = 60) -> float:
    """Median wall time of one single-token step (decoder + greedy head) after ``prompt``."""
    cache = lm.new_cache()
    lm.hidden_states(torch.tensor([prompt]), cache)
    length = cache.get_seq_length()
    token = torch.tensor([[prompt[-1]]])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lm.greedy(lm.hidden_states(token, cache))
        times.append(time.perf_counter() - start)
        crop_cache(cache, length)
    return 1000 * statistics.median(times)


@click.command()
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", default="embedded", show_default=True)
@click.option("--data", default="test", show_default=True, help="A GSM8K split shipped with the package (train, test) or a GSM8K-style JSONL file.")
@click.option("--prompts", type=int, default=50, show_default=True, help="Questions for agreement.")
@click.option("--teacher-file", type=click.Path(path_type=Path), default=Path("out/teacher-test.jsonl"),
              show_default=True, help="Cache of the target's answers (reused, extended).")
@click.option("--speed-prompts", type=int, default=6, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--windows", default="2,3,4,6", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
def main(target, draft, data, prompts, teacher_file, speed_prompts, max_new_tokens, windows, out):
    quiet_transformers()
    target_lm = load_target(target, device="cpu")
    draft_lm = load_draft(draft, target_lm)
    questions = load_questions(data, limit=max(prompts, speed_prompts))
    prompt_ids = [encode_prompt(target_lm.tokenizer, format_prompt(q)) for q in questions]

    records = generate_teacher_data(target_lm, prompt_ids[:prompts], teacher_file, max_new_tokens=256)
    agreement = greedy_agreement(draft_lm, records)

    target_ms = step_cost_ms(target_lm, prompt_ids[0])
    draft_ms = step_cost_ms(draft_lm, prompt_ids[0])

    decoder = SpeculativeDecoder(target_lm, draft_lm)
    window_list = [int(w) for w in windows.split(",")]
    configs = {"target": DecodeConfig(mode="target", max_new_tokens=max_new_tokens)}
    configs.update({f"lossless@{w}": DecodeConfig(mode="lossless", window=w, max_new_tokens=max_new_tokens)
                    for w in window_list})
    totals = {name: {"tokens": 0, "seconds": 0.0, "target_calls": 0, "identical": True} for name in configs}
    decoder.generate(prompt_ids[0][:16], DecodeConfig(max_new_tokens=8))  # warm-up
    for i, ids in enumerate(prompt_ids[:speed_prompts]):
        reference = None
        for name, config in configs.items():
            result = decoder.generate(ids, config)
            reference = result.token_ids if reference is None else reference
            t = totals[name]
            t["tokens"] += result.metrics.num_generated_tokens
            t["seconds"] += result.metrics.wall_time_s
            t["target_calls"] += result.metrics.num_target_calls
            t["identical"] &= result.token_ids == reference
        print(f"speed prompt {i + 1}/{speed_prompts} done", file=sys.stderr)
    for t in totals.values():
        t["tokens_per_s"] = t["tokens"] / t["seconds"]
        t["tau"] = t["tokens"] / t["target_calls"]
    base = totals["target"]["tokens_per_s"]
    best = max((n for n in totals if n != "target"), key=lambda n: totals[n]["tokens_per_s"])

    print(f"\ndraft {draft_lm.name} for {target_lm.name}")
    print(f"greedy agreement on the target's answers: {agreement:.1%} "
          f"({sum(len(r['completion_ids']) for r in records)} tokens, {len(records)} GSM8K test questions)")
    print(f"one drafted token: {draft_ms:.2f} ms = {draft_ms / target_ms:.1%} of a target step ({target_ms:.2f} ms)")
    print(f"\n{'method':<14}{'tokens/s':>10}{'vs target':>11}{'tau':>7}{'identical':>11}")
    for name, t in totals.items():
        print(f"{name:<14}{t['tokens_per_s']:>10.2f}{t['tokens_per_s'] / base:>10.2f}x{t['tau']:>7.2f}"
              f"{str(t['identical']):>11}")
    print(f"\nbest: {best} at {totals[best]['tokens_per_s'] / base:.2f}x target-only")
    report = {"target": target_lm.name, "draft": draft_lm.name, "agreement": agreement,
              "agreement_prompts": len(records), "draft_step_ms": draft_ms, "target_step_ms": target_ms,
              "cost_ratio": draft_ms / target_ms, "speed": totals, "best_window": best,
              "best_speedup": totals[best]["tokens_per_s"] / base, "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    if out:
        out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
