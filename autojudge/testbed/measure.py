"""What the testbed promises, measured: the target's accuracy on held-out problems, the draft's
greedy agreement with the target's own answers (overall, on wording, on answer-critical tokens),
and mining's labels against the ground truth of every mismatch (:func:`~autojudge.testbed.problems.meaning`).
"""

from __future__ import annotations

import torch

from autojudge.models import CausalLM, encode_prompt
from autojudge.tasks import Example
from autojudge.testbed.problems import meaning
from autojudge.testbed.task import Testbed


def target_answers(target: CausalLM, examples: list[Example], batch: int = 32) -> list[list[int]]:
    """The target's greedy answer ids (EOS included when it ended there), batched."""
    from autojudge.decoding import DecodeConfig, SpeculativeDecoder

    decoder, task = SpeculativeDecoder(target), Testbed()
    config = DecodeConfig(mode="target", max_new_tokens=task.max_new_tokens)
    answers = []
    for start in range(0, len(examples), batch):
        prompts = [encode_prompt(target.tokenizer, task.prompt(e)) for e in examples[start: start + batch]]
        answers += [r.token_ids for r in decoder.generate_batch(prompts, config)]
    return answers


@torch.inference_mode()
def pair_report(target: CausalLM, draft: CausalLM, examples: list[Example]) -> dict:
    """Target accuracy and teacher-forced draft agreement on ``examples`` (the target's answers):
    token for token overall, on wording and on answer-critical tokens, and in meaning (the
    fraction of positions where the draft's token would not change the answer)."""
    task, tokenizer = Testbed(), target.tokenizer
    answers = target_answers(target, examples)
    correct = sum(task.is_correct(e, tokenizer.decode(a)) for e, a in zip(examples, answers))
    agree = {"all": [0, 0], "wording": [0, 0], "critical": [0, 0], "meaning": [0, 0]}
    for example, answer in zip(examples, answers):
        prompt = encode_prompt(tokenizer, task.prompt(example))
        ids = torch.tensor([prompt + answer], device=draft.device)
        hidden = draft.hidden_states(ids, draft.new_cache())[:, len(prompt) - 1: -1]  # [1, A, Hd] before each token
        drafted = draft.greedy(hidden)[0].tolist()  # what decoding and mining see (greedy_vocab included)
        for t, d in zip(answer, drafted):
            kind = "wording" if meaning(tokenizer.convert_ids_to_tokens(t)) is None else "critical"
            for key, same in (("all", t == d), (kind, t == d), ("meaning", not critical(tokenizer, t, d))):
                agree[key][0] += same
                agree[key][1] += 1
    return {"examples": len(examples), "target_accuracy": correct / max(len(examples), 1),
            **{f"agreement_{k}": n / max(total, 1) for k, (n, total) in agree.items()},
            "answer_tokens": agree["all"][1] / max(len(examples), 1)}


def critical(tokenizer, target_token: int, draft_token: int) -> bool:
    """The ground truth of a mismatch: does the swap change an answer-critical token's meaning?"""
    t, d = tokenizer.convert_ids_to_tokens([target_token, draft_token])
    return meaning(t) != meaning(d)


def label_report(tokenizer, labels: list[dict]) -> dict:
    """Mining's labels (``MinedDataset.labels``) against the ground truth: precision and recall of "important".

    The ground truth is token-level (:func:`critical`): a swap that restates an operand wrongly
    counts as critical even when the target then repairs it and the answer stands; mining,
    which finishes the answer, is right there and the proxy is not (the few "misses" seen)."""
    tp = fp = fn = tn = 0
    for label in labels:
        truth = critical(tokenizer, label["target_token"], label["draft_token"])
        tp += truth and label["important"]
        fp += (not truth) and label["important"]
        fn += truth and not label["important"]
        tn += not truth and not label["important"]
    total = tp + fp + fn + tn

    def ratio(n: int, d: int) -> float | None:
        return n / d if d else None  # None: nothing to measure (no labels, none important, none critical)

    return {"labels": total, "important_fraction": ratio(tp + fp, total), "critical_fraction": ratio(tp + fn, total),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "agreement": ratio(tp + tn, total)}


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
