"""The in-process backend over static KV caches, its steps replayed as CUDA graphs.

Every cycle's model calls have a static shape once a batch is decoding: the draft reads 1 or
2 tokens per row, then 1 per step; the target verifies 1 + w tokens per row (the last
committed token and the w drafts). Each such call, the decoder stack and the greedy head
together, is one *step* keyed by its shape; on CUDA a step is captured as a
``torch.cuda.CUDAGraph`` the first time its shape appears and replayed after that (one
launch instead of ~1,000 for an 8B forward), on other devices it runs eagerly (the same code:
the CPU tests compare it token for token with :class:`~autojudge.decoding.SpeculativeDecoder`).
Prefills and catch-ups of several tokens run eagerly everywhere.

Shapes are static because the batch is: a batch holds ``rows`` rows of KV cache
(:class:`~autojudge.gpu.static_cache.StaticKV`); rows that leave free their place at the end
(``select`` compacts the survivors in place, so the captured graphs stay valid), pads and
rows not in use feed nothing (``fed`` False: they write only the dump slot). A batch that
grows past its rows reallocates and recaptures. Caches and their graphs are kept by the
backend and reused by the next batch of the same size (capture costs ~0.1-1 s per shape).

Capture: warm-ups on a side stream, then ``torch.cuda.graph`` (torch/cuda/graphs.py: the
capture runs on its own stream; make_graphed_callables warms up there the same way), both
with inputs that feed nothing, so neither touches the cache; the step's inputs are static
tensors copied into before each replay, its outputs static tensors cloned after it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from autojudge.decoding.backend import Proposal, Verification
from autojudge.decoding.in_process import InProcessBackend, InProcessBatch, SpeculativeDecoder
from autojudge.errors import AutoJudgeError
from autojudge.gpu.static_cache import StaticKV
from autojudge.judge import Judge
from autojudge.models import CausalLM

DEFAULT_CAPACITY = 4096  # tokens per row: prompt + generated + one window


def greedy_head(lm: CausalLM, vocab: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """hidden [R, S, H] -> [R, S] greedy ids among the first ``vocab`` (and lm.greedy_vocab), without host syncs.

    On a CPU this is ``lm.greedy`` itself (the in-process decoder's call). On CUDA
    ``CausalLM.greedy`` is an argmax of the head's logits (few_rows_linear is plain F.linear
    off the CPU, autojudge/models/cpu/few_rows_linear.py; the fp32 screened head is exact, ties
    to the lowest id like argmax, autojudge/models/cpu/greedy_head.py) but syncs the host (a
    boolean index for greedy_vocab, nonzero in the screen): here the rows are chosen once.
    """
    if lm.device.type == "cpu":
        return lambda hidden: lm.greedy(hidden, vocab)
    head = lm.model.get_output_embeddings()
    ids = None if lm.greedy_vocab is None else lm.greedy_vocab[lm.greedy_vocab < vocab].to(lm.device)  # [K]
    rows = slice(0, vocab) if ids is None else ids
    weight, bias = head.weight[rows], None if head.bias is None else head.bias[rows]  # [K, H], [K]

    def greedy(hidden: torch.Tensor) -> torch.Tensor:
        best = F.linear(hidden, weight, bias).argmax(-1)  # [R, S]
        return best if ids is None else ids[best]
    return greedy


class StepGraphs:
    """Steps by key: captured as CUDA graphs on first use (``capture``), else called eagerly."""

    def __init__(self, capture: bool):
        self.capture = capture
        self._graphs: dict = {}  # key -> (static inputs, graph, static outputs)

    def run(self, key, step: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...],
            idle: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """``step(*inputs)``; ``idle`` are inputs of the same shapes under which the step changes nothing
        (what the warm-ups and the capture read)."""
        if not self.capture:
            return step(*inputs)
        if key not in self._graphs:
            self._graphs[key] = self._record(step, idle)
        static_inputs, graph, outputs = self._graphs[key]
        for static, value in zip(static_inputs, inputs):
            static.copy_(value)
        graph.replay()
        return tuple(out.clone() for out in outputs)

    @staticmethod
    def _record(step, idle):
        static_inputs = tuple(x.clone() for x in idle)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step(*static_inputs)
        return static_inputs, graph, outputs

    def __len__(self) -> int:
        return len(self._graphs)


class ModelSteps:
    """One model's static cache for ``rows`` rows, its host-side lengths and its steps."""

    def __init__(self, lm: CausalLM, rows: int, capacity: int, vocab: int, pad_id: int, capture: bool):
        self.lm, self.rows, self.pad_id = lm, rows, pad_id
        self.kv = StaticKV(lm, rows, capacity)
        self.lengths = [0] * rows  # host mirror of kv.lengths (inputs are built on the host)
        self.graphs = StepGraphs(capture)
        self._greedy = greedy_head(lm, vocab)

    def reset(self) -> None:
        self.kv.lengths.zero_()
        self.lengths = [0] * self.rows

    def _step(self, ids: torch.Tensor, fed: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.kv.read(ids, fed)[:, -keep:]  # [R, keep, H]
        return hidden, self._greedy(hidden)  # [R, keep, H], [R, keep]

    def unread(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Each live row's tokens past what it has read, left-padded; rows not in use feed nothing:
        ids [R, U], fed [R, U], and the count each row feeds."""
        tails = [seq[n:] for seq, n in zip(sequences, self.lengths)]
        width = max(len(t) for t in tails)
        tails += [[]] * (self.rows - len(tails))
        ids = torch.tensor([[self.pad_id] * (width - len(t)) + t for t in tails], dtype=torch.long)
        fed = torch.tensor([[False] * (width - len(t)) + [True] * len(t) for t in tails])
        return ids.to(self.lm.device), fed.to(self.lm.device), [len(t) for t in tails]

    def read(self, ids: torch.Tensor, fed: torch.Tensor, counts: list[int], keep: int, graphed: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids/fed [R, S] (``counts``: fed.sum(1) known on the host, so no sync) -> (last ``keep``
        states [R, keep, H], their greedy tokens [R, keep]); a graph replay when ``graphed`` (and
        the device captures), else eager."""
        longest = max(n + c for n, c in zip(self.lengths, counts))
        if longest > self.kv.capacity:
            raise AutoJudgeError(f"a row would hold {longest} tokens, past the static cache's {self.kv.capacity} "
                                 "(raise the backend's capacity)")
        self.lengths = [n + c for n, c in zip(self.lengths, counts)]
        if not graphed:
            return self._step(ids, fed, keep)
        idle = (torch.full_like(ids, self.pad_id), torch.zeros_like(fed))
        return self.graphs.run(("read", ids.shape[1], keep), lambda i, f: self._step(i, f, keep), (ids, fed), idle)

    def keep(self, lengths: torch.Tensor) -> None:
        """Live row b keeps at most ``lengths[b]`` [B] tokens."""
        n = lengths.numel()
        self.kv.lengths[:n] = torch.minimum(self.kv.lengths[:n], lengths.to(self.kv.lengths))
        self.lengths[:n] = [min(a, b) for a, b in zip(self.lengths, lengths.tolist())]

    def select(self, rows: torch.Tensor) -> None:
        self.kv.copy_rows(rows.to(self.lm.device))
        kept = [self.lengths[i] for i in rows.tolist()]
        self.lengths = kept + [0] * (self.rows - len(kept))

    def grow(self, rows: int, live: int) -> ModelSteps:
        """A copy with room for ``rows`` rows (new tensors: its graphs are captured again)."""
        bigger = ModelSteps.__new__(ModelSteps)
        bigger.lm, bigger.rows, bigger.pad_id, bigger._greedy = self.lm, rows, self.pad_id, self._greedy
        bigger.kv = StaticKV(self.lm, rows, self.kv.capacity)
        self.kv.copy_rows(torch.arange(live, device=self.lm.device), into=bigger.kv)
        bigger.lengths = self.lengths[:live] + [0] * (rows - live)
        bigger.graphs = StepGraphs(self.graphs.capture)
        return bigger


class GraphBatch(InProcessBatch):
    """A running batch over static caches (the :class:`~autojudge.decoding.backend.BatchState` protocol;
    keep is InProcessBatch's, over these caches)."""

    def __init__(self, backend: GraphBackend, target: ModelSteps, draft: ModelSteps | None, batch: int):
        self.b, self.target, self.draft, self.live = backend, target, draft, batch

    def _caches(self) -> list[ModelSteps]:
        return [m for m in (self.target, self.draft) if m is not None]

    def _live(self, width: int) -> tuple[torch.Tensor, list[int]]:
        """fed [R, width] for ``width`` tokens in every live row, and its counts."""
        rows = self.target.rows
        fed = (torch.arange(rows, device=self.b.device) < self.live)[:, None].expand(rows, width)  # [R, width]
        return fed, [width] * self.live + [0] * (rows - self.live)

    def propose(self, sequences: Sequence[list[int]], w: int, need_hidden: bool) -> Proposal:
        """As InProcessBatch.propose: the unread tail (1 or 2 tokens in steady state: graphed), then
        one token per step (graphed); the state after d_{w-1} only when the judge needs it."""
        draft = self.draft
        ids, fed, counts = draft.unread(sequences)  # [R, U]
        drafted, states = [], []
        for step in range(w + int(need_hidden)):
            hidden, token = draft.read(ids, fed, counts, keep=1, graphed=ids.shape[1] <= 2)  # [R, 1, Hd], [R, 1]
            if step:
                states.append(hidden)  # the state after reading d_{step-1}
            if step == w:
                break
            ids, (fed, counts) = token, self._live(1)
            drafted.append(token)
        n = self.live
        return Proposal(torch.cat(drafted, dim=1)[:n], torch.cat(states, dim=1)[:n] if need_hidden else None)

    def catch_up(self, sequences: Sequence[list[int]]) -> None:
        """As InProcessBatch.catch_up, eager (a long lag is no steady shape)."""
        ids, fed, counts = self.draft.unread([seq[:-1] for seq in sequences])  # [R, U - 1]
        if ids.shape[1]:
            self.draft.read(ids, fed, counts, keep=1, graphed=False)

    def verify(self, sequences: Sequence[list[int]], draft_tokens: torch.Tensor, need_logits: bool,
               windows: torch.Tensor | None = None) -> Verification:  # (windows: unread drafts are cropped by keep)
        """As InProcessBatch.verify: one pass over each row's unread tail + its w drafts
        (graphed when the tail is the one last committed token)."""
        target, w = self.target, draft_tokens.shape[1]
        ids, fed, counts = target.unread(sequences)  # [R, U]
        drafts = torch.full((target.rows, w), target.pad_id, dtype=torch.long, device=self.b.device)
        drafts[: self.live] = draft_tokens
        block = torch.cat([ids, drafts], dim=1)  # [R, U + w]
        live, live_counts = self._live(w)
        fed, counts = torch.cat([fed, live], dim=1), [a + b for a, b in zip(counts, live_counts)]
        hidden, tokens = target.read(block, fed, counts, keep=w + 1, graphed=ids.shape[1] == 1)  # [R, w+1, Ht]
        hidden, tokens = hidden[: self.live], tokens[: self.live]
        logits = self.b.target.logits(hidden[:, :w])[..., : self.b.vocab] if need_logits else None  # [B, w, V]
        return Verification(tokens, hidden, logits)

    def select(self, rows: torch.Tensor) -> None:
        super().select(rows)
        self.live = rows.numel()

    def join(self, count: int) -> None:
        if self.live + count > self.target.rows:  # past the static batch: reallocate (and recapture)
            rows = max(self.live + count, 2 * self.target.rows)
            self.target = self.target.grow(rows, self.live)
            self.draft = self.draft.grow(rows, self.live) if self.draft else None
        self.live += count


class GraphBackend(InProcessBackend):
    """The in-process backend over static KV caches whose steps replay as CUDA graphs on CUDA
    (``graphs=None``: on CUDA only). The judge step is the in-process backend's (the fused op on CUDA)."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None,
                 capacity: int = DEFAULT_CAPACITY, graphs: bool | None = None):
        super().__init__(target, draft, judge)
        self.capacity = capacity
        self.graphs = target.device.type == "cuda" if graphs is None else graphs
        if self.graphs and target.device.type != "cuda":
            raise AutoJudgeError("CUDA graphs need the models on a CUDA device")
        self._idle: dict[tuple, list[tuple[ModelSteps, ModelSteps | None]]] = {}  # (rows, uses_draft) -> caches

    def open(self, batch: int, uses_draft: bool) -> GraphBatch:
        key = (batch, uses_draft)
        pool = self._idle.setdefault(key, [])
        if pool:
            target, draft = pool.pop()
            for m in (target, draft):
                if m is not None:
                    m.reset()
        else:
            def steps(lm: CausalLM) -> ModelSteps:
                return ModelSteps(lm, batch, self.capacity, self.vocab, self.pad_id, self.graphs)
            target, draft = steps(self.target), (steps(self.draft) if uses_draft else None)
        state = GraphBatch(self, target, draft, batch)
        # Once the batch is dropped, these caches (and their captured graphs) serve the next batch of this size.
        weakref.finalize(state, pool.append, (target, draft))
        return state


class GraphDecoder(SpeculativeDecoder):
    """:class:`~autojudge.decoding.SpeculativeDecoder` over :class:`GraphBackend` (same checks, same loop)."""

    def __init__(self, target: CausalLM, draft: CausalLM | None = None, judge: Judge | None = None,
                 check_judge_names: bool = True, capacity: int = DEFAULT_CAPACITY, graphs: bool | None = None):
        super().__init__(target, draft, judge, check_judge_names)
        self.backend = GraphBackend(target, draft, judge, capacity=capacity, graphs=graphs)
