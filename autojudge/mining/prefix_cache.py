"""A model's KV cache together with the tokens it holds, reused across related sequences.

Mining explores many sequences that share a long prefix (the target's answer up to a
mismatch). ``extend(tokens)`` keeps the longest common prefix of what is cached and what
is asked for, crops the rest, and runs the model only on the new suffix; it counts every
token it feeds, which is the mining cost we report.

Glossary
- **step**: code that uses a prefix cache is a generator. Every model forward is a
  :class:`Feed` it yields; whoever drives it runs the forward and sends back the hidden
  states (``hidden = yield from cache.append(tokens)``). :func:`run_alone` runs each feed
  at once; :mod:`autojudge.mining` drives many prompts' searches together and runs their
  pending feeds of one model as one batched forward.
- **own / shared**: a prefix cache holds a KV cache of its own (runs alone), or is one row
  of a :class:`~autojudge.models.ragged_cache.RaggedCache` shared by a batch (``SharedRow``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from autojudge.models import CausalLM, crop_cache
from autojudge.models.ragged_cache import RaggedCache

T = TypeVar("T")
K = TypeVar("K")


@dataclass
class SharedRow:
    """Row ``index`` of a KV cache shared by a batch (the driver may renumber rows)."""

    cache: RaggedCache
    index: int


@dataclass
class Feed:
    """A forward a step asks for: ``tokens`` after everything ``cache`` holds."""

    cache: PrefixCache
    tokens: list[int]


Step = Generator[Feed, torch.Tensor, T]  # yields feeds, is sent their hidden states [S, H], returns T


class PrefixCache:
    def __init__(self, lm: CausalLM, track_greedy: bool = False, shared: SharedRow | None = None):
        self.lm = lm
        self.shared = shared
        self.cache = None if shared else lm.new_cache()
        self.tokens: list[int] = []  # the tokens whose keys/values are cached
        self.tokens_fed = 0  # model forward tokens so far (the cost)
        self.forward_calls = 0  # model forward passes so far
        # With track_greedy, predictions[k] is the model's greedy token after tokens[:k + 1]
        # (a teacher-forced pass over everything cached, kept in step with the cache).
        self.track_greedy = track_greedy
        self.predictions: list[int] = []
        if shared:
            shared.cache.keep_row(shared.index, 0)  # a recycled row starts empty

    def reset(self) -> None:
        """Forget everything (the naive reference loop re-prefills from scratch)."""
        if self.shared:
            self.truncate(0)
        else:
            self.cache = self.lm.new_cache()
            self.tokens, self.predictions = [], []

    def extend(self, tokens: list[int]) -> Step[tuple[int, torch.Tensor]]:
        """Make the cache hold exactly ``tokens``; returns ``(start, hidden)`` where
        ``hidden`` [len(tokens) - start, H] are the last-layer states of ``tokens[start:]``.
        At least the last token is (re)computed, so its hidden state is always returned."""
        common = 0
        limit = min(len(self.tokens), len(tokens) - 1)
        while common < limit and self.tokens[common] == tokens[common]:
            common += 1
        self.truncate(common)
        hidden = yield from self.append(tokens[common:])
        return common, hidden

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached tokens."""
        if self.shared:
            self.shared.cache.keep_row(self.shared.index, length)
        else:
            crop_cache(self.cache, length)
        del self.tokens[length:]
        del self.predictions[length:]

    def append(self, new: list[int]) -> Step[torch.Tensor]:
        """Feed ``new`` after everything cached -> hidden [len(new), H]."""
        hidden = yield Feed(self, new)
        self.tokens += new
        self.tokens_fed += len(new)
        self.forward_calls += 1
        if self.track_greedy:
            self.predictions += self.lm.greedy(hidden[None])[0].tolist()
        return hidden

    def forward_alone(self, new: list[int]) -> torch.Tensor:
        """Run a feed of an own cache now -> hidden [len(new), H]."""
        ids = torch.tensor([new], dtype=torch.long, device=self.lm.device)  # [1, S]
        return self.lm.hidden_states(ids, self.cache)[0]  # [S, H]


def advance(step: Step[T], hidden: torch.Tensor | None = None) -> Feed:
    """Send ``hidden`` (None to start) and run the step on, serving feeds of own caches at
    once, up to its next feed of a shared cache; raises StopIteration(value) when it returns."""
    feed = step.send(hidden)
    while feed.cache.shared is None:
        feed = step.send(feed.cache.forward_alone(feed.tokens))
    return feed


def run_alone(step: Step[T]) -> T:
    """Run a step whose caches are all its own; returns its value."""
    try:
        advance(step)
    except StopIteration as done:
        return done.value
    raise RuntimeError("run_alone drives steps whose prefix caches are their own, not shared rows")


@dataclass
class _InFlight:
    key: object
    step: Step
    feed: Feed  # its pending feed of the shared cache
    parts: list[torch.Tensor]  # hidden states [n, H] of the feed's tokens read so far
    read: int = 0  # how many of the feed's tokens


def run_batched(jobs: Iterable[tuple[K, Callable[[SharedRow], Step[T]]]], lm: CausalLM, batch_size: int,
                chunk: int = 16) -> Iterator[tuple[K, T]]:
    """Run many steps together; yields ``(key, value)`` as each returns (not in job order).

    ``jobs`` gives ``(key, make)`` where ``make(row)`` builds a step whose cache of ``lm`` is the
    shared ``row`` (its other caches are its own and run at once). Every tick reads each row's
    pending feed of ``lm`` -- at most ``chunk`` tokens of it, so one long feed does not pad the
    others -- in one forward of ``batch_size`` rows. A row whose step returns takes the next job
    at once; the shared cache is compacted when holes fill more than half of it, and rows are
    dropped when the jobs run out."""
    jobs = iter(jobs)
    shared = RaggedCache(lm, batch_size)
    flights: list[_InFlight | None] = [None] * batch_size
    pad = lm.tokenizer.pad_token_id or 0

    def start(row: int) -> Iterator[tuple[K, T]]:
        """The next job that still has a feed of the shared cache goes into ``row``."""
        for key, make in jobs:
            step = make(SharedRow(shared, row))
            try:
                flights[row] = _InFlight(key, step, advance(step), [])
                return
            except StopIteration as returned:
                yield key, returned.value

    while True:
        for row, f in enumerate(flights):
            if f is None:
                yield from start(row)
        busy = [row for row, f in enumerate(flights) if f]
        if not busy:
            return
        if len(busy) <= len(flights) // 2:  # the jobs ran out (start() filled every row it could)
            shared.select(torch.tensor(busy, dtype=torch.long, device=lm.device))
            flights = [flights[row] for row in busy]
            for row, f in enumerate(flights):
                f.feed.cache.shared.index = row

        width = min(chunk, max(len(f.feed.tokens) - f.read for f in flights if f))
        ids = torch.full((len(flights), width), pad, dtype=torch.long)  # [B, width], left-padded
        fed = torch.zeros(len(flights), width, dtype=torch.bool)
        pieces = [f.feed.tokens[f.read: f.read + width] if f else [] for f in flights]  # an idle row reads holes
        for row, piece in enumerate(pieces):
            if piece:
                ids[row, width - len(piece):] = torch.tensor(piece)
                fed[row, width - len(piece):] = True
        hidden = shared.read(ids.to(lm.device), fed.to(lm.device))  # [B, width, H]
        for row, (f, piece) in enumerate(zip(flights, pieces)):
            if f is None:
                continue
            n = len(piece)
            f.parts.append(hidden[row, width - n:])
            f.read += n
            if f.read == len(f.feed.tokens):
                try:
                    f.feed, f.parts, f.read = advance(f.step, torch.cat(f.parts)), [], 0
                except StopIteration as returned:
                    flights[row] = None
                    yield f.key, returned.value  # written by the caller before the next job starts
        if shared.width > 2 * int(shared.lengths.max()) + chunk:
            shared.compact()
