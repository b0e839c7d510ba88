"""The accuracy/speed trade-off: decode a test split in several modes and compare.

Every run decodes every example; per run we report gold accuracy, agreement with the
target's own answers (the target-only run), tau (tokens per target call, bonus included),
target calls per generated token, and tokens/s. Results go to an append-only JSONL file
(resumable: finished (run, example) pairs are not redone), a JSON report and a PNG plot of
accuracy against tau (the shape of the AutoJudge paper's Figure 3).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.evaluation.plot import plot_tradeoff
from autojudge.models import encode_prompt
from autojudge.storage import append_records, atomic_write_bytes, drop_torn_tail, jsonable, read_records
from autojudge.tasks import Example, Guarded, Task, TaskOutputError

TARGET_RUN = "target"


@dataclass(frozen=True)
class Run:
    """One decoding configuration of the sweep."""

    mode: str  # target | lossless | topk | judge | fly
    window: int = 8
    top_k: int | None = None
    threshold: float | None = None  # judge: None = the artifact's calibrated threshold
    fly_entropy: float | None = None  # fly: the entropy gate (nats)

    @property
    def name(self) -> str:
        if self.mode == "target":
            return TARGET_RUN
        if self.mode == "topk":
            return f"topk@{self.top_k}/W{self.window}"
        if self.mode == "judge":
            thr = "calibrated" if self.threshold is None else f"{self.threshold:g}"
            return f"judge@{thr}/W{self.window}"
        if self.mode == "fly":
            return f"fly@{self.fly_entropy:g}/W{self.window}"
        return f"lossless/W{self.window}"

    def config(self, max_new_tokens: int) -> DecodeConfig:
        return DecodeConfig(mode=self.mode, window=self.window, max_new_tokens=max_new_tokens,
                            top_k=self.top_k or 1, threshold=self.threshold,
                            **({"fly_entropy": self.fly_entropy} if self.fly_entropy is not None else {}))


def sweep(window: int, top_ks: list[int], thresholds: list[float | None], with_judge: bool,
          fly_entropies: list[float] = ()) -> list[Run]:
    """target, lossless, topk at each K, FLy at each entropy gate and (with a judge) judge at each threshold."""
    runs = [Run("target"), Run("lossless", window)]
    runs += [Run("topk", window, top_k=k) for k in top_ks]
    runs += [Run("fly", window, fly_entropy=e) for e in fly_entropies]
    if with_judge:
        runs += [Run("judge", window, threshold=t) for t in thresholds]
    return runs


def evaluate(decoder: SpeculativeDecoder, task: Task, examples: list[Example], runs: list[Run],
             out_dir: Path, max_new_tokens: int | None = None, progress: bool = True,
             batch_size: int = 1) -> dict:
    """Decode ``examples`` with every run (resuming ``out_dir/results.jsonl``) and write
    ``report.json`` and ``tradeoff.png``. Returns the report.

    ``batch_size`` > 1 decodes that many examples at once (one batch of the decoding loop):
    the same tokens up to float rounding, several times the throughput; each record's
    ``seconds`` is then its share of the batch's wall time."""
    if runs[0].name != TARGET_RUN:
        runs = [Run("target"), *[r for r in runs if r.name != TARGET_RUN]]
    if batch_size < 1:
        raise AutoJudgeError(f"batch_size must be >= 1, got {batch_size}")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.jsonl"
    drop_torn_tail(path)
    done = {(r["run"], r["example_id"]): r for r in read_records(path)}
    judge_id = decoder.judge.fingerprint if decoder.judge else None
    _check_same_judge(done.values(), runs, judge_id, path)
    tokenizer = decoder.target.tokenizer
    total = len(runs) * len(examples)
    bar = tqdm(total=total, initial=sum((run.name, e.id) in done for run in runs for e in examples),
               desc="evaluating", unit="run", disable=not progress, dynamic_ncols=True)
    with open(path, "a", encoding="utf-8") as f:
        # Chunk-major: an interrupted sweep has whole chunks of examples done in every run.
        for chunk in (examples[i: i + batch_size] for i in range(0, len(examples), batch_size)):
            prompts = {e.id: encode_prompt(tokenizer, task.prompt(e), system=task.system) for e in chunk}
            for run in runs:
                todo = [e for e in chunk if (run.name, e.id) not in done]
                if not todo:
                    continue
                config = run.config(max_new_tokens)
                results = decoder.generate_batch([prompts[e.id] for e in todo], config)
                records = []
                for example, result in zip(todo, results):
                    m = result.metrics
                    records.append({
                        "run": run.name, "example_id": example.id, **_score(task, example, result.text),
                        "tokens": m.num_generated_tokens, "target_calls": m.num_target_calls,
                        "accepted_mismatches": m.num_accepted_mismatches,
                        "seconds": m.wall_time_s / len(todo), "batch": len(todo),
                        **({"judge": judge_id} if run.mode == "judge" else {})})
                    done[(run.name, example.id)] = records[-1]
                append_records(f, records)
                bar.update(len(records))
    bar.close()
    report = summarize(runs, examples, done, task)
    report["task"] = task.name
    report["target"], report["draft"] = decoder.target.name, decoder.draft.name if decoder.draft else None
    report["max_new_tokens"] = max_new_tokens
    report["batch_size"] = batch_size
    atomic_write_bytes(out_dir / "report.json", json.dumps(report, indent=2).encode())
    plot_tradeoff(report, out_dir / "tradeoff.png")
    report["plot"] = str(out_dir / "tradeoff.png")
    return report


def _score(task: Task, example: Example, text: str) -> dict:
    """The record's result and verdict; a task that fails on this output scores it wrong and says why."""
    guarded = Guarded(task)
    try:
        return {"result": jsonable(guarded.result(example, text)), "correct": guarded.is_correct(example, text)}
    except TaskOutputError as exc:
        return {"result": None, "correct": False, "error": str(exc)}


def _check_same_judge(records, runs: list[Run], judge_id: str | None, path: Path) -> None:
    """Judge runs resume only with the judge that made them (the run name alone, e.g.
    judge@calibrated/W4, says nothing about which judge)."""
    judge_runs = {run.name for run in runs if run.mode == "judge"}
    other = {r.get("judge") for r in records if r["run"] in judge_runs} - {judge_id}
    if other:
        raise AutoJudgeError(
            f"{path} holds judge runs of another judge ({', '.join(sorted(map(str, other)))}; this one is "
            f"{judge_id}): evaluate this judge into another --out directory (records of the target, lossless "
            "and top-K runs do not depend on the judge and may be copied there to skip them)")


def summarize(runs: list[Run], examples: list[Example], done: dict, task: Task) -> dict:
    reference = {e.id: done[(TARGET_RUN, e.id)]["result"] for e in examples}
    rows = []
    for run in runs:
        records = [done[(run.name, e.id)] for e in examples]
        tokens = sum(r["tokens"] for r in records)
        calls = sum(r["target_calls"] for r in records)
        seconds = sum(r["seconds"] for r in records)
        rows.append({
            **asdict(run), "name": run.name, "examples": len(records),
            "accuracy": sum(r["correct"] for r in records) / len(records),
            "agreement_with_target": sum(task.same(r["result"], reference[e.id])
                                         for r, e in zip(records, examples)) / len(records),
            "tau": tokens / calls if calls else 0.0,
            "target_calls_per_token": calls / tokens if tokens else 0.0,
            "tokens_per_s": tokens / seconds if seconds else 0.0,
            "accepted_mismatches": sum(r["accepted_mismatches"] for r in records),
        })
    return {"runs": rows, "examples": len(examples)}
