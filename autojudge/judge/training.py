"""Train the judge: StandardScaler + L2 logistic regression on mined hidden states
(ALGORITHM.md section 3), exported as ``sigmoid(w . x + b)`` with the scaler folded in.

- Train/validation split **by prompt** (labels of one answer are correlated).
- C is chosen on a log grid by validation ROC-AUC.
- With few prompts one validation split is noisy, so the AUC at the chosen C is also
  cross-validated over prompt-grouped folds (``cv_folds``; mean and standard deviation).
- The threshold is chosen on validation data for a target recall of *important*
  mismatches (default 0.9): a mismatch is accepted iff p(important) <= threshold, and the
  threshold is the largest one whose recall still reaches the target (most acceptance).
  The whole recall/acceptance curve is stored in the artifact for users to pick another.

Scalar features (:mod:`autojudge.features.scalars`: the target's log-probability, rank and
entropy at the draft token, agreement so far in the window) may follow the hidden states.
``scalar_features="auto"`` picks them by forward selection on the cross-validated AUC over
prompt-grouped folds: each round adds the candidate that raises it most, while it rises by at
least ``min_auc_gain``; every set tried is reported (``selection``).

Glossary: **recall** = important mismatches rejected / all important mismatches;
**acceptance** = mismatches accepted / all mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from autojudge.errors import AutoJudgeError
from autojudge.features import DRAFT_TARGET, LAYOUTS, concat
from autojudge.features.scalars import SCALAR_FEATURES, check_names
from autojudge.judge.artifact import Judge, JudgeMetadata
from autojudge.mining import MinedDataset
from autojudge.mining.scalars import MinedScalars

DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-5, 1, 7))


@dataclass(frozen=True)
class TrainConfig:
    layout: str = DRAFT_TARGET
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    val_fraction: float = 0.2
    target_recall: float = 0.9
    seed: int = 0
    max_iter: int = 2000
    cv_folds: int = 5  # prompt-grouped folds for the cross-validated AUC; 0 = skip
    scalar_features: tuple[str, ...] | str = ()  # names (in order), or "auto": chosen by CV AUC
    min_auc_gain: float = 0.005  # "auto" adds a feature only when the CV AUC rises by this much


@dataclass
class TrainReport:
    train_labels: int
    val_labels: int
    train_prompts: int
    val_prompts: int
    important_fraction: float
    auc_by_c: dict[str, float]
    best_c: float
    val_auc: float
    threshold: float
    val_recall: float  # of important mismatches, at the threshold
    val_acceptance: float  # of all mismatches, at the threshold
    curve: list[dict] = field(default_factory=list)  # {"threshold", "recall", "acceptance"}
    cv_auc: float | None = None  # mean ROC-AUC over prompt-grouped folds at best_c
    cv_auc_std: float | None = None
    cv_folds: int = 0  # folds actually used (fewer when there are fewer prompts)
    scalar_features: tuple[str, ...] = ()  # after the hidden states
    selection: list[dict] = field(default_factory=list)  # {"scalar_features", "cv_auc", "cv_auc_std"} tried


def feature_matrix(data: MinedDataset, layout: str, scalars: torch.Tensor | None = None) -> np.ndarray:
    """[N, F] float32 in the judge's layout: [h_draft ; h_target] or h_target, then ``scalars`` [N, E]."""
    if layout not in LAYOUTS:
        raise AutoJudgeError(f"unknown feature layout {layout!r}; use one of {LAYOUTS}")
    return concat(layout, data.draft_hidden, data.target_hidden, scalars).numpy()


def select_scalar_features(hidden: np.ndarray, scalars: MinedScalars, y: np.ndarray, groups: np.ndarray,
                           c: float, config: TrainConfig, progress: bool = True) -> tuple[tuple[str, ...], list[dict]]:
    """Forward selection of scalar features by prompt-grouped CV AUC at ``c`` (the sets tried, in order)."""
    from tqdm import tqdm

    def score(names: tuple[str, ...]) -> dict:
        x = np.concatenate([hidden, scalars.columns(names).numpy()], axis=1) if names else hidden
        cv = cross_validated_auc(x, y, groups, c, config.cv_folds or 5, config.max_iter, len(names))
        if cv is None:
            raise AutoJudgeError("too few prompts with both classes to cross-validate the scalar features; mine more")
        return {"scalar_features": list(names), "cv_auc": cv[0], "cv_auc_std": cv[1]}

    bar = tqdm(desc="choosing scalar features", unit="fit", disable=not progress, dynamic_ncols=True)
    chosen: tuple[str, ...] = ()
    tried = [score(chosen)]
    best = tried[0]["cv_auc"]
    while len(chosen) < len(SCALAR_FEATURES):
        round_ = [score((*chosen, name)) for name in SCALAR_FEATURES if name not in chosen]
        bar.update(len(round_))
        tried += round_
        top = max(round_, key=lambda r: r["cv_auc"])
        if top["cv_auc"] < best + config.min_auc_gain:
            break
        chosen, best = tuple(top["scalar_features"]), top["cv_auc"]
    bar.close()
    return chosen, tried


def split_by_prompt(prompt_index: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """[N] bool, True for validation rows: whole prompts, a ``val_fraction`` of them."""
    prompts = np.unique(prompt_index)
    if len(prompts) < 2:
        raise AutoJudgeError("need labels from at least 2 prompts to split train/validation by prompt; mine more")
    rng = np.random.default_rng(seed)
    n_val = min(len(prompts) - 1, max(1, round(len(prompts) * val_fraction)))
    val_prompts = rng.choice(prompts, size=n_val, replace=False)
    return np.isin(prompt_index, val_prompts)


def recall_acceptance_curve(prob: np.ndarray, important: np.ndarray, points: int = 101) -> list[dict]:
    """Recall of important mismatches and acceptance of all mismatches when accepting
    p <= threshold, at ``points`` thresholds spread over the probability quantiles."""
    thresholds = np.unique(np.quantile(prob, np.linspace(0, 1, points)))
    thresholds = np.concatenate([[0.0], thresholds, [1.0]])
    n_imp = max(int(important.sum()), 1)
    curve = []
    for thr in np.unique(thresholds):
        accepted = prob <= thr
        curve.append({"threshold": float(thr),
                      "recall": float((~accepted & important).sum() / n_imp),
                      "acceptance": float(accepted.mean())})
    return curve


def threshold_for_recall(prob: np.ndarray, important: np.ndarray, target_recall: float) -> float:
    """The largest threshold whose recall of important mismatches is >= target_recall."""
    imp_prob = np.sort(prob[important]).astype(np.float32)  # ascending; the judge runs in fp32

    def just_below(p: np.float32) -> float:  # the next float32 down (exact in fp32 and fp64 alike)
        return float(np.nextafter(np.float32(p), np.float32(-np.inf)))

    if len(imp_prob) == 0:
        return 1.0
    # accepting p <= thr loses the important ones with p <= thr; we may lose at most k of them
    k = int(np.floor((1 - target_recall) * len(imp_prob) + 1e-9))
    if k == 0:
        return just_below(imp_prob[0]) if imp_prob[0] > 0 else 0.0
    if k >= len(imp_prob):
        return 1.0
    return just_below(imp_prob[k])  # just below the (k+1)-th smallest


def fold_scaler(coef: np.ndarray, intercept: float, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, float]:
    """w . (x - mean) / scale + b  ==  (w / scale) . x + (b - sum(w * mean / scale))."""
    w = coef / scale
    return w, float(intercept - np.sum(coef * mean / scale))


def scaler_for(num_features: int, num_scalars: int):
    """StandardScaler whose last ``num_scalars`` columns come out ``sqrt(hidden columns)`` times
    larger: one L2 penalty (one C) then shrinks a scalar feature about as much as a whole hidden
    state, instead of as much as one of its hundreds of coordinates. Folding the scaler into the
    weights (:func:`fold_scaler`) undoes it exactly: the deployed formula is unchanged."""
    from sklearn.preprocessing import StandardScaler

    boost = np.ones(num_features)
    if num_scalars:
        boost[num_features - num_scalars:] = np.sqrt(max(num_features - num_scalars, 1))

    class BoostedScaler(StandardScaler):
        def fit(self, x, y=None, sample_weight=None):
            super().fit(x, y, sample_weight)
            self.scale_ = self.scale_ / boost
            return self

    return BoostedScaler()


def cross_validated_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, folds: int,
                        max_iter: int, num_scalars: int = 0) -> tuple[float, float, int] | None:
    """(mean, std, folds) of the ROC-AUC of scaler + logistic regression at ``c`` over
    prompt-grouped folds (a prompt's labels never straddle train and test); None when
    fewer than 2 folds have both classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline

    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return None
    aucs = []
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
            continue
        model = make_pipeline(scaler_for(x.shape[1], num_scalars),
                              LogisticRegression(C=c, max_iter=max_iter)).fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    if len(aucs) < 2:
        return None
    return float(np.mean(aucs)), float(np.std(aucs)), len(aucs)


def train_judge(data: MinedDataset, config: TrainConfig = TrainConfig(), progress: bool = True,
                scalars: MinedScalars | None = None) -> tuple[Judge, TrainReport]:
    """``scalars``: every scalar feature of every label (:mod:`autojudge.mining.scalars`), needed
    when ``config.scalar_features`` names any or is "auto"."""
    y = data.important.numpy()  # [N] True = important
    if len(np.unique(y)) < 2:
        raise AutoJudgeError(f"all {len(y)} labels are {'important' if y.all() else 'unimportant'}: "
                             "mine more prompts to get both classes")
    names, selection = config.scalar_features, []
    if (names == "auto" or names) and scalars is None:
        raise AutoJudgeError("scalar features need the labels' scalars (autojudge.mining.scalars)")
    if names == "auto":
        hidden = feature_matrix(data, config.layout)
        val = split_by_prompt(data.prompt_index.numpy(), config.val_fraction, config.seed)
        c = _best_c(hidden, y, val, config, progress)[0]
        names, selection = select_scalar_features(hidden, scalars, y, data.prompt_index.numpy(), c, config, progress)
    names = check_names(names)
    x = feature_matrix(data, config.layout, scalars.columns(names) if names else None)  # [N, F]
    extra = {"scalar_window": scalars.window, "scalar_selection": selection} if names or selection else {}
    judge, report = _train(data, x, y, names, config, progress, extra)
    report.selection = selection
    return judge, report


def _best_c(x: np.ndarray, y: np.ndarray, val: np.ndarray, config: TrainConfig, progress: bool, num_scalars: int = 0):
    """(best C, AUC by C, the fitted models by C, the scaler) on the train/validation split ``val``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from tqdm import tqdm

    train = ~val
    if len(np.unique(y[train])) < 2 or len(np.unique(y[val])) < 2:
        raise AutoJudgeError("the train or validation split has only one class; mine more prompts")
    scaler = scaler_for(x.shape[1], num_scalars).fit(x[train])
    xs_train, xs_val = scaler.transform(x[train]), scaler.transform(x[val])
    auc_by_c, models = {}, {}
    for c in tqdm(config.c_grid, desc="choosing C", disable=not progress):
        model = LogisticRegression(C=c, max_iter=config.max_iter).fit(xs_train, y[train])
        auc_by_c[f"{c:.0e}"] = float(roc_auc_score(y[val], model.predict_proba(xs_val)[:, 1]))
        models[c] = model
    best_c = max(config.c_grid, key=lambda c: auc_by_c[f"{c:.0e}"])
    return best_c, auc_by_c, models, scaler


def _train(data: MinedDataset, x: np.ndarray, y: np.ndarray, names: tuple[str, ...], config: TrainConfig,
           progress: bool, extra: dict) -> tuple[Judge, TrainReport]:
    val = split_by_prompt(data.prompt_index.numpy(), config.val_fraction, config.seed)
    train = ~val
    best_c, auc_by_c, models, scaler = _best_c(x, y, val, config, progress, len(names))
    model = models[best_c]
    w, b = fold_scaler(model.coef_[0], float(model.intercept_[0]), scaler.mean_, scaler.scale_)
    weight = torch.from_numpy(w.astype(np.float32))
    prob = torch.sigmoid(torch.from_numpy(x[val]) @ weight + b).numpy()  # the deployed formula
    threshold = threshold_for_recall(prob, y[val], config.target_recall)
    accepted = prob <= threshold
    report = TrainReport(
        train_labels=int(train.sum()), val_labels=int(val.sum()),
        train_prompts=len(np.unique(data.prompt_index.numpy()[train])),
        val_prompts=len(np.unique(data.prompt_index.numpy()[val])),
        important_fraction=float(y.mean()), auc_by_c=auc_by_c, best_c=best_c,
        val_auc=auc_by_c[f"{best_c:.0e}"], threshold=threshold,
        val_recall=float((~accepted & y[val]).sum() / max(y[val].sum(), 1)),
        val_acceptance=float(accepted.mean()),
        curve=recall_acceptance_curve(prob, y[val]), scalar_features=names,
    )
    if config.cv_folds and (cv := cross_validated_auc(x, y, data.prompt_index.numpy(), best_c,
                                                      config.cv_folds, config.max_iter, len(names))):
        report.cv_auc, report.cv_auc_std, report.cv_folds = cv
    manifest = data.manifest
    meta = JudgeMetadata(
        target_model=manifest["target"], target_hidden_size=manifest["target_hidden_size"],
        draft_model=manifest["draft"], draft_hidden_size=manifest["draft_hidden_size"],
        feature_layout=config.layout, threshold=threshold, scalar_features=names,
        extra={"task": manifest["task"], "target_recall": config.target_recall, "C": best_c,
               "val_auc": report.val_auc, "val_recall": report.val_recall,
               "val_acceptance": report.val_acceptance, "train_labels": report.train_labels,
               "val_labels": report.val_labels, "cv_auc": report.cv_auc, "cv_auc_std": report.cv_auc_std,
               "cv_folds": report.cv_folds, "recall_acceptance_curve": report.curve,
               **extra},
    )
    return Judge(weight=weight, bias=b, meta=meta), report
