"""The testbed task: its problems as a :class:`~autojudge.tasks.base.Task` (``--task testbed``).

The result is the number after ``####``; it is determined as soon as that number is written
(the testbed's tokenizer writes every number as one word, so nothing can extend it). Splits
are ``lm`` (the pair's own training problems), ``train`` (mining) and ``test`` (held out),
each as long as asked: ``load(split, limit)`` generates problems 0..limit-1 (default 1,000).
"""

from __future__ import annotations

import re

from autojudge.tasks.base import Example, Task, TaskError
from autojudge.testbed.problems import SPLITS, problem

_FINAL = re.compile(r"####\s+(\d+)")
DEFAULT_SIZE = 1000


class Testbed(Task):
    name = "testbed"
    max_new_tokens = 48  # answers are ~32 tokens

    def load(self, split: str = "test", limit: int | None = None, offset: int = 0) -> list[Example]:
        if split not in SPLITS:
            raise TaskError(f"the testbed has splits {', '.join(SPLITS)}, not {split!r}")
        if offset < 0 or (limit is not None and limit < 0):
            raise TaskError(f"offset and limit must be >= 0 (got offset={offset}, limit={limit})")
        indices = range(offset, offset + (DEFAULT_SIZE if limit is None else limit))
        return [Example(id=f"testbed/{split}/{i}", question=(p := problem(split, i)).question, gold=str(p.answer))
                for i in indices]

    def prompt(self, example: Example) -> str:
        return example.question

    def result(self, example: Example, completion: str) -> str | None:
        final = _FINAL.search(completion)
        return final.group(1) if final else None

    def determined(self, example: Example, completion: str) -> bool:
        return _FINAL.search(completion) is not None
