"""Reading mined labels back: every shard of a mining directory (or its merged copy) as one dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autojudge.errors import AutoJudgeError
from autojudge.features.files import features_bytes, read_features
from autojudge.storage import atomic_write_bytes, read_records


@dataclass
class MinedDataset:
    """Every label of a mining directory, in prompt order."""

    labels: list[dict]  # {"index", "example_id", "pos", "draft_token", "target_token", "important"}
    draft_hidden: torch.Tensor  # [N, Hd] fp16
    target_hidden: torch.Tensor  # [N, Ht] fp16
    manifest: dict
    # by prompt index: {"example_id", "prompt_len", "final_ids"} (the answer the search ended with);
    # empty for a merged dataset written before merges kept them
    prompts: dict[int, dict] = field(default_factory=dict)

    @property
    def important(self) -> torch.Tensor:  # [N] bool
        return torch.tensor([label["important"] for label in self.labels], dtype=torch.bool)

    @property
    def prompt_index(self) -> torch.Tensor:  # [N] int64: which prompt each label came from
        return torch.tensor([label["index"] for label in self.labels], dtype=torch.long)


def read_mined(out_dir: Path) -> MinedDataset:
    """Join all shards of ``out_dir`` (or read its merged ``dataset.*`` when present)."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / "mining.json"
    if not manifest_path.exists():
        raise AutoJudgeError(f"{out_dir} is not a mining directory (no mining.json); "
                             "run `autojudge-trt mine --out DIR` first")
    manifest = json.loads(manifest_path.read_text())
    shard_files = sorted(out_dir.glob("shard-*.jsonl"))
    merged = out_dir / "dataset.safetensors"
    if not shard_files and merged.exists():
        draft_hidden, target_hidden = read_features(merged)
        labels = read_records(out_dir / "dataset.jsonl")
        if len(labels) != target_hidden.shape[0]:
            raise AutoJudgeError(f"{out_dir}/dataset.* disagree: merge again")
        prompts_path = out_dir / PROMPTS_FILE
        prompts = {r["index"]: r for r in read_records(prompts_path)} if prompts_path.exists() else {}
        return MinedDataset(labels, draft_hidden, target_hidden, manifest, prompts)
    if not shard_files:
        raise AutoJudgeError(f"{out_dir} has no shards yet: run `autojudge-trt mine --out {out_dir}`")
    by_index: dict[int, tuple[dict, Path]] = {}
    for path in shard_files:
        for record in read_records(path):
            if record["index"] in by_index:
                raise AutoJudgeError(f"prompt {record['index']} is in both {by_index[record['index']][1].name} "
                                     f"and {path.name}: shards of different --num-shards were mixed")
            by_index[record["index"]] = (record, path)
    labels, draft_parts, target_parts, prompts = [], [], [], {}
    for index in sorted(by_index):
        record, path = by_index[index]
        prompts[index] = _prompt_record(index, record)
        features_path = path.with_suffix(".features") / f"{index:06d}.safetensors"
        try:
            draft_hidden, target_hidden = read_features(features_path)
        except (FileNotFoundError, OSError) as exc:
            raise AutoJudgeError(f"{features_path} is missing or unreadable ({exc}); delete line of "
                                 f"prompt {index} in {path} and re-run mining to recompute it") from exc
        if target_hidden.shape[0] != len(record["labels"]):
            raise AutoJudgeError(f"{features_path} has {target_hidden.shape[0]} rows for "
                                 f"{len(record['labels'])} labels")
        labels += [{"index": index, "example_id": record["example_id"], **label} for label in record["labels"]]
        draft_parts.append(draft_hidden)
        target_parts.append(target_hidden)
    return MinedDataset(labels, torch.cat(draft_parts), torch.cat(target_parts), manifest, prompts)


PROMPTS_FILE = "prompts.jsonl"


def _prompt_record(index: int, record: dict) -> dict:
    return {"index": index, "example_id": record["example_id"], "prompt_len": record["prompt_len"],
            "final_ids": record["final_ids"]}


def merge(out_dir: Path, dest: Path) -> MinedDataset:
    """Join the shards of ``out_dir`` into ``dest``: mining.json, dataset.jsonl (one label
    per line), prompts.jsonl (each prompt's final answer, which the scalar features are computed
    from) and dataset.safetensors (written last: its presence marks a complete merge)."""
    data = read_mined(out_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset.safetensors").unlink(missing_ok=True)
    atomic_write_bytes(dest / "mining.json", json.dumps(data.manifest, indent=2).encode())
    lines = "".join(json.dumps(label, separators=(",", ":")) + "\n" for label in data.labels)
    atomic_write_bytes(dest / "dataset.jsonl", lines.encode())
    prompts = "".join(json.dumps(data.prompts[i], separators=(",", ":")) + "\n" for i in sorted(data.prompts))
    atomic_write_bytes(dest / PROMPTS_FILE, prompts.encode())
    atomic_write_bytes(dest / "dataset.safetensors", features_bytes(data.draft_hidden, data.target_hidden))
    return data
