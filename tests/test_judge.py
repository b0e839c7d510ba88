"""Judge artifacts: round trip, and every way a bad artifact is refused with a useful message."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from autojudge.decoding import SpeculativeDecoder
from autojudge.errors import JudgeArtifactError
from autojudge.judge import METADATA_FILE, WEIGHTS_FILE, Judge, JudgeMetadata


def _judge(layout="draft+target", hd=64, ht=64, threshold=0.3, target="t", draft="d"):
    meta = JudgeMetadata(target_model=target, target_hidden_size=ht, draft_model=draft,
                         draft_hidden_size=hd, feature_layout=layout, threshold=threshold,
                         extra={"recall_curve": [[0.9, 0.5]]})
    return Judge(weight=torch.randn(meta.num_features), bias=-0.25, meta=meta)


@pytest.mark.parametrize("layout, features", [("draft+target", 96), ("target", 64)])
def test_round_trip(tmp_path, layout, features):
    judge = _judge(layout, hd=32, ht=64)
    judge.save(tmp_path / "j")
    loaded = Judge.load(tmp_path / "j")
    assert loaded.meta == judge.meta
    assert loaded.weight.shape == (features,)
    assert torch.equal(loaded.weight, judge.weight) and loaded.bias == -0.25
    assert Judge.load(tmp_path / "j" / METADATA_FILE).meta == judge.meta  # either file works
    assert not any(p.name.startswith(".") for p in (tmp_path / "j").iterdir())  # no temp leftovers


def test_probabilities_use_the_layout():
    judge = _judge("target", hd=8, ht=4)
    target_hidden = torch.randn(1, 3, 4)
    expected = torch.sigmoid(target_hidden @ judge.weight + judge.bias)
    assert torch.allclose(judge.probabilities(None, target_hidden), expected)


def test_missing_file(tmp_path):
    _judge().save(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(JudgeArtifactError, match="has no judge.safetensors"):
        Judge.load(tmp_path)


def test_corrupt_weights_are_detected(tmp_path):
    _judge().save(tmp_path)
    data = bytearray((tmp_path / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(JudgeArtifactError, match="does not match the sha256"):
        Judge.load(tmp_path)


def test_corrupt_json(tmp_path):
    _judge().save(tmp_path)
    (tmp_path / METADATA_FILE).write_text('{"format": "autojudge.judge/v1", ')
    with pytest.raises(JudgeArtifactError, match="not valid JSON"):
        Judge.load(tmp_path)


def _rewrite_meta(tmp_path, **changes):
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    meta.update(changes)
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))


def test_wrong_dimensions(tmp_path):
    _judge(hd=64, ht=64).save(tmp_path)
    _rewrite_meta(tmp_path, target_hidden_size=128)
    with pytest.raises(JudgeArtifactError, match=r"weight has shape \(128,\).*needs \(192,\)"):
        Judge.load(tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"format": "something-else"}, "not a judge artifact"),
    ({"feature_layout": "draft"}, "field 'feature_layout': Input should be 'draft\\+target' or 'target'"),
    ({"threshold": 1.5}, "field 'threshold': Input should be less than or equal to 1"),
    ({"threshold": float("nan")}, "field 'threshold': Input should be a finite number"),
    ({"threshold": "0.5"}, "field 'threshold': Input should be a valid number"),
    ({"target_hidden_size": "64"}, "field 'target_hidden_size': Input should be a valid integer"),
    ({"target_hidden_size": True}, "field 'target_hidden_size': Input should be a valid integer"),
    ({"target_hidden_size": -1}, "field 'target_hidden_size': Input should be greater than or equal to 1"),
    ({"target_hidden_size": 10**12}, "field 'target_hidden_size': Input should be less than or equal to 65536"),
    ({"target_model": None}, "field 'target_model': Input should be a valid string"),
    ({"target_model": "__delete__"}, "field 'target_model': Field required"),
    ({"extra": [1, 2]}, "field 'extra': Input should be a valid dictionary"),
])
def test_bad_metadata_is_refused_naming_the_field(tmp_path, changes, message):
    _judge().save(tmp_path)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v != "__delete__"}
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(JudgeArtifactError, match=message):
        Judge.load(tmp_path)


def test_deeply_nested_metadata_is_a_clear_error_not_a_recursion_error(tmp_path):
    _judge().save(tmp_path)
    text = (tmp_path / METADATA_FILE).read_text()
    (tmp_path / METADATA_FILE).write_text(text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(JudgeArtifactError, match="not valid JSON"):
        Judge.load(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    judge = _judge()
    judge.weight[3] = bad
    judge.save(tmp_path)  # the checksum is right: only the values are wrong
    with pytest.raises(JudgeArtifactError, match="tensor 'weight' holds NaN or infinite values"):
        Judge.load(tmp_path)


@pytest.fixture(scope="module")
def tiny_pair(make_lm):
    target = make_lm(tiny_model(0), "tiny-target")
    return target, make_lm(tiny_model(1), "tiny-draft")


def test_judge_for_other_hidden_size_is_refused(tiny_pair):
    target, draft = tiny_pair
    judge = _judge(hd=64, ht=576, target="tiny-target", draft="tiny-draft")
    with pytest.raises(JudgeArtifactError, match="expects a target hidden size of 576.*has 64"):
        SpeculativeDecoder(target, draft, judge)


def test_judge_for_other_models_is_refused_unless_ignored(tiny_pair):
    target, draft = tiny_pair
    judge = _judge(target="meta-llama/Llama-3.1-8B-Instruct", draft="tiny-draft")
    with pytest.raises(JudgeArtifactError, match="trained for target 'meta-llama/Llama-3.1-8B-Instruct'"):
        SpeculativeDecoder(target, draft, judge)
    SpeculativeDecoder(target, draft, judge, check_judge_names=False)  # sizes agree: allowed


def test_target_only_judge_ignores_draft(tiny_pair):
    target, draft = tiny_pair
    SpeculativeDecoder(target, draft, _judge("target", hd=999, target="tiny-target", draft="other"))


def test_json_integers_too_long_to_parse_are_a_clear_error(tmp_path):
    _judge().save(tmp_path)
    text = (tmp_path / METADATA_FILE).read_text()
    (tmp_path / METADATA_FILE).write_text(text[:-1] + ', "huge": ' + "9" * 5000 + "}")
    with pytest.raises(JudgeArtifactError, match="not valid JSON"):
        Judge.load(tmp_path)


def test_complex_or_integer_weights_are_refused(tmp_path):
    from autojudge.storage import write_artifact

    judge = _judge()
    judge.save(tmp_path / "ok")
    meta = json.loads((tmp_path / "ok" / METADATA_FILE).read_text())
    for name, tensors, message in (
            ("complex", {"weight": judge.weight.to(torch.complex64), "bias": torch.tensor([0.0])}, "is complex"),
            ("int", {"weight": judge.weight.to(torch.int64), "bias": torch.tensor([0])}, "must hold float tensors")):
        write_artifact(tmp_path / name, WEIGHTS_FILE, METADATA_FILE, tensors, meta)
        with pytest.raises(JudgeArtifactError, match=message):
            Judge.load(tmp_path / name)



def test_answer_calibration_takes_the_last_threshold_of_the_leading_run_that_keeps_the_answers():
    from autojudge.judge.calibration import choose

    curve = [{"threshold": t, "retention": r, "tau": 1 + t} for t, r in
             ((0.0, 1.0), (0.1, 0.99), (0.2, 0.97), (0.3, 0.99), (0.5, 0.5))]
    assert choose(curve, 0.98)["threshold"] == 0.1  # 0.3 keeps 99% too, but past a threshold that did not
    assert choose(curve, 0.95)["threshold"] == 0.3
    assert choose(curve, 1.0)["threshold"] == 0.0
    assert choose([{"threshold": 0.0, "retention": 0.9, "tau": 1.0}], 0.95)["threshold"] == 0.0  # none: the smallest
