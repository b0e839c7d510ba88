"""The scalar features (:mod:`autojudge.features.scalars`) of mined labels, computed after mining.

The search decides left to right, so the answer a prompt's search ended with (``final_ids``)
holds, before each label's position, exactly the prefix that label was mined after. One
teacher-forced target pass over prompt + answer therefore gives the target's logits at every
label's position, the same logits the verification step reads (the target's greedy token there
is the label's ``target_token``: counted, as a check, in ``greedy_agreement``). The window
position of each label (for ``window_agreement``) is where the decode a perfect judge makes at
``window`` would draft it (:func:`~autojudge.features.scalars.perfect_judge_windows`).

The result is cached beside the labels (``scalars-w<window>.safetensors``, written atomically,
keyed by a digest of the labels): a mining directory that grows gets it recomputed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from tqdm import tqdm

from autojudge.errors import AutoJudgeError
from autojudge.features.scalars import (
    SCALAR_FEATURES,
    WINDOW_AGREEMENT,
    agreement_from_window,
    logit_statistics,
    perfect_judge_windows,
)
from autojudge.mining.dataset import MinedDataset
from autojudge.models import CausalLM, encode_prompt
from autojudge.storage import atomic_write_bytes
from autojudge.tasks import Task


@dataclass
class MinedScalars:
    values: torch.Tensor  # [N, len(SCALAR_FEATURES)] fp32, columns in SCALAR_FEATURES order
    greedy_agreement: float  # fraction of labels whose target_token is the recomputed greedy token
    window: int

    def columns(self, names) -> torch.Tensor:  # [N, len(names)]
        return self.values[:, [SCALAR_FEATURES.index(name) for name in names]]


def _digest(data: MinedDataset) -> str:
    key = hashlib.sha256()
    for label in data.labels:
        key.update(f"{label['index']}/{label['pos']}/{label['draft_token']}/{int(label['important'])};".encode())
    return key.hexdigest()[:16]


def task_prompts(target: CausalLM, task: Task, data: MinedDataset) -> dict[int, list[int]]:
    """Each mined prompt's token ids, re-encoded from the task's split as mining encoded them
    (checked against the example ids and prompt lengths mining recorded)."""
    if data.manifest.get("task") != task.name or data.manifest.get("target") != target.name:
        raise AutoJudgeError(f"the labels were mined with task {data.manifest.get('task')!r} and target "
                             f"{data.manifest.get('target')!r}, not {task.name!r} and {target.name!r}")
    if not data.prompts:
        raise AutoJudgeError("these labels carry no final answers (a merge made before scalar features existed): "
                             "merge the mining directory again, or train on it directly")
    split, _, offset = str(data.manifest.get("split", "")).rpartition("@")
    if not split or not offset.isdigit():
        raise AutoJudgeError(f"the mining manifest's split {data.manifest.get('split')!r} is not 'SPLIT@OFFSET'; "
                             "re-mine with this version")
    examples = task.load(split, limit=max(data.prompts) + 1, offset=int(offset))
    prompts = {}
    for index, record in data.prompts.items():
        example = examples[index] if index < len(examples) else None
        if example is None or example.id != record["example_id"]:
            raise AutoJudgeError(f"prompt {index} was mined from example {record['example_id']!r}, but the "
                                 f"split now has {example.id if example else 'nothing'!r} there")
        ids = encode_prompt(target.tokenizer, task.prompt(example), system=task.system)
        if len(ids) != record["prompt_len"]:
            raise AutoJudgeError(f"prompt {index} now encodes to {len(ids)} tokens, mined with "
                                 f"{record['prompt_len']}: another tokenizer or prompt format")
        prompts[index] = ids
    return prompts


def mined_scalar_features(target: CausalLM, data: MinedDataset, prompts: Mapping[int, list[int]], window: int,
                          mining_dir: Path | None = None, progress: bool = True) -> MinedScalars:
    """Every scalar feature of every label of ``data`` (mined with ``target`` from ``prompts``, by
    index: :func:`task_prompts`), at ``window``; read from / written to ``mining_dir``'s cache."""
    cache = None if mining_dir is None else Path(mining_dir) / f"scalars-w{window}.safetensors"
    digest = _digest(data)
    if cache is not None and cache.exists():
        tensors = load_file(cache)
        meta = json.loads(bytes(tensors["meta"].tolist()).decode())
        if meta["digest"] == digest and meta["names"] == list(SCALAR_FEATURES):
            return MinedScalars(tensors["values"], meta["greedy_agreement"], window)
    by_prompt: dict[int, list[int]] = {}
    for row, label in enumerate(data.labels):
        by_prompt.setdefault(label["index"], []).append(row)
    values = torch.zeros(len(data.labels), len(SCALAR_FEATURES))  # [N, 5]
    agree = 0
    with torch.inference_mode():
        for index, rows in tqdm(sorted(by_prompt.items()), desc="scalar features", unit="prompt",
                                disable=not progress, dynamic_ncols=True):
            prompt, answer = list(prompts[index]), data.prompts[index]["final_ids"]
            labels = [data.labels[r] for r in rows]
            last = max(label["pos"] for label in labels)
            ids = torch.tensor([prompt + answer[:last]], device=target.device)  # [1, P + last]
            hidden = target.hidden_states(ids, target.new_cache())[0]  # [P + last, H]
            at = torch.tensor([len(prompt) - 1 + label["pos"] for label in labels], device=target.device)  # [n]
            logits = target.logits(hidden[at][None])[0].float()  # [n, V] the target's at each label's position
            drafted = torch.tensor([label["draft_token"] for label in labels], device=target.device)  # [n]
            stats = logit_statistics(logits, drafted)  # each [n]
            agree += int((logits.argmax(-1).cpu() == torch.tensor([lb["target_token"] for lb in labels])).sum())
            where = perfect_judge_windows(len(answer), {lb["pos"]: bool(lb["important"]) for lb in labels}, window)
            stats[WINDOW_AGREEMENT] = torch.tensor([agreement_from_window(*where[lb["pos"]]) for lb in labels])
            values[rows] = torch.stack([stats[name].cpu() for name in SCALAR_FEATURES], dim=-1)  # [n, 5]
    result = MinedScalars(values, agree / max(len(data.labels), 1), window)
    if cache is not None:
        meta = json.dumps({"digest": digest, "names": list(SCALAR_FEATURES), "window": window,
                           "greedy_agreement": result.greedy_agreement}).encode()
        atomic_write_bytes(cache, save({"values": values.contiguous(), "meta": torch.tensor(list(meta),
                                                                                            dtype=torch.uint8)}))
    return result
