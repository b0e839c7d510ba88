"""Teacher data for distillation: the target's own greedy answers, computed once.

Records go to an append-only JSONL file, one line per prompt
(``{"index": i, "prompt_ids": [...], "completion_ids": [...]}``), flushed and fsynced
after each batch: an interrupted run loses at most the batch in flight, and re-running
skips every index already written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from autojudge.errors import AutoJudgeError
from autojudge.models import CausalLM
from autojudge.storage import append_records, drop_torn_tail, read_records


def generate_teacher_data(target: CausalLM, prompts: Sequence[list[int]], path: Path,
                          max_new_tokens: int = 256, batch_size: int = 32,
                          progress: bool = True) -> list[dict]:
    """Greedy completions of ``prompts`` by ``target``, appended to ``path``; resumable."""
    drop_torn_tail(path)
    done: dict[int, dict] = {}  # index -> record, for the prompts asked for
    for record in read_records(path):
        i = record["index"]
        if i < len(prompts):
            if record["prompt_ids"] != list(prompts[i]):
                raise AutoJudgeError(
                    f"{path} answers another prompt at index {i} (other questions, prompt format or "
                    "tokenizer): use a new output directory"
                )
            done[i] = record
    todo = [i for i in range(len(prompts)) if i not in done]
    # Similar lengths together: less padding. Order only affects speed, not the records.
    todo.sort(key=lambda i: len(prompts[i]))
    eos = sorted(target.eos_token_ids)
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else eos[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(prompts), initial=len(done), desc="teacher answers", unit="prompt",
               disable=not progress)
    with open(path, "a", encoding="utf-8") as out, torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, T] left-padded
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            generated = target.model.generate(
                input_ids=ids.to(target.device), attention_mask=mask.to(target.device),
                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad,
            )[:, width:].tolist()
            for i, completion in zip(batch, generated):
                end = next((k + 1 for k, t in enumerate(completion) if t in target.eos_token_ids),
                           len(completion))
                done[i] = {"index": i, "prompt_ids": list(prompts[i]), "completion_ids": completion[:end]}
            append_records(out, (done[i] for i in batch))
            bar.update(len(batch))
    bar.close()
    return [done[i] for i in sorted(done)]
