"""Distil a small draft from its target, and the draft artifact it produces.

The student is the target's architecture with few decoder layers, initialised from chosen
target layers. It **shares** the target's token embedding and LM head (frozen, never
stored: taken from the target at load time), so only its layers and final norm are trained
and shipped. The objective is exactly what speculative decoding rewards: predict the
target's greedy token. On the target's own greedy answers (teacher data, computed once by
:mod:`autojudge.distill.teacher`) that token is simply the next token of the sequence, so training
needs no teacher forward at all: cross-entropy on the completion positions.

Training is resumable: every ``checkpoint_every`` steps the trainable tensors and the AdamW
moments go to ``checkpoint.safetensors`` (atomically, never pickle) with the step in
``checkpoint.json``; the batch of step s is drawn from a generator seeded by (seed, s), so a
resumed run sees the same batches as an uninterrupted one.

A draft artifact is a directory with ``draft.safetensors`` (the trained layers and norm,
fp16, and optionally ``greedy_vocab``) and ``draft.json`` (format, target name and shape,
layer count, sha256 of the weights, how it was made).

**Greedy vocabulary** (optional, on by default in ``draft distill``): the ascending ids of
every token in the teacher answers. The draft proposes only those, computing just their
rows of the (shared) LM head: on GSM8K ~3k of 49k rows, so the head, a third of a draft
step, becomes ~15x cheaper. The draft can then never propose a token the target did not
use in its answers; such positions become certain rejections (lossless stays exact).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from tqdm import tqdm

from autojudge.errors import AutoJudgeError
from autojudge.models import CausalLM
from autojudge.models.layer_subset import build_student, trainable_state
from autojudge.storage import atomic_write_bytes


@dataclass(frozen=True)
class DistillConfig:
    init_layers: tuple[int, ...] = (0, 1, 2, 3)  # target layers the student starts from
    steps: int = 1500
    batch_sequences: int = 16
    lr: float = 1e-3
    warmup_steps: int = 50
    seed: int = 0
    checkpoint_every: int = 50


# ----------------------------------------------------------------------------- the student


# ----------------------------------------------------------------------------- training


def _batch(records: list[dict], indices: list[int], pad: int):
    """Right-padded [B, T] input ids and [B, T] labels (-100 outside completions)."""
    seqs = [records[i]["prompt_ids"] + records[i]["completion_ids"] for i in indices]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for row, i in enumerate(indices):
        prompt, completion = records[i]["prompt_ids"], records[i]["completion_ids"]
        seq = prompt + completion
        ids[row, : len(seq)] = torch.tensor(seq)
        # position p predicts token p + 1: label the positions whose next token is the target's
        labels[row, len(prompt) - 1: len(seq) - 1] = torch.tensor(completion)
    return ids, labels


def _lr(step: int, config: DistillConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_checkpoint(directory: Path, student: CausalLM, optimizer, step: int,
                     config: DistillConfig, history: list) -> None:
    tensors = {f"param/{n}": p.detach().contiguous() for n, p in trainable_state(student).items()}
    for n, p in trainable_state(student).items():
        state = optimizer.state.get(p)
        if state:
            tensors[f"adam_m/{n}"] = state["exp_avg"].contiguous()
            tensors[f"adam_v/{n}"] = state["exp_avg_sq"].contiguous()
    atomic_write_bytes(directory / "checkpoint.safetensors", safetensors_save(tensors))
    meta = {"step": step, "config": asdict(config), "history": history}
    atomic_write_bytes(directory / "checkpoint.json", json.dumps(meta).encode())


def _load_checkpoint(directory: Path, student: CausalLM, optimizer, config: DistillConfig):
    meta_path = directory / "checkpoint.json"
    if not meta_path.exists():
        return 0, []
    meta = json.loads(meta_path.read_text())
    if meta["config"] != json.loads(json.dumps(asdict(config))):
        raise AutoJudgeError(
            f"{directory} holds a checkpoint made with other settings ({meta['config']}); "
            "use another --out directory or the same settings to resume"
        )
    tensors = safetensors_load((directory / "checkpoint.safetensors").read_bytes())
    params = trainable_state(student)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    for n, p in params.items():
        if f"adam_m/{n}" in tensors:
            optimizer.state[p] = {"step": torch.tensor(float(meta["step"])),
                                  "exp_avg": tensors[f"adam_m/{n}"].clone(),
                                  "exp_avg_sq": tensors[f"adam_v/{n}"].clone()}
    return meta["step"], meta["history"]


@torch.enable_grad()
def train_student(target: CausalLM, records: list[dict], directory: Path,
                  config: DistillConfig = DistillConfig(), progress: bool = True) -> CausalLM:
    """Distil a student on teacher ``records``; checkpoints in ``directory``; resumable."""
    if not records:
        raise AutoJudgeError("no teacher records to train on")
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    student = build_student(target, config.init_layers)
    student.model.train()
    params = list(trainable_state(student).values())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.98))
    step, history = _load_checkpoint(directory, student, optimizer, config)
    pad = target.tokenizer.pad_token_id or 0
    head = student.model.get_output_embeddings().weight  # [V, H] frozen, shared
    bar = tqdm(total=config.steps, initial=step, desc="distilling", unit="step", disable=not progress)
    window_loss, window_acc, start = [], [], time.perf_counter()
    while step < config.steps:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        indices = torch.randint(len(records), (config.batch_sequences,), generator=generator).tolist()
        ids, labels = _batch(records, indices, pad)
        ids, labels = ids.to(target.device), labels.to(target.device)
        hidden = student.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        keep = labels != -100  # [B, T]
        logits = F.linear(hidden[keep], head)  # [N, V] only where a label exists
        loss = F.cross_entropy(logits, labels[keep])
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        window_loss.append(loss.item())
        window_acc.append((logits.argmax(-1) == labels[keep]).float().mean().item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(window_loss) / len(window_loss):.3f}",
                        agree=f"{sum(window_acc) / len(window_acc):.1%}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            history.append({"step": step, "loss": sum(window_loss) / len(window_loss),
                            "train_agreement": sum(window_acc) / len(window_acc),
                            "seconds": time.perf_counter() - start})
            window_loss, window_acc, start = [], [], time.perf_counter()
            _save_checkpoint(directory, student, optimizer, step, config, history)
    bar.close()
    student.model.eval()
    for p in params:
        p.requires_grad_(False)
    return student


# ----------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def greedy_agreement(draft: CausalLM, records: list[dict]) -> float:
    """Fraction of completion positions where the draft's greedy token is the target's
    (teacher-forced on the target's own greedy answers)."""
    agree = total = 0
    for record in records:
        prompt, completion = record["prompt_ids"], record["completion_ids"]
        ids = torch.tensor([prompt + completion], device=draft.device)
        hidden = draft.hidden_states(ids, draft.new_cache())[:, len(prompt) - 1: -1]  # [1, C, H]
        predicted = draft.greedy(hidden)[0]
        agree += int((predicted == torch.tensor(completion, device=draft.device)).sum())
        total += len(completion)
    return agree / max(total, 1)


def teacher_vocabulary(records: list[dict], eos_token_ids) -> torch.Tensor:
    """[K] ascending ids of every token the target emitted in ``records`` (and EOS)."""
    ids = {t for r in records for t in r["completion_ids"]} | set(eos_token_ids)
    return torch.tensor(sorted(ids), dtype=torch.long)


