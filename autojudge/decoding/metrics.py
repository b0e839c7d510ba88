"""Per-request speculative decoding metrics, named as vLLM names them.

Conventions (stated once, used everywhere):

- ``mean_acceptance_length`` (**tau**) = generated tokens / target calls: tokens appended to
  the output per target forward, **including** the correction/bonus token (as vLLM and
  Spec-Bench report it). Plain greedy decoding has tau = 1.
- ``draft_acceptance_rate`` = accepted draft tokens / proposed draft tokens.
- ``num_accepted_tokens_per_pos[k]`` = cycles in which draft position k was accepted.
- ``num_accepted_mismatches`` = accepted draft tokens that differ from the target's greedy
  token: accepted by the judge (mode ``judge``) or by the top-K rule (mode ``topk``). Always 0
  in ``lossless``.
- The target's first call includes the prompt prefill.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpecDecodeMetrics:
    mode: str
    window: int
    num_generated_tokens: int = 0
    num_target_calls: int = 0
    num_draft_calls: int = 0
    num_drafts: int = 0  # cycles that proposed at least one draft token
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_mismatches: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)
    num_batch_rows: int = 0  # summed over its cycles: rows in the batch it ran in
    num_batch_window: int = 0  # summed over its cycles: the batch's window (what every row waited for)
    wall_time_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.num_accepted_tokens_per_pos:
            self.num_accepted_tokens_per_pos = [0] * self.window

    def record_cycle(self, drafted: int | None, extra_draft_calls: int, accepted: int, mismatches: int,
                     batch: int = 1, batch_window: int | None = None) -> None:
        """One decoding cycle: ``drafted`` draft tokens proposed (None = no proposal made),
        ``extra_draft_calls`` draft forwards beyond one per token, one target call, ``accepted``
        draft tokens of which ``mismatches`` differ from the target's; ``batch`` rows shared it,
        drafting ``batch_window`` tokens (default: ``drafted``)."""
        self.num_batch_rows += batch
        self.num_batch_window += (drafted or 0) if batch_window is None else batch_window
        if drafted is not None:
            self.num_draft_calls += drafted + extra_draft_calls
            self.num_drafts += 1
            self.num_draft_tokens += drafted
        self.num_target_calls += 1
        self.num_accepted_tokens += accepted
        self.num_accepted_mismatches += mismatches
        for k in range(accepted):
            self.num_accepted_tokens_per_pos[k] += 1

    @property
    def mean_acceptance_length(self) -> float:
        return self.num_generated_tokens / self.num_target_calls if self.num_target_calls else 0.0

    @property
    def mean_window(self) -> float:
        """Draft tokens proposed per target call (the window used, on average; 0 = no drafting)."""
        return self.num_draft_tokens / self.num_target_calls if self.num_target_calls else 0.0

    @property
    def mean_batch_size(self) -> float:
        """Rows in the running batch, averaged over this request's cycles (continuous batching)."""
        return self.num_batch_rows / self.num_target_calls if self.num_target_calls else 0.0

    @property
    def mean_batch_window(self) -> float:
        """The batch's window (the widest any row drafted), averaged over this request's cycles."""
        return self.num_batch_window / self.num_target_calls if self.num_target_calls else 0.0

    @property
    def draft_acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.num_generated_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "mean_acceptance_length": self.mean_acceptance_length,
            "draft_acceptance_rate": self.draft_acceptance_rate,
            "mean_window": self.mean_window,
            "mean_batch_size": self.mean_batch_size,
            "mean_batch_window": self.mean_batch_window,
            "tokens_per_s": self.tokens_per_s,
        }
