"""GSM8K prompts: 0-shot chat, asking the model to end with "The final answer is N"."""

from __future__ import annotations

import json
from pathlib import Path

INSTRUCTION = ("Solve the following math problem step by step. "
               "End your answer with: The final answer is N.")


def format_prompt(question: str) -> str:
    """The user message for one question (the chat template is applied by the tokenizer)."""
    return f"{INSTRUCTION}\n\n{question.strip()}"


def load_questions(path: str | Path, limit: int | None = None, offset: int = 0) -> list[str]:
    """Questions from a GSM8K-style JSONL file (one object with a "question" per line)."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                questions.append(json.loads(line)["question"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'question' field") from exc
    return questions[offset: None if limit is None else offset + limit]
