"""What a perfect judge would give: tau along mined answers, from the labels alone.

A mined answer (``final_ids``) is the decode of a judge that accepts exactly the unimportant
mismatches (the search keeps each swap that leaves the result unchanged, left to right), so its
labels say what every cycle of that decode does: matches and unimportant mismatches are accepted,
the first important mismatch ends the cycle with the target's token, a full window ends with a
bonus token. The same walk with every mismatch rejected is lossless speculation on that answer.
Both are counted over the mined part of each answer (up to its last label: mining may stop a
prompt's search after ``max_labels``), so the ratio is the most a judge could add on this pair
at that window, with every answer kept.
"""

from __future__ import annotations

from autojudge.features.scalars import speculate
from autojudge.mining import MinedDataset


def ceiling(data: MinedDataset, window: int) -> dict:
    """Perfect-judge and lossless tau over every mined answer's labelled part (summed over prompts)."""
    by_prompt: dict[int, dict[int, bool]] = {}
    for label in data.labels:
        by_prompt.setdefault(label["index"], {})[label["pos"]] = bool(label["important"])
    positions = perfect = lossless = 0  # tokens, and cycles of each decode
    for labels in by_prompt.values():
        end = max(labels) + 1
        positions += end
        perfect += speculate({pos: not important for pos, important in labels.items()}, end, window)[0]
        lossless += speculate(dict.fromkeys(labels, False), end, window)[0]
    return {"window": window, "prompts": len(by_prompt), "positions": positions,
            "perfect_judge_tau": positions / max(perfect, 1), "lossless_tau": positions / max(lossless, 1),
            "ceiling_over_lossless": lossless / max(perfect, 1),
            "unimportant_fraction": sum(not lb["important"] for lb in data.labels) / max(len(data.labels), 1)}
