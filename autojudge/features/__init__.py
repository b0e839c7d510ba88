"""Features: the hidden states the judge reads, their layouts (``layout``), and the files mining
stores them in (``files``, imported by its path: it needs torch)."""

from autojudge.features.layout import DRAFT_TARGET, LAYOUTS, TARGET_ONLY, concat, num_features, uses_draft

__all__ = ["DRAFT_TARGET", "LAYOUTS", "TARGET_ONLY", "concat", "num_features", "uses_draft"]
