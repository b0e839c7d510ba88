"""What a decode asks for and what it gives back; the modes and the window bound, defined once.

Modes (all the same loop, :mod:`autojudge.decoding.loop`):

- ``target``: plain greedy decoding of the target, the baseline (a window of 0).
- ``lossless``: standard greedy speculative decoding; output identical to ``target``.
- ``topk``: a draft token also passes if it is in the target's top-K (a lossy baseline).
- ``judge``: AutoJudge; a mismatch also passes if the judge calls it unimportant.
  **Intentionally lossy**: the output may differ from the target's own.
- ``fly``: FLy (arXiv 2511.22972), the training-free lossy peer: a mismatch passes if the target
  is uncertain there and agrees with the draft at the next positions
  (:func:`autojudge.acceptance.rule.fly_mismatch_ok`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from autojudge.decoding.metrics import SpecDecodeMetrics
from autojudge.errors import AutoJudgeError

if TYPE_CHECKING:  # no torch import here: the CLI and the serving protocol read MODES at start-up
    from autojudge.judge import Judge

MODES = ("target", "lossless", "topk", "judge", "fly")
LOGIT_MODES = ("topk", "fly")  # modes whose rule reads the target's logits at the draft positions
MAX_WINDOW = 64  # W: the decoder's, the serving protocol's and a deployment's bound (the kernel allows 1024)


@dataclass(frozen=True)
class DecodeConfig:
    mode: str = "lossless"
    window: int = 8  # W: draft tokens proposed per cycle
    max_new_tokens: int = 256
    top_k: int = 4  # mode topk only
    fly_entropy: float = 0.3  # mode fly only: the entropy gate (nats, top-3 partial entropy)
    fly_window: int = 6  # mode fly only: the mismatch and the positions after it that must agree
    adaptive: bool = False  # each row's window follows its acceptance, 0..window (autojudge.decoding.adaptive)
    threshold: float | None = None  # mode judge only; None = the judge artifact's threshold
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one

    def validate(self, has_draft: bool, judge: Judge | None, max_window: int = MAX_WINDOW,
                 bound: str | None = None) -> None:
        """Raise AutoJudgeError naming what is wrong; ``max_window`` is what the backend can
        verify, ``bound`` what sets it when it is not MAX_WINDOW (a TensorRT-LLM deployment's
        window)."""
        if self.mode not in MODES:
            raise AutoJudgeError(f"unknown mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.mode != "target":
            if not has_draft:
                raise AutoJudgeError(f"mode {self.mode!r} needs a draft model")
            if not 1 <= self.window <= max_window:
                raise AutoJudgeError(f"window must be in {range_text(max_window, bound)}, got {self.window}")
        if self.max_new_tokens < 1:
            raise AutoJudgeError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.mode == "topk" and self.top_k < 1:
            raise AutoJudgeError(f"top_k must be >= 1, got {self.top_k}")
        if self.mode == "fly" and (self.fly_window < 2 or not 0.0 <= self.fly_entropy <= 2.0):
            raise AutoJudgeError(f"fly needs a window >= 2 and an entropy threshold in [0, 2] nats, got "
                                 f"{self.fly_window} and {self.fly_entropy}")
        if self.mode == "judge" and judge is None:
            raise AutoJudgeError("mode 'judge' needs a judge artifact (--judge DIR)")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise AutoJudgeError(f"threshold must be in [0, 1], got {self.threshold}")
        if any(not s for s in self.stop):
            raise AutoJudgeError("stop strings must not be empty")

    def judge_threshold(self, judge: Judge | None) -> float | None:
        """The judge threshold in force: the request's, else the artifact's calibrated one."""
        if self.mode != "judge" or self.threshold is not None:
            return self.threshold
        return judge.meta.threshold


def range_text(high: int, bound: str | None) -> str:
    """'1..high', with what sets high when it is not the decoder's own limit."""
    return f"1..{high}" + (f" ({bound})" if bound else "")


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only (no prompt)
    text: str
    finish_reason: str  # "eos" | "length" | "stop"
    metrics: SpecDecodeMetrics

    def to_dict(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids,
                "finish_reason": self.finish_reason, "metrics": self.metrics.to_dict()}
