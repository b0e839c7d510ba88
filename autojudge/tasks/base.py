"""The task interface: what mining, training and evaluation need to know about a task.

A task turns an example into a prompt, reads the *result* out of a completion (the final
number for GSM8K, the unit-test verdict for code) and says whether two results are the
same. Mining labels a mismatch important iff swapping in the draft token changes the
result of the target's own answer (ALGORITHM.md section 1), so ``result`` must be a pure
function of the completion text.

Glossary
- **result**: what the task extracts from a completion and compares; hashable, JSON-able,
  ``None`` when the completion has none (no number, no code block).
- **determined**: the result can no longer change however the completion continues (the
  final-answer line is complete, the code block is closed). Mining and evaluation stop
  generating there: the tokens after it cannot change the answer.
- **gold**: the dataset's reference answer; only evaluation uses it.

Add a task without editing the miner: subclass :class:`Task` (or write any object with
these methods) and name it on the CLI as ``--task package.module:attribute`` (an instance,
or a class instantiated without arguments), or register it under the entry-point group
``autojudge.tasks`` in your package's metadata.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable

from autojudge.errors import AutoJudgeError
from autojudge.storage import asset

DATA_DIR = asset("task_data")  # the task files shipped with the package


class TaskError(AutoJudgeError):
    """A task could not be found, or its data could not be read."""


class TaskOutputError(AutoJudgeError):
    """A task failed on one example's model output: recorded against that example, never fatal."""


class Guarded:
    """``task`` whose calls on model output (result, same, determined, is_correct) turn any failure
    into :class:`TaskOutputError`, so that mining and evaluation record it against the example
    and go on. A missing sandbox is not model output: it still stops the run."""

    def __init__(self, task: Task):
        self.task = task

    def __getattr__(self, name: str):
        return getattr(self.task, name)

    def _call(self, name: str, *args):
        from autojudge.tasks.sandbox import SandboxUnavailable

        try:
            return getattr(self.task, name)(*args)
        except SandboxUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the task's own code on this output
            raise TaskOutputError(f"task {self.task.name!r}.{name} failed: {type(exc).__name__}: {exc}") from exc

    def result(self, example: Example, completion: str) -> Hashable:
        return self._call("result", example, completion)

    def same(self, a: Hashable, b: Hashable) -> bool:
        return bool(self._call("same", a, b))

    def determined(self, example: Example, completion: str) -> bool:
        return bool(self._call("determined", example, completion))

    def is_correct(self, example: Example, completion: str) -> bool:
        return bool(self._call("is_correct", example, completion))


@dataclass(frozen=True)
class Example:
    """One task input: ``id`` is unique within its dataset; ``gold`` is task-specific."""

    id: str
    question: str
    gold: Any = None
    meta: dict = field(default_factory=dict, compare=False)


class Task:
    """Base class with the defaults most tasks keep. Subclasses set ``name`` and implement
    ``load``, ``prompt`` and ``result``; ``determined`` and ``is_correct`` have defaults."""

    name: str = "task"
    system: str | None = None  # system message for chat templates, if any
    max_new_tokens: int = 512  # a budget that lets a typical answer finish

    def load(self, split: str, limit: int | None = None, offset: int = 0) -> list[Example]:
        """Examples of ``split`` (a named split such as "train"/"test", or a file path)."""
        raise NotImplementedError

    def prompt(self, example: Example) -> str:
        """The user message for ``example`` (the tokenizer's chat template is applied later)."""
        raise NotImplementedError

    def result(self, example: Example, completion: str) -> Hashable:
        """The task's result of ``completion`` (None when it has none)."""
        raise NotImplementedError

    def determined(self, example: Example, completion: str) -> bool:
        """True once no continuation of ``completion`` can change its result."""
        return False

    def same(self, a: Hashable, b: Hashable) -> bool:
        """Do two results count as the same answer?"""
        return a == b

    def is_correct(self, example: Example, completion: str) -> bool:
        """Is ``completion``'s result the gold answer?"""
        return self.result(example, completion) == example.gold


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """Objects of a JSONL file (``.gz`` too) that have all ``required`` fields; a bad line
    is an error naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise TaskError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    return rows


def window(rows: list, limit: int | None, offset: int) -> list:
    if offset < 0 or (limit is not None and limit < 0):
        raise TaskError(f"offset and limit must be >= 0 (got offset={offset}, limit={limit})")
    return rows[offset: None if limit is None else offset + limit]
