"""The judge: a logistic regression over hidden states; its artifact (``artifact``) and its training
(``training``: scaler + L2 logistic regression, C by prompt-grouped validation, calibration)."""

from autojudge.judge.artifact import FORMAT, METADATA_FILE, WEIGHTS_FILE, Judge, JudgeMetadata, judge_probabilities

__all__ = ["FORMAT", "METADATA_FILE", "WEIGHTS_FILE", "Judge", "JudgeMetadata", "judge_probabilities"]
