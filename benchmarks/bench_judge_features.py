"""What the judge's features are worth on a mining directory, and the most a judge could give.

    python benchmarks/bench_judge_features.py --mined DIR [--target embedded] [--json-out FILE]

Reports, from one mining directory (labels of any pair, e.g. `autojudge-trt mine --target embedded`):
- the perfect-judge ceiling (autojudge.evaluation.ceiling): tau of a judge that accepts exactly the
  unimportant mismatches against lossless tau, over the mined part of every answer, at W 4 and 8;
- validation and prompt-grouped cross-validated ROC-AUC of the judge on its hidden states alone,
  with each scalar feature added, with all of them, and of the scalars without hidden states;
- what `train --scalar-features auto` picks (forward selection on the grouped CV AUC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autojudge.evaluation.ceiling import ceiling
from autojudge.features.scalars import SCALAR_FEATURES
from autojudge.judge.training import TrainConfig, cross_validated_auc, train_judge
from autojudge.mining import read_mined
from autojudge.mining.scalars import mined_scalar_features, task_prompts
from autojudge.models import load_target, quiet_transformers
from autojudge.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mined", type=Path, required=True)
    parser.add_argument("--target", default="embedded", help="the target the labels were mined with")
    parser.add_argument("--window", type=int, default=8, help="window of the window_agreement feature")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    data = read_mined(args.mined)
    quiet_transformers()
    target = load_target(args.target)
    scalars = mined_scalar_features(target, data, task_prompts(target, get_task(data.manifest["task"]), data),
                                    args.window, args.mined)
    y, groups = data.important.numpy(), data.prompt_index.numpy()
    report = {"mined": str(args.mined), "labels": len(data.labels), "prompts": len(set(groups.tolist())),
              "important_fraction": float(y.mean()), "greedy_agreement": scalars.greedy_agreement,
              "ceiling": [ceiling(data, w) for w in (4, 8)], "feature_sets": []}

    def trained(names) -> dict:
        _, r = train_judge(data, TrainConfig(scalar_features=names, cv_folds=args.folds), progress=False,
                           scalars=scalars)
        return {"features": ["hidden", *r.scalar_features], "val_auc": r.val_auc, "cv_auc": r.cv_auc,
                "cv_auc_std": r.cv_auc_std, "C": r.best_c}

    sets = [(), *[(name,) for name in SCALAR_FEATURES], SCALAR_FEATURES]
    for names in sets:
        report["feature_sets"].append(trained(names))
        print(json.dumps(report["feature_sets"][-1]), flush=True)
    for names in [*[(name,) for name in SCALAR_FEATURES], SCALAR_FEATURES]:  # the scalars alone
        cv = cross_validated_auc(scalars.columns(names).numpy(), y, groups, 1.0, args.folds, 2000)
        report["feature_sets"].append({"features": list(names), "cv_auc": cv and cv[0], "cv_auc_std": cv and cv[1]})
        print(json.dumps(report["feature_sets"][-1]), flush=True)
    _, auto = train_judge(data, TrainConfig(scalar_features="auto", cv_folds=args.folds), progress=False,
                          scalars=scalars)
    report["auto"] = {"scalar_features": list(auto.scalar_features), "cv_auc": auto.cv_auc,
                      "val_auc": auto.val_auc, "selection": auto.selection}
    report["seconds"] = time.perf_counter() - started
    report["unimportant_by_feature_mean"] = {
        name: {"important": float(np.mean(scalars.columns([name]).numpy()[y])),
               "unimportant": float(np.mean(scalars.columns([name]).numpy()[~y]))} for name in SCALAR_FEATURES}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
