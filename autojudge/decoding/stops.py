"""Where a row ends: EOS tokens (kept) and user stop strings (cut before, as vLLM does)."""

from __future__ import annotations

from collections.abc import Sequence


def first_stop(new_ids: list[int], eos: frozenset[int]) -> tuple[int, str | None]:
    """(how many of new_ids to keep, 'eos' or None): EOS is kept, what follows is dropped."""
    for i, token in enumerate(new_ids):
        if token in eos:
            return i + 1, "eos"
    return len(new_ids), None


class StopStrings:
    """User stop strings; the output text is cut before the first one (as vLLM does)."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tokenizer, self.stop = tokenizer, tuple(stop)

    def __bool__(self) -> bool:
        return bool(self.stop)

    def _find(self, text: str) -> int:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else -1

    def check(self, generated: list[int], num_new: int) -> tuple[int, str | None]:
        """(how many of the newest num_new tokens to keep, 'stop' or None)."""
        decode = self.tokenizer.decode
        if self._find(decode(generated, skip_special_tokens=True)) < 0:
            return num_new, None
        old = len(generated) - num_new
        for keep in range(1, num_new + 1):  # the first token that completes a stop string
            if self._find(decode(generated[: old + keep], skip_special_tokens=True)) >= 0:
                return keep, "stop"
        return num_new, "stop"

    def cut_text(self, text: str) -> str:
        index = self._find(text)
        return text if index < 0 else text[:index]
