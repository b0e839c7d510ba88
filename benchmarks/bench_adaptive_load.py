"""Adaptive speculation in a running batch under load, in one process.

The served model's batcher (:class:`autojudge.serving.batcher.ContinuousBatcher`) without the
server around it. Methods: ``target`` (plain greedy), ``lossless@W`` (fixed window) and
``adaptive@W`` (window 0..W per row, capped for the batch by the cycle cost). At every concurrency
the methods take turns on one batcher, each turn the same burst of ``c x --per-client`` GSM8K test
questions through ``c`` client threads (as ``bench_serving.py`` sends them), the order rotated turn
by turn, so the machine's drift hits them alike; a method's throughput is its tokens over its turns'
time. ``--closed-loop`` runs, at more than one client, one closed-loop run per method after another
on a fresh batcher each instead. Every cycle of a method's turns is tallied (rows, window, seconds,
:class:`autojudge.decoding.loop.CycleRecord`), so a gap between methods can be read cycle by cycle:
how many cycles drafted, what they cost, what the rest cost. Runs are repeated ``--rounds`` times,
the methods' order rotated each round; each cell reports the median round and the spread. Every
lossless and adaptive answer must equal the target's greedy answer (the script checks it).

Without the tritonserver, its clients and their IPC on the same cores, this isolates what the
schedule itself costs or gains; ``bench_serving.py`` is the served measurement.

    python benchmarks/bench_adaptive_load.py --concurrency 1,4,16 --seconds 20 --rounds 3
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

import click
from clients import pooled, run_clients, take_turns
from prompts import CHAT, gsm8k

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.decoding.loop import CycleRecord
from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
from autojudge.models.model_thread import ModelThread
from autojudge.serving.batcher import ContinuousBatcher


def closed_loop(batcher: ContinuousBatcher, prompts: list[list[int]], config: DecodeConfig, clients: int,
                seconds: float, warmup: float, expected: dict[int, list[int]] | None) -> dict:
    """``clients`` threads submit prompts one after another; the tokens committed between ``warmup``
    and ``warmup + seconds`` after the start, per second (answers still running count their part),
    and how many finished answers were not the expected tokens."""
    done: list[tuple[int, list[int], float, float]] = []  # (prompt index, tokens, tau, mean window)
    lock, start = threading.Lock(), time.perf_counter()
    count_from, stop_at, counted = start + warmup, start + warmup + seconds, [0]

    def on_tokens(ids, metrics) -> None:  # on the batch thread
        if count_from <= time.perf_counter() <= stop_at:
            counted[0] += len(ids)

    def client(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            result = batcher.generate(prompts[i % len(prompts)], config, on_tokens=on_tokens, timeout=600)
            m = result.metrics
            with lock:
                done.append((i % len(prompts), result.token_ids, m.mean_acceptance_length,
                             m.num_draft_tokens / max(m.num_target_calls, 1)))
            i += clients

    run_clients(client, clients)
    wrong = sum(expected is not None and tokens != expected[i] for i, tokens, _, _ in done)
    return {"tokens_per_s": counted[0] / seconds, "answers": len(done), "wrong": wrong,
            "tau": statistics.fmean(x for *_, x, _ in done) if done else 0.0,
            "mean_window": statistics.fmean(x for *_, x in done) if done else 0.0}


class CycleTally:
    """Each cycle's record (``ContinuousBatcher(on_cycle=...)``) under the (method, turn) being sent:
    the methods take turns, one burst at a time, so every cycle belongs to one method's turn."""

    def __init__(self):
        self.key: tuple[str, int] | None = None
        self.records: dict[tuple[str, int], list[CycleRecord]] = {}

    def __call__(self, record: CycleRecord) -> None:  # on the batch thread
        self.records.setdefault(self.key, []).append(record)

    def summary(self, method: str) -> dict:
        """A method's measured turns (the first, unmeasured turn left out), cycle by cycle in sum."""
        cycles = [r for (m, turn), records in self.records.items() if m == method and turn > 0 for r in records]
        drafting = [r for r in cycles if r.window]
        return {"cycles": len(cycles), "cycle_s": sum(r.seconds for r in cycles),
                "mean_rows": statistics.fmean(r.rows for r in cycles) if cycles else 0.0,
                "drafting_cycles": len(drafting), "drafting_cycle_s": sum(r.seconds for r in drafting),
                "drafting_rows": sum(r.drafting for r in drafting), "read_apart_s": sum(r.read_s for r in cycles)}


@click.command()
@click.option("--target", default="embedded", show_default=True)
@click.option("--draft", default="embedded", show_default=True)
@click.option("--questions", type=int, default=16, show_default=True, help="Distinct GSM8K test questions cycled.")
@click.option("--prompts", "prompt_set", type=click.Choice(["gsm8k", "chat"]), default="gsm8k", show_default=True,
              help="GSM8K test questions, or off-distribution chat prompts (the draft rarely agrees).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--window", type=int, default=4, show_default=True)
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma-separated client counts.")
@click.option("--seconds", type=float, default=20.0, show_default=True,
              help="Measured per method and run (the methods take turns until each has had about this long).")
@click.option("--per-client", type=int, default=1, show_default=True,
              help="At more than one client, requests per client in each method's turn.")
@click.option("--closed-loop", "one_after_another", is_flag=True,
              help="At more than one client, one closed-loop run per method after another (a fresh batcher each, "
                   "tokens streamed in --seconds after --warmup) instead of taking turns burst by burst.")
@click.option("--warmup", type=float, default=3.0, show_default=True,
              help="With --closed-loop: seconds at the start of each run whose tokens are not counted.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Repeats of every (concurrency, method).")
@click.option("--max-batch", type=int, default=16, show_default=True, help="The batcher's batch rows.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results as JSON here.")
def main(target, draft, questions, prompt_set, max_new_tokens, window, concurrency, seconds, per_client, one_after_another,
         warmup, rounds, max_batch, out):
    quiet_transformers()
    models = ModelThread()  # loads, checks and decodes: every torch call on one thread, as the server does

    def load() -> SpeculativeDecoder:
        target_lm = load_target(target, device="cpu")
        return SpeculativeDecoder(target_lm, load_draft(draft, target_lm))

    decoder = models.call(load)
    texts = gsm8k(questions) if prompt_set == "gsm8k" else CHAT
    prompts = [encode_prompt(decoder.backend.tokenizer, q) for q in texts]
    configs = {"target": DecodeConfig(mode="target", max_new_tokens=max_new_tokens),
               f"lossless@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens),
               f"adaptive@{window}": DecodeConfig(mode="lossless", window=window, max_new_tokens=max_new_tokens,
                                                  adaptive=True)}
    expected = {i: r.token_ids for i, r in enumerate(models.call(decoder.generate_batch, prompts, configs["target"]))}
    cost_prompt = encode_prompt(decoder.backend.tokenizer, "Hello! How are you today?")  # as the served model does
    levels = [int(c) for c in concurrency.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {str(c): {m: [] for m in configs} for c in levels}

    def measure(config: DecodeConfig, clients: int, seconds: float, warm: float, check) -> tuple[dict, ContinuousBatcher]:
        """One closed-loop run on a fresh batcher: its observed costs start from the machine's model."""
        batcher = ContinuousBatcher(decoder, max_batch=max_batch, max_queue=64, cost_prompt=cost_prompt,
                                    cost_window=window, thread=models)
        try:
            return closed_loop(batcher, prompts, config, clients, seconds, warm, check), batcher
        finally:
            batcher.close()

    for config in configs.values():  # unmeasured: a fresh process's first runs are slower (caches, allocator)
        measure(config, max(levels), 2.0, 0.0, None)
    def observed(batcher: ContinuousBatcher) -> dict[str, float]:
        """(batch rows)x(window) -> the cycle's observed seconds, at the batcher's end."""
        return {f"{b}x{w}": s for (b, w), s in sorted(getattr(batcher.cost, "seen", {}).items())}

    def taking_turns(methods: list[str], seconds: float, clients: int) -> dict[str, dict]:
        """The methods take turns on one batcher, burst by burst (one request at one client; at c,
        c x ``per_client`` requests through c clients), every cycle tallied under its method's turn."""
        tally = CycleTally()
        batcher = ContinuousBatcher(decoder, max_batch=max_batch, max_queue=64, cost_prompt=cost_prompt,
                                    cost_window=window, thread=models, on_cycle=tally)
        per = per_client if clients > 1 else 1  # requests per client in a turn

        def send(method: str, k: int) -> dict:
            tally.key = (method, k // (clients * per))  # (every request of a burst has the same method and turn)
            start = time.perf_counter()
            result = batcher.generate(prompts[k % len(prompts)], configs[method], timeout=600)
            m = result.metrics
            return {"tokens": len(result.token_ids), "latency": time.perf_counter() - start,
                    "wrong": result.token_ids != expected[k % len(prompts)], "tau": m.mean_acceptance_length,
                    "window": m.num_draft_tokens / max(m.num_target_calls, 1)}

        try:
            turns = take_turns(send, methods, seconds * len(methods), clients, per)
        finally:
            batcher.close()
        results = {}
        for method, taken in turns.items():
            busy, done = pooled(taken)
            results[method] = {"tokens_per_s": sum(r["tokens"] for r in done) / busy,
                               "answers": len(done), "wrong": sum(r["wrong"] for r in done),
                               "tau": statistics.fmean(r["tau"] for r in done),
                               "mean_window": statistics.fmean(r["window"] for r in done),
                               "turns_s": busy, "cycles": tally.summary(method), "observed_cycle_s": observed(batcher)}
        return results

    for r in range(rounds):
        for c in levels:
            order = list(configs)[r % len(configs):] + list(configs)[:r % len(configs)]
            if c == 1 or not one_after_another:  # the methods take turns burst by burst, on one batcher
                results = taking_turns(order, seconds, c)
            else:
                results = {}
                for method in order:
                    results[method], batcher = measure(configs[method], c, seconds, warmup, expected)
                    results[method]["observed_cycle_s"] = observed(batcher)
            for method, result in results.items():
                runs[str(c)][method].append(result)
                cycles = result.get("cycles")
                drafted = "" if cycles is None else (
                    f"  cycles {cycles['cycles']} ({cycles['cycle_s']:.1f} s, {cycles['mean_rows']:.1f} rows), "
                    f"drafting {cycles['drafting_cycles']} ({cycles['drafting_cycle_s']:.1f} s)")
                print(f"round {r} clients {c:2d} {method:12s} {result['tokens_per_s']:6.1f} tokens/s  "
                      f"tau {result['tau']:.2f}  window {result['mean_window']:.2f}  wrong {result['wrong']}{drafted}",
                      flush=True)
    report = {"cycle_cost": models.call(decoder.cycle_cost, cost_prompt, window, batch=max_batch).__dict__,
              "window": window, "max_new_tokens": max_new_tokens, "prompts": prompt_set, "seconds": seconds,
              "per_client": per_client, "closed_loop": one_after_another,
              "rounds": rounds, "runs": runs, "summary": {}}
    for c in levels:
        base = statistics.median(run["tokens_per_s"] for run in runs[str(c)]["target"])
        for method in configs:
            speeds = [run["tokens_per_s"] for run in runs[str(c)][method]]
            ratios = sorted(s / t["tokens_per_s"] for s, t in zip(speeds, runs[str(c)]["target"]))
            row = {"tokens_per_s": statistics.median(speeds), "vs_target": statistics.median(speeds) / base,
                   "vs_target_per_round": ratios, "wrong": sum(run["wrong"] for run in runs[str(c)][method])}
            report["summary"].setdefault(str(c), {})[method] = row
            print(f"clients {c:2d} {method:12s} {row['tokens_per_s']:6.1f} tokens/s  {row['vs_target']:5.2f}x target"
                  f"  (per round {', '.join(f'{x:.2f}' for x in ratios)})  wrong {row['wrong']}")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
