"""Prompt sets the benchmarks share: GSM8K test questions (the embedded draft's home ground) and
off-distribution chat prompts, where the embedded draft rarely agrees with its target."""

from __future__ import annotations

CHAT = ["Write a haiku about autumn rain.", "What is 7 times 8?", "Name three famous painters and one work each.",
        "Explain in two sentences why the sky is blue.", "Translate 'good morning, friends' into French.",
        "Give me a recipe idea with eggs and spinach.", "What is the capital of Australia, and why not Sydney?",
        "Suggest a name for a grey cat."]


def gsm8k(limit: int) -> list[str]:
    from autojudge.tasks.gsm8k import load_questions

    return load_questions("test", limit=limit)
