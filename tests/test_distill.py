"""Distillation on tiny models: teacher data resumes, training resumes bit-for-bit, the
draft artifact round-trips and refuses corruption."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from autojudge.decoding import DecodeConfig, SpeculativeDecoder
from autojudge.distill.teacher import generate_teacher_data
from autojudge.distill.training import DistillConfig, greedy_agreement, train_student
from autojudge.errors import AutoJudgeError, ModelLoadError
from autojudge.models import load_draft
from autojudge.models.draft_artifact import DRAFT_METADATA, DRAFT_WEIGHTS, export_draft, load_draft_artifact
from autojudge.models.layer_subset import build_student, trainable_state

PROMPTS = [[1, 504, 3458 + i, 314, 253, 1345 + 7 * i, 28] for i in range(10)]


@pytest.fixture(scope="module")
def tiny_target(make_lm):
    return make_lm(tiny_model(5, layers=4), "tiny-target")


@pytest.fixture(scope="module")
def teacher_records(tiny_target, tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.jsonl"
    return generate_teacher_data(tiny_target, PROMPTS, path, max_new_tokens=24, batch_size=4,
                                 progress=False)


def test_teacher_answers_are_the_targets_greedy_answers(tiny_target, teacher_records):
    assert [r["index"] for r in teacher_records] == list(range(len(PROMPTS)))
    for record in teacher_records[:3]:
        alone = SpeculativeDecoder(tiny_target).generate(
            record["prompt_ids"], DecodeConfig(mode="target", max_new_tokens=24))
        assert record["completion_ids"] == alone.token_ids


def test_teacher_data_resumes_and_ignores_a_torn_line(tiny_target, tmp_path):
    path = tmp_path / "teacher.jsonl"
    generate_teacher_data(tiny_target, PROMPTS[:4], path, max_new_tokens=8, progress=False)
    with open(path, "a") as f:
        f.write('{"index": 4, "prompt_ids": [1, 2')  # a crash mid-write
    calls = []
    original = tiny_target.model.generate
    tiny_target.model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or original(**kw)
    try:
        records = generate_teacher_data(tiny_target, PROMPTS[:6], path, max_new_tokens=8, progress=False)
    finally:
        del tiny_target.model.generate
    assert calls == [2]  # only the two prompts not yet answered
    assert [r["index"] for r in records] == list(range(6))


def test_student_shares_embedding_and_head_and_copies_layers(tiny_target):
    student = build_student(tiny_target, (0, 3))
    assert student.num_layers == 2
    t, s = tiny_target.model, student.model
    assert s.lm_head.weight.data_ptr() == t.lm_head.weight.data_ptr()
    assert not s.lm_head.weight.requires_grad
    assert torch.equal(s.model.layers[1].mlp.up_proj.weight, t.model.layers[3].mlp.up_proj.weight)
    assert s.model.layers[1].mlp.up_proj.weight.data_ptr() != t.model.layers[3].mlp.up_proj.weight.data_ptr()
    assert set(trainable_state(student)) == {n for n, _ in s.named_parameters()
                                             if not n.startswith(("model.embed_tokens.", "lm_head."))}


def test_training_raises_agreement(tiny_target, teacher_records, tmp_path):
    config = DistillConfig(init_layers=(0,), steps=30, batch_sequences=4, lr=3e-3, warmup_steps=5,
                           checkpoint_every=10)
    before = greedy_agreement(build_student(tiny_target, (0,)), teacher_records)
    student = train_student(tiny_target, teacher_records, tmp_path, config, progress=False)
    assert greedy_agreement(student, teacher_records) > before + 0.2


def test_interrupted_training_resumes_to_the_same_weights(tiny_target, teacher_records, tmp_path,
                                                         monkeypatch):
    import autojudge.distill.training as distill

    config = DistillConfig(init_layers=(0, 1), steps=8, batch_sequences=3, warmup_steps=2,
                           checkpoint_every=4)
    straight = train_student(tiny_target, teacher_records, tmp_path / "a", config, progress=False)
    save = distill._save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt  # Ctrl-C right after the step-4 checkpoint

    monkeypatch.setattr(distill, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_student(tiny_target, teacher_records, tmp_path / "b", config, progress=False)
    monkeypatch.setattr(distill, "_save_checkpoint", save)
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 4
    resumed = train_student(tiny_target, teacher_records, tmp_path / "b", config, progress=False)
    for name, tensor in trainable_state(straight).items():
        assert torch.allclose(tensor, trainable_state(resumed)[name], atol=1e-6), name


def test_resuming_with_other_settings_is_refused(tiny_target, teacher_records, tmp_path):
    config = DistillConfig(init_layers=(0,), steps=2, batch_sequences=2, checkpoint_every=1)
    train_student(tiny_target, teacher_records, tmp_path, config, progress=False)
    with pytest.raises(AutoJudgeError, match="checkpoint made with other settings"):
        train_student(tiny_target, teacher_records, tmp_path,
                      DistillConfig(init_layers=(1,), steps=4, batch_sequences=2), progress=False)


@pytest.fixture(scope="module")
def artifact(tiny_target, teacher_records, tmp_path_factory):
    work = tmp_path_factory.mktemp("distill")
    config = DistillConfig(init_layers=(0, 2), steps=6, batch_sequences=4, checkpoint_every=3)
    student = train_student(tiny_target, teacher_records, work, config, progress=False)
    return export_draft(student, tiny_target, work / "draft", config.init_layers, {"seed": 0},
                        name="tiny-draft"), student


def test_artifact_round_trip_and_lossless_decoding(tiny_target, artifact):
    directory, student = artifact
    draft = load_draft(str(directory), tiny_target)
    assert draft.name == "tiny-draft" and draft.num_layers == 2
    assert draft.tokenizer is tiny_target.tokenizer
    for name, tensor in trainable_state(student).items():  # fp16 storage, fp32 compute
        assert torch.allclose(trainable_state(draft)[name], tensor, atol=2e-3)
    greedy = SpeculativeDecoder(tiny_target).generate(PROMPTS[0], DecodeConfig(mode="target", max_new_tokens=30))
    lossless = SpeculativeDecoder(tiny_target, draft).generate(PROMPTS[0], DecodeConfig(window=4, max_new_tokens=30))
    assert lossless.token_ids == greedy.token_ids


def _copy(directory, tmp_path):
    import shutil

    return shutil.copytree(directory, tmp_path / "copy")


def test_corrupt_draft_weights_are_refused(tiny_target, artifact, tmp_path):
    copy = _copy(artifact[0], tmp_path)
    data = bytearray((copy / DRAFT_WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0x55
    (copy / DRAFT_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        load_draft_artifact(copy, tiny_target)


def test_missing_draft_weights_are_refused(tiny_target, artifact, tmp_path):
    copy = _copy(artifact[0], tmp_path)
    (copy / DRAFT_WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match="has no draft.safetensors"):
        load_draft(str(copy), tiny_target)


def test_draft_for_another_target_is_refused(artifact, make_lm, tmp_path):
    other = make_lm(tiny_model(1, layers=2, hidden=32), "other-target")
    with pytest.raises(ModelLoadError, match="was distilled for 'tiny-target'"):
        load_draft_artifact(artifact[0], other)
    meta = json.loads((artifact[0] / DRAFT_METADATA).read_text())
    assert meta["target"] == "tiny-target" and len(meta["weights_sha256"]) == 64


def test_greedy_vocabulary_restricts_proposals_and_stays_lossless(tiny_target, teacher_records, artifact, tmp_path):
    from autojudge.distill.training import teacher_vocabulary

    _, student = artifact
    vocab = teacher_vocabulary(teacher_records, tiny_target.eos_token_ids)
    assert bool((vocab[1:] > vocab[:-1]).all()) and 2 in vocab.tolist()
    directory = export_draft(student, tiny_target, tmp_path / "draft", (0, 2), {}, greedy_vocab=vocab)
    draft = load_draft(str(directory), tiny_target)
    assert torch.equal(draft.greedy_vocab, vocab)
    hidden = torch.randn(1, 20, 64)
    expected = vocab[(hidden @ tiny_target.model.lm_head.weight[vocab].T).argmax(-1)]
    assert torch.equal(draft.greedy(hidden), expected)
    assert set(draft.greedy(hidden).flatten().tolist()) <= set(vocab.tolist())
    greedy = SpeculativeDecoder(tiny_target).generate(PROMPTS[3], DecodeConfig(mode="target", max_new_tokens=30))
    lossless = SpeculativeDecoder(tiny_target, draft).generate(PROMPTS[3], DecodeConfig(window=3, max_new_tokens=30))
    assert lossless.token_ids == greedy.token_ids
    assert greedy_agreement(draft, teacher_records) > 0.0
