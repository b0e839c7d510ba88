"""Mining's output: append-only shards, one JSONL line per prompt, written after its features
file (``shard-*.features/<index>.safetensors``, fp16, written atomically); the JSONL line is the
commit. A crash loses at most the prompts in flight; re-running resumes. Several processes or
hosts mine one directory with ``num_shards`` / ``shard_id``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from autojudge.errors import AutoJudgeError
from autojudge.features.files import features_bytes
from autojudge.mining.search import DEFAULT_LOOKAHEAD, mine_prompts
from autojudge.models import CausalLM
from autojudge.storage import append_records, atomic_write_bytes, drop_torn_tail, read_records
from autojudge.tasks import Example, Task

MINING_FORMAT = "autojudge.mining/v1"


def shard_name(shard_id: int, num_shards: int) -> str:
    return f"shard-{shard_id:05d}-of-{num_shards:05d}"


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    """All shards of a mining directory share one manifest (models, task, budget)."""
    path = out_dir / "mining.json"
    if path.exists():
        existing = json.loads(path.read_text())
        diff = {k: (existing.get(k), manifest.get(k)) for k in manifest if existing.get(k) != manifest.get(k)}
        if diff:  # a key a newer version added is absent (None) from older manifests: equal when unset
            raise AutoJudgeError(f"{out_dir} was mined with other settings {diff} (was, now); "
                                 "use another --out directory or the same settings to resume")
    else:
        atomic_write_bytes(path, json.dumps(manifest, indent=2).encode())


def mine(target: CausalLM, draft: CausalLM, task: Task, examples: list[Example], out_dir: Path,
         split: str, num_shards: int = 1, shard_id: int = 0, max_new_tokens: int | None = None,
         naive: bool = False, lookahead: int = DEFAULT_LOOKAHEAD, progress: bool = True,
         max_labels: int | None = None, batch_size: int = 1) -> dict:
    """Mine ``examples[i]`` for every ``i % num_shards == shard_id`` into ``out_dir``; resumable.
    With ``batch_size`` > 1 that many prompts are searched at once, their target forwards
    batched (:func:`~autojudge.mining.prefix_cache.run_batched`); labels are the same up to
    floating-point rounding, and prompts finish (and are written) out of order.
    Returns a summary (prompts, labels, important fraction, cost per prompt)."""
    if batch_size < 1:
        raise AutoJudgeError(f"--batch-size must be at least 1 (got {batch_size})")
    if not 0 <= shard_id < num_shards:
        raise AutoJudgeError(f"--shard-id must be in [0, {num_shards}) (got {shard_id})")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, {
        "format": MINING_FORMAT, "task": task.name, "split": split, "target": target.name,
        "target_hidden_size": target.hidden_size, "draft": draft.name,
        "draft_hidden_size": draft.hidden_size, "max_new_tokens": max_new_tokens,
        "naive": naive, "max_labels_per_prompt": max_labels,
    })  # the number of examples may grow between runs: more prompts extend the same directory
    name = shard_name(shard_id, num_shards)
    labels_path, features_dir = out_dir / f"{name}.jsonl", out_dir / f"{name}.features"
    features_dir.mkdir(exist_ok=True)
    drop_torn_tail(labels_path)
    done = {r["index"]: r for r in read_records(labels_path)}
    mine_ids = range(shard_id, len(examples), num_shards)
    todo = [i for i in mine_ids if i not in done]
    records = list(done.values())
    bar = tqdm(total=len(mine_ids), initial=len(mine_ids) - len(todo), desc=f"mining {name}",
               unit="prompt", disable=not progress, dynamic_ncols=True)
    bar.set_postfix(_progress(records))
    with open(labels_path, "a", encoding="utf-8") as out, torch.inference_mode():
        for i, mined in mine_prompts(target, draft, task, examples, todo, max_new_tokens, naive, lookahead,
                                     max_labels, batch_size):
            record = {"index": i, **mined.record}
            atomic_write_bytes(features_dir / f"{i:06d}.safetensors",
                               features_bytes(mined.draft_hidden, mined.target_hidden))
            append_records(out, [record])
            records.append(record)
            bar.update(1)
            bar.set_postfix(_progress(records))
    bar.close()
    return {"shard": name, **_summary(records)}


def _summary(records: list[dict]) -> dict:
    n = max(len(records), 1)
    labels = sum(len(r["labels"]) for r in records)
    return {
        "prompts": len(records), "labels": labels,
        "important_fraction": sum(r["num_important"] for r in records) / max(labels, 1),
        "target_forward_tokens_per_prompt": sum(r["target_forward_tokens"] for r in records) / n,
        "target_forward_calls_per_prompt": sum(r["target_forward_calls"] for r in records) / n,
        "seconds_per_prompt": sum(r["seconds"] for r in records) / n,
    }


def _progress(records: list[dict]) -> dict:
    summary = _summary(records)
    return {"labels": summary["labels"], "important": f"{summary['important_fraction']:.0%}"}
