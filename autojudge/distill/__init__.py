"""Distilling a draft from its target: ``teacher`` (the target's own greedy answers, computed once)
and ``training`` (a few of its layers learn to predict them; resumable). The artifact it exports
is :mod:`autojudge.models.draft_artifact`."""
