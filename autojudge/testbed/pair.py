"""The testbed's target/draft pair: a word-level tokenizer and two small Llama models trained
from scratch on the testbed's problems, each in its own style (:mod:`autojudge.testbed.problems`).

``make_pair(out)`` writes ``out/target`` and ``out/draft``, two ordinary checkpoint directories
(``--target out/target --draft out/draft`` anywhere a model spec is taken). The pair shipped in
the package was made by ``autojudge-trt testbed make-pair`` with the defaults below (seeded: the
same command makes the same weights on the same torch build).

Training sees fresh problems every step (split ``lm``: never mined, never evaluated), with the
style's wording replaced at random in ``noise`` of the slots, so that a model reads an answer in
another style (the judge's accepted swaps) as it reads its own; the loss is on answer tokens only.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from autojudge.storage import atomic_directory
from autojudge.testbed.problems import DRAFT_STYLE, NUMBER_SLOTS, SLOTS, TARGET_STYLE, Style, problem, vocabulary

SPECIALS = ("<pad>", "<unk>", "<eos>")
ANSWER_PROMPT = "answer:"  # ends every prompt (the chat template's generation prompt)
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}" + ANSWER_PROMPT + "{% endif %}")


@dataclass(frozen=True)
class ModelConfig:
    layers: int
    hidden: int
    heads: int
    steps: int
    lr: float = 3e-3
    batch: int = 64
    noise: float = 0.1  # fraction of wording slots written in a random style
    seed: int = 0


TARGET = ModelConfig(layers=3, hidden=128, heads=4, steps=1200, batch=32)
DRAFT = ModelConfig(layers=2, hidden=64, heads=2, steps=400, batch=32, seed=1)


def make_tokenizer():
    """A word-level tokenizer over the testbed's vocabulary (every number 0..99 one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [*SPECIALS, ANSWER_PROMPT, *vocabulary()]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<eos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _noisy(style: Style, noise: float, rng: random.Random) -> Style:
    """``style`` with each wording slot and each number's spelling changed with probability ``noise``."""
    shift = {s: style.shift.get(s, 0) + (rng.randrange(1, 4) if rng.random() < noise else 0) for s in SLOTS}
    return Style(shift, frozenset(k for k in range(NUMBER_SLOTS) if (k in style.spell) != (rng.random() < noise)))


def is_testbed_tokenizer(tokenizer) -> bool:
    """Does ``tokenizer`` have the testbed's vocabulary, id for id?"""
    from autojudge.models import first_vocabulary_difference

    return first_vocabulary_difference(tokenizer.get_vocab(), make_tokenizer().get_vocab()) is None


def training_batch(tokenizer, style: Style, config: ModelConfig, step: int):
    """[B, T] input ids and [B, T] labels (-100 outside answers) for ``step`` (seeded by it)."""
    rng = random.Random(f"{config.seed}/{step}")
    problems = [problem("lm", step * config.batch + row) for row in range(config.batch)]
    # what encode_prompt makes of the chat template, without rendering it per example (tested equal)
    prompts = tokenizer([f"{p.question} {ANSWER_PROMPT}" for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer([p.solution(_noisy(style, config.noise, rng)) for p in problems],
                        add_special_tokens=False)["input_ids"]
    seqs = [prompt + answer + [tokenizer.eos_token_id] for prompt, answer in zip(prompts, answers)]
    starts = [len(prompt) for prompt in prompts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for row, (seq, start) in enumerate(zip(seqs, starts)):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start - 1: len(seq) - 1] = torch.tensor(seq[start:])  # position p predicts p + 1
    return ids, labels


def train_model(tokenizer, style: Style, config: ModelConfig, progress: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=3 * config.hidden,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warmup = max(config.steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s / config.steps, 1.0)))))
    model.train()
    bar = tqdm(range(config.steps), desc=f"training {config.layers}x{config.hidden}", disable=not progress,
               dynamic_ncols=True)
    with torch.enable_grad():  # whatever the caller's mode
        _train(model, tokenizer, style, config, optimizer, schedule, bar)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _train(model, tokenizer, style, config, optimizer, schedule, bar) -> None:
    for step in bar:
        ids, labels = training_batch(tokenizer, style, config, step)
        logits = model(input_ids=ids).logits  # right padding: causal attention never reads it for a label
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def make_pair(out: Path, target: ModelConfig = TARGET, draft: ModelConfig = DRAFT, progress: bool = True,
              threads: int = 1) -> dict:
    """Train the target and the draft and write them to ``out/target`` and ``out/draft``
    (``threads``: torch's intra-op threads while training; the same count gives the same weights)."""
    tokenizer = make_tokenizer()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _make_pair(out, tokenizer, target, draft, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _make_pair(out: Path, tokenizer, target: ModelConfig, draft: ModelConfig, progress: bool) -> dict:
    made = {}
    with atomic_directory(out) as tmp:  # both or nothing
        for name, style, config in (("target", TARGET_STYLE, target), ("draft", DRAFT_STYLE, draft)):
            start = time.perf_counter()
            model = train_model(tokenizer, style, config, progress)
            model.save_pretrained(tmp / name)
            tokenizer.save_pretrained(tmp / name)
            made[name] = {**asdict(config), "seconds": round(time.perf_counter() - start, 1),
                          "parameters": sum(p.numel() for p in model.parameters())}
            provenance = {"style": {"shift": style.shift, "spell": sorted(style.spell)}, **made[name]}
            (tmp / name / "testbed.json").write_text(json.dumps(provenance, indent=2))
    return made

