"""Parsers and validators of model output and of requests are total and linear: any input
gives a result or the project's own error, in time linear in its length (fuzzed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autojudge.decoding.config import MAX_WINDOW
from autojudge.serving.requests import RequestError, ServeDefaults, parse_request
from autojudge.tasks.gsm8k import GSM8K, extract_answer, normalize
from autojudge.tasks.humaneval import HumanEval, extract_code

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text shaped like model output: answer phrases, digits of any script, fences, blank runs.
pieces = st.sampled_from(["The final answer is", "final answer is:", "**", "$", "-", ",", ".", "e5", "inf", "nan",
                          "NaN", "Infinity", "```", "```python\n", "\n", " " * 50, "\t", "٣", "४", "١٢", "0", "7",
                          "1234567890" * 5, "18.0", "x"])
model_text = st.lists(st.one_of(pieces, st.text(max_size=20)), max_size=30).map("".join)


@FUZZ
@given(model_text)
def test_gsm8k_extraction_is_total(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and normalize(answer) == answer)
    task = GSM8K()
    assert isinstance(task.determined(None, text), bool)
    assert task.same(answer, extract_answer(text))


@FUZZ
@given(st.text(max_size=200))
def test_normalize_is_total(text):
    value = normalize(text)
    assert value is None or isinstance(value, str)


@pytest.mark.parametrize("number, expected", [
    ("$1,234.50", "1234.5"), ("18.", "18"), ("18.0", "18"), ("-  5", "-5"), ("٣٤", "34"),
    ("1" * 300, "1" * 300), ("123456789012345678901234567890.25", "123456789012345678901234567890.25"),
    ("inf", None), ("nan", None), ("1e5", None), ("", None), ("-", None),
])
def test_normalize_reads_numbers_of_any_length_and_refuses_the_rest(number, expected):
    assert normalize(number) == expected


@pytest.mark.parametrize("text", [
    "The final answer is " + " " * 10_000,
    "The final answer is " + " " * 10_000 + "x",
    "final answer is: " + "*" * 10_000,
    "final answer is " * 2_000,
    "-" * 10_000 + "$" * 10_000,
    " " * 10_000 + "5",
    "```" + " " * 10_000,
    "```" + "\t " * 5_000 + "python",
    ("```aaa" * 3_000),
])
def test_parsers_are_linear_on_long_runs(text):
    start = time.perf_counter()
    extract_answer(text)
    GSM8K().determined(None, text)
    extract_code(text)
    HumanEval.determined(None, None, text)
    assert time.perf_counter() - start < 0.25  # ~9 s for 300 spaces before (super-linear)


@FUZZ
@given(model_text)
def test_code_extraction_is_total(text):
    assert isinstance(extract_code(text), str)
    assert isinstance(HumanEval.determined(None, None, text), bool)


scalars = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                    st.binary(max_size=10), st.booleans(), st.integers(min_value=10**30, max_value=10**400))
arrays = st.one_of(scalars.map(lambda v: v if v is None else np.array([v], dtype=object)),
                   st.lists(scalars, max_size=3).map(lambda v: np.array(v, dtype=object)),
                   st.just(np.array([[1, 2], [3, 4]])), st.just(np.array([b"\xff\xfe"], dtype=object)))


@FUZZ
@given(st.fixed_dictionaries({}, optional={name: arrays for name in
                                           ("prompt", "max_tokens", "mode", "window", "threshold", "stop")}))
def test_request_validation_is_total(raw):
    defaults = ServeDefaults(has_judge=True)
    try:
        request = parse_request(raw, defaults)
    except RequestError as exc:
        assert exc.field in ("prompt", "max_tokens", "mode", "window", "threshold", "stop")
        return
    assert request.prompt.strip() and 1 <= request.window <= MAX_WINDOW
    assert 1 <= request.max_tokens <= defaults.max_tokens_limit
    assert request.threshold is None or 0 <= request.threshold <= 1
