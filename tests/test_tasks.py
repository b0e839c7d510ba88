"""Task interface: GSM8K answer extraction, HumanEval verdicts, custom tasks by import path."""

import pytest

from autojudge.tasks import TaskError, get_task
from autojudge.tasks.gsm8k import GSM8K, extract_answer, gold_answer, normalize


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7.\nThe final answer is 7.", "7"),
    ("The final answer is $1,234.", "1234"),
    ("The final answer is: **42**", "42"),
    ("The final answer is 18.50 dollars", "18.5"),
    ("The final answer is -3", "-3"),
    ("first 12 then 15, so 18 cookies", "18"),  # no phrase: the last number
    ("The final answer is 5. Check: 2 + 3 = 5, not 6", "5"),  # the phrase wins over later numbers
    ("It costs $2,500.00.", "2500"),
    ("no number here", None),
])
def test_gsm8k_extraction_on_tricky_strings(text, expected):
    assert extract_answer(text) == expected


def test_normalisation_and_gold():
    assert normalize(" $1,000.0 ") == normalize("1000") == "1000"
    assert normalize("abc") is None
    assert gold_answer("She makes 9 * 2 = $18.\n#### 1,018") == "1018"
    with pytest.raises(TaskError, match="####"):
        gold_answer("no marker")


@pytest.mark.parametrize("text, done", [
    ("The final answer is 18", False),       # 180 may follow
    ("The final answer is 18.", False),      # 18.5 may follow
    ("The final answer is 18.\n", True),
    ("The final answer is 18 apples", True),
    ("I think 18.", False),
])
def test_gsm8k_result_is_determined_once_the_number_cannot_grow(text, done):
    assert GSM8K().determined(None, text) is done


def test_gsm8k_ships_its_data_and_reads_local_files(tmp_path):
    task = get_task("gsm8k")
    test = task.load("test", limit=3, offset=1)
    assert [e.id for e in test] == ["gsm8k/test/1", "gsm8k/test/2", "gsm8k/test/3"]
    assert test[0].gold == "3" and task.is_correct(test[0], "... The final answer is 3.")
    assert len(task.load("train")) == 7473
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(TaskError, match="bad.jsonl:2: missing field"):
        task.load(str(bad))


def test_humaneval_reference_solutions_pass_and_wrong_ones_fail():
    from autojudge.tasks.humaneval import canonical_completion

    task = get_task("humaneval")
    problems = task.load(limit=3)
    for p in problems:
        assert task.result(p, canonical_completion(p)) is True
    entry = problems[0].meta["entry_point"]
    assert task.result(problems[0], f"```python\ndef {entry}(*args):\n    return None\n```") is False
    assert task.result(problems[0], "```python\nwhile True:\n    pass\n```") is False  # timeout
    assert task.determined(problems[0], "```python\nx = 1\n```") and not task.determined(problems[0], "```python\nx")


@pytest.mark.parametrize("escape", [
    "import sys\nsys.exit(0)",  # exits with status 0 before the tests run
    "import os\nos._exit(0)",
    "def check(candidate):\n    pass",  # a check of its own (the problem's tests come after it and win)
    "import builtins\nbuiltins.exit = None\nraise SystemExit(0)",
    "print('\\n' + '0' * 32)",  # a proof-shaped line, then the real (failing) tests
])
def test_humaneval_code_that_exits_early_or_forges_a_pass_fails(escape):
    """A completion that never lets the problem's tests run to their end is a failure, even
    when the program ends with status 0."""
    task = get_task("humaneval")
    problem = task.load(limit=1)[0]
    entry = problem.meta["entry_point"]
    completion = f"```python\n{escape}\ndef {entry}(*args):\n    return None\n```"
    assert task.result(problem, completion) is False


class Parity:
    name = "parity"

    def load(self, split, limit=None, offset=0): return []
    def prompt(self, example): return example.question
    def result(self, example, completion): return len(completion) % 2
    def determined(self, example, completion): return False
    def same(self, a, b): return a == b
    def is_correct(self, example, completion): return True


parity = Parity()


def test_custom_task_by_import_path_and_clear_errors():
    assert get_task(f"{__name__}:Parity").name == "parity"
    assert get_task(f"{__name__}:parity") is parity
    with pytest.raises(TaskError, match="unknown task 'nope'.*gsm8k"):
        get_task("nope")
    with pytest.raises(TaskError, match="cannot import"):
        get_task("no_such_module:Task")
    with pytest.raises(TaskError, match="lacks"):
        get_task(f"{__name__}:pytest")
