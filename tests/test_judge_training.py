"""Judge training recovers a known linear rule, folds the scaler exactly, and picks the
threshold for the requested recall."""

import numpy as np
import pytest
import torch

from autojudge.errors import AutoJudgeError
from autojudge.judge import Judge
from autojudge.judge.training import TrainConfig, fold_scaler, threshold_for_recall, train_judge
from autojudge.mining import MinedDataset


def synthetic(n_prompts=60, per_prompt=40, hd=6, ht=10, seed=0, rule=None):
    """Features with very different scales and offsets; important iff a linear rule > 0."""
    rng = np.random.default_rng(seed)
    n = n_prompts * per_prompt
    scale = rng.uniform(0.1, 20.0, hd + ht)
    offset = rng.uniform(-50, 50, hd + ht)
    x = rng.normal(size=(n, hd + ht)) * scale + offset
    rule = rng.normal(size=hd + ht) if rule is None else rule
    logits = ((x - offset) / scale) @ rule * 3
    important = rng.random(n) < 1 / (1 + np.exp(-logits))
    labels = [{"index": i // per_prompt, "example_id": f"e{i // per_prompt}", "pos": i % per_prompt,
               "draft_token": 0, "target_token": 1, "important": bool(important[i])} for i in range(n)]
    manifest = {"target": "t", "target_hidden_size": ht, "draft": "d", "draft_hidden_size": hd, "task": "toy"}
    data = MinedDataset(labels, torch.tensor(x[:, :hd], dtype=torch.float16),
                        torch.tensor(x[:, hd:], dtype=torch.float16), manifest)
    return data, rule, scale


def test_recovers_a_known_linear_rule_and_reproduces_sklearn(tmp_path):
    data, rule, scale = synthetic()
    judge, report = train_judge(data, TrainConfig(), progress=False)
    assert report.val_auc > 0.9
    # the folded weights point the same way as the planted rule (in standardised units)
    recovered = judge.weight.numpy() * scale
    cosine = recovered @ rule / np.linalg.norm(recovered) / np.linalg.norm(rule)
    assert cosine > 0.95
    # the deployed formula equals sklearn's pipeline on the same inputs
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([data.draft_hidden, data.target_hidden], 1).float().numpy()
    y = data.important.numpy()
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=report.best_c, max_iter=2000).fit(scaler.transform(x), y)
    w, b = fold_scaler(model.coef_[0], model.intercept_[0], scaler.mean_, scaler.scale_)
    ours = torch.sigmoid(torch.from_numpy(x).double() @ torch.from_numpy(w) + b).numpy()
    np.testing.assert_allclose(ours, model.predict_proba(scaler.transform(x))[:, 1], rtol=1e-4, atol=1e-6)  # sklearn computes in float32 here
    # the artifact round-trips, with its curve
    loaded = Judge.load(judge.save(tmp_path / "judge"))
    assert loaded.meta.threshold == judge.meta.threshold
    assert loaded.meta.extra["recall_acceptance_curve"][0]["threshold"] == 0.0


def test_threshold_meets_the_requested_recall_on_validation():
    data, _, _ = synthetic(seed=3)
    for recall in (0.8, 0.9, 0.99):
        _, report = train_judge(data, TrainConfig(target_recall=recall), progress=False)
        assert report.val_recall >= recall
    assert 0.0 < report.val_acceptance < 1.0


def test_threshold_for_recall_edge_cases():
    prob = np.array([0.1, 0.2, 0.3, 0.4])
    important = np.array([True, True, True, True])
    assert threshold_for_recall(prob, important, 1.0) < 0.1  # accept none of them
    thr = threshold_for_recall(prob, important, 0.75)  # may lose one
    assert 0.1 <= thr < 0.2
    assert threshold_for_recall(prob, np.zeros(4, bool), 0.9) == 1.0  # nothing important


def test_target_only_layout_and_split_by_prompt():
    data, _, _ = synthetic()
    judge, report = train_judge(data, TrainConfig(layout="target"), progress=False)
    assert judge.weight.shape == (10,) and judge.meta.feature_layout == "target"
    assert report.train_prompts + report.val_prompts == 60


def test_one_class_is_a_clear_error():
    data, _, _ = synthetic()
    for label in data.labels:
        label["important"] = False
    with pytest.raises(AutoJudgeError, match="all .* labels are unimportant"):
        train_judge(data, progress=False)


def test_cross_validated_auc_is_grouped_by_prompt_and_tracks_signal():
    from autojudge.judge.training import cross_validated_auc

    data, _, _ = synthetic(n_prompts=20, per_prompt=30, seed=5)
    _, report = train_judge(data, TrainConfig(cv_folds=4), progress=False)
    assert report.cv_folds == 4 and 0.85 < report.cv_auc <= 1.0 and report.cv_auc_std < 0.1
    # Leakage check: labels that are a pure function of the prompt, features that identify
    # the prompt. Ungrouped folds would score ~1 (the prompt is seen in training); grouped
    # folds score chance, since every test prompt is unseen ...
    x = torch.cat([data.draft_hidden, data.target_hidden], 1).float().numpy()
    groups = data.prompt_index.numpy()
    rng = np.random.default_rng(0)
    per_prompt = rng.random(groups.max() + 1) < 0.5
    prompt_id_features = np.eye(groups.max() + 1)[groups]  # one-hot prompt identity
    mean, _, _ = cross_validated_auc(prompt_id_features, per_prompt[groups], groups, 1.0, 4, 2000)
    assert mean == pytest.approx(0.5, abs=0.01)
    assert cross_validated_auc(x, per_prompt[groups], np.zeros_like(groups), 1.0, 4, 2000) is None  # one prompt
    # ... and cv_folds=0 skips it
    _, report = train_judge(data, TrainConfig(cv_folds=0), progress=False)
    assert report.cv_auc is None and report.cv_folds == 0


def test_auto_scalar_features_keeps_the_informative_one_and_deploys_it(tmp_path):
    """Labels depend on the hidden states and on one scalar (target_logprob); the other scalars are
    noise. Forward selection by grouped CV AUC adds exactly that one, and the exported judge computes
    the training formula over [h_draft ; h_target ; scalars]."""
    from autojudge.features.scalars import SCALAR_FEATURES, TARGET_LOGPROB
    from autojudge.mining.scalars import MinedScalars

    rng = np.random.default_rng(7)
    data, rule, _ = synthetic(n_prompts=40, per_prompt=30, seed=7, rule=np.r_[np.zeros(15), 0.3])
    n = len(data.labels)
    values = rng.normal(size=(n, len(SCALAR_FEATURES))).astype(np.float32) * 4 - 6
    column = SCALAR_FEATURES.index(TARGET_LOGPROB)
    signal = (values[:, column] + 6) / 4  # standardised: the planted scalar
    x_hidden = torch.cat([data.draft_hidden, data.target_hidden], 1).float().numpy()
    hidden_part = ((x_hidden - x_hidden.mean(0)) / x_hidden.std(0)) @ rule[:16]
    important = rng.random(n) < 1 / (1 + np.exp(-3 * (hidden_part + 1.5 * signal)))
    for label, imp in zip(data.labels, important):
        label["important"] = bool(imp)
    scalars = MinedScalars(torch.from_numpy(values), 1.0, 8)
    judge, report = train_judge(data, TrainConfig(scalar_features="auto", cv_folds=4), progress=False,
                                scalars=scalars)
    assert report.scalar_features == (TARGET_LOGPROB,) and judge.scalar_features == (TARGET_LOGPROB,)
    assert report.selection[0]["scalar_features"] == [] and len(report.selection) == 1 + 5 + 4  # two rounds
    with_it = next(r for r in report.selection if r["scalar_features"] == [TARGET_LOGPROB])
    assert with_it["cv_auc"] > report.selection[0]["cv_auc"] + 0.05
    loaded = Judge.load(judge.save(tmp_path / "judge"))
    assert loaded.scalar_features == (TARGET_LOGPROB,) and loaded.weight.shape == (6 + 10 + 1,)
    assert loaded.meta.extra["scalar_selection"] == report.selection
    rows = torch.arange(5)
    got = loaded.probabilities(data.draft_hidden[rows][None], data.target_hidden[rows][None],
                               torch.from_numpy(values[:5, [column]])[None])[0]
    x = np.concatenate([x_hidden[:5], values[:5, [column]]], axis=1)
    want = 1 / (1 + np.exp(-(x @ judge.weight.numpy() + judge.bias)))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reads 1 scalar features"):
        loaded.probabilities(data.draft_hidden[rows][None], data.target_hidden[rows][None])
    # the scalars carry nothing: none is added
    for label, imp in zip(data.labels, rng.random(n) < 1 / (1 + np.exp(-3 * hidden_part))):
        label["important"] = bool(imp)
    _, report = train_judge(data, TrainConfig(scalar_features="auto", cv_folds=4), progress=False, scalars=scalars)
    assert report.scalar_features == ()
    with pytest.raises(AutoJudgeError, match="need the labels' scalars"):
        train_judge(data, TrainConfig(scalar_features="auto"), progress=False)


def test_answer_calibration_bisects_the_gap_the_grid_leaves():
    """A confident judge's grid can jump from a threshold that keeps every answer to one that loses
    many; bisection between them finds the largest threshold that still keeps the retention."""
    from autojudge.judge.calibration import choose, refine

    def decode_at(t):  # answers start to change past 0.62; tau rises with the threshold
        return {"threshold": t, "retention": 1.0 if t <= 0.62 else 0.5, "tau": 2 + 4 * t}

    grid = [decode_at(t) for t in (0.0, 0.003, 0.006, 0.98, 1.0)]
    assert choose(grid, 0.99)["threshold"] == 0.006
    decoded = []
    curve = refine(grid, 0.99, 6, lambda t: decoded.append(t) or decode_at(t))
    assert len(decoded) == 6 and 0.55 < choose(curve, 0.99)["threshold"] <= 0.62
    assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
    assert refine(grid, 0.99, 0, decode_at) == grid  # no steps: the grid as it was
    failing = [decode_at(0.7), decode_at(0.9)]  # even the lowest point fails: nothing to bisect
    assert refine(failing, 0.99, 3, decode_at) == failing
