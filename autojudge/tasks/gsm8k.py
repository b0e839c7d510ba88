"""GSM8K: 0-shot chat prompts that ask to end with "The final answer is N".

The result is the final number: the first "The final answer is N" if the completion has
one, else its last number; normalised (``$``, thousands commas, a trailing ``.`` and
whitespace dropped; ``18.0`` -> ``18``) so that equal amounts compare equal. The gold
answer is the number after ``#### `` in the dataset's ``answer`` field.

Data: the official GSM8K files ship with the package (MIT, ``data/gsm8k/LICENSE``): splits
``train`` (7,473) and ``test`` (1,319). Any JSONL file with ``question`` and ``answer``
fields works as a split too.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext
from pathlib import Path

from autojudge.tasks.base import DATA_DIR, Example, Task, TaskError, read_jsonl, window

INSTRUCTION = ("Solve the following math problem step by step. "
               "End your answer with: The final answer is N.")

# Linear-time patterns: no two adjacent parts can match the same characters (a whitespace run
# belongs to exactly one \s*), so a failed match never backtracks over a run more than once.
_NUMBER = r"(?:-\s*)?(?:\$\s*)?\d[\d,]*(?:\.\d+)?"
_LEAD = r"final answer is\s*(?::\s*)?(?:\*+\s*)?"  # "final answer is: **$1,234"
_FINAL = re.compile(_LEAD + "(" + _NUMBER + ")", re.IGNORECASE)
# A final answer is complete once a character follows that cannot extend the number
# (a "." only counts when what follows it is not a digit).
_FINAL_DONE = re.compile(_LEAD + "(" + _NUMBER + r")(?:[^\d,.]|[.,](?:\D))", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")  # \d: Unicode digits too (Decimal reads them)


def normalize(number: str) -> str | None:
    """'$1,234.50' -> '1234.5'; '18.' -> '18'; None when it is not a number."""
    text = number.replace("$", "").replace(",", "").strip().rstrip(".")
    text = re.sub(r"\s+", "", text)
    if not _PLAIN_NUMBER.fullmatch(text):  # no exponents, inf or nan spellings
        return None
    with localcontext() as context:
        context.prec = len(text) + 2  # exact for any length
        value = Decimal(text)
        if value == value.to_integral_value():
            return str(value.quantize(Decimal(1)))
        return format(value.normalize(), "f")


def extract_answer(completion: str) -> str | None:
    """The normalised final number of a completion (see the module docstring)."""
    final = _FINAL.search(completion)
    if final:
        return normalize(final.group(1))
    numbers = _ANY_NUMBER.findall(completion)
    return normalize(numbers[-1]) if numbers else None


def gold_answer(answer_field: str) -> str:
    """'... #### 1,234' -> '1234'."""
    _, sep, tail = answer_field.rpartition("####")
    value = normalize(tail) if sep else None
    if value is None:
        raise TaskError(f"GSM8K answer without a '#### N' line: {answer_field[-60:]!r}")
    return value


def format_prompt(question: str) -> str:
    """The user message for one question (the chat template is applied by the tokenizer)."""
    return f"{INSTRUCTION}\n\n{question.strip()}"


class GSM8K(Task):
    name = "gsm8k"
    max_new_tokens = 384

    def load(self, split: str = "test", limit: int | None = None, offset: int = 0) -> list[Example]:
        path = DATA_DIR / "gsm8k" / f"{split}.jsonl.gz" if split in ("train", "test") else Path(split)
        rows = window(read_jsonl(path, ("question", "answer")), limit, offset)
        tag = split if split in ("train", "test") else path.stem
        return [Example(id=f"gsm8k/{tag}/{offset + i}", question=row["question"],
                        gold=gold_answer(row["answer"])) for i, row in enumerate(rows)]

    def prompt(self, example: Example) -> str:
        return format_prompt(example.question)

    def result(self, example: Example, completion: str) -> str | None:
        return extract_answer(completion)

    def determined(self, example: Example, completion: str) -> bool:
        return _FINAL_DONE.search(completion) is not None


def load_questions(path: str | Path, limit: int | None = None, offset: int = 0) -> list[str]:
    """Questions of a GSM8K-style JSONL file (or a split name)."""
    return [e.question for e in GSM8K().load(str(path), limit, offset)]
