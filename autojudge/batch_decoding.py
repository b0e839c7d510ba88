"""Speculative decoding of many prompts at once: the loop of :mod:`autojudge.decoding`, batched.

One forward over B rows costs far less than B forwards of one row (the weights are read
once; on the 2-core CPU a [16, 5] target verification costs ~4.5x a [1, 5] one, not 16x),
so evaluation and offline generation decode their prompts in batches. Every row runs the
same cycle as the batch-1 loop (propose W, verify, accept, commit); rows accept different
numbers of tokens, so their sequences have different lengths.

Rows share one KV cache with holes (:class:`~autojudge.ragged_cache.RaggedCache`); a row that ends
(EOS, length, a stop string) leaves the batch: its cache rows are dropped.

Outputs equal the batch-1 decoder's up to floating-point rounding (the batched matmuls sum in
another order, which can flip a near-tied greedy choice); in float64 they are identical
(tested). The acceptance rule and the draft loop are the batch-1 decoder's own code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from autojudge.decoding import (DecodeConfig, GenerationResult, SpeculativeDecoder, StopStrings, first_stop,
                                judge_settings)
from autojudge.errors import AutoJudgeError
from autojudge.metrics import SpecDecodeMetrics
from autojudge.ragged_cache import RaggedCache


class BatchSpeculativeDecoder:
    """:class:`SpeculativeDecoder`'s loop over a batch of prompts (in-process models)."""

    def __init__(self, decoder: SpeculativeDecoder):
        self.decoder = decoder
        self.backend = decoder.backend
        self.pad_id = decoder.target.tokenizer.pad_token_id or 0

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], config: DecodeConfig = DecodeConfig()
                 ) -> list[GenerationResult]:
        """Decode every prompt; results in prompt order, as ``SpeculativeDecoder.generate`` gives
        them one by one (``wall_time_s`` of each is the whole batch's time)."""
        backend, target = self.backend, self.decoder.target
        config.validate(backend.has_draft, backend.judge)
        if not prompts or any(not p for p in prompts):
            raise AutoJudgeError("every prompt must have at least one token")
        window = 0 if config.mode == "target" else config.window
        threshold, need_draft_hidden = judge_settings(config, backend.judge)
        stops = StopStrings(backend.tokenizer, config.stop)
        eos = backend.eos_token_ids

        start = time.perf_counter()
        sequences = [list(p) for p in prompts]  # prompt + generated, per prompt
        prompt_lens = [len(p) for p in prompts]
        metrics = [SpecDecodeMetrics(mode=config.mode, window=window) for _ in prompts]
        finish = ["length"] * len(prompts)
        active = list(range(len(prompts)))  # batch row -> prompt index
        target_cache = RaggedCache(target, len(prompts))
        draft_cache = RaggedCache(self.decoder.draft, len(prompts)) if window else None

        while active:
            rows = [sequences[i] for i in active]
            committed = torch.tensor([len(s) for s in rows], device=target.device)  # [B]
            room = torch.tensor([config.max_new_tokens - (len(s) - prompt_lens[i]) for s, i in zip(rows, active)],
                                device=target.device)  # [B] tokens each row may still emit
            row_w = (room - 1).clamp(max=window)  # [B] the window each row would use alone
            w = int(row_w.max())

            draft_tokens = committed.new_empty((len(active), 0))  # [B, w]
            draft_hidden = None  # [B, w, Hd]
            if w:
                ids, fed = draft_cache.unread(rows, self.pad_id)  # the first read is ragged, later ones dense
                read = lambda block, cache=draft_cache, ids=ids, fed=fed: cache.read(  # noqa: E731
                    block, fed if block is ids else torch.ones_like(block, dtype=torch.bool))
                draft_tokens, draft_hidden = backend.draft_greedy(read, ids, w, need_draft_hidden)

            ids, fed = target_cache.unread(rows, self.pad_id)
            block = torch.cat([ids, draft_tokens], dim=1)  # [B, U + w]
            fed = torch.cat([fed, torch.ones_like(draft_tokens, dtype=torch.bool)], dim=1)
            target_hidden = target_cache.read(block, fed)[:, -(w + 1):]  # [B, w+1, Ht]
            target_tokens = target.greedy(target_hidden, backend.vocab)  # [B, w+1]

            result = backend.accept(config, threshold, draft_tokens, target_tokens, draft_hidden, target_hidden)
            # A row near its budget takes only its own first row_w positions: acceptance at k
            # depends on positions <= k alone, so this is what the row would get by itself.
            num_accepted = torch.minimum(result.num_accepted, row_w)  # [B]
            next_tokens = target_tokens.gather(1, num_accepted[:, None])[:, 0]  # [B]
            in_row = torch.arange(w, device=target.device)[None, :] < num_accepted[:, None]  # [B, w]
            target_cache.keep(committed + num_accepted)
            if draft_cache is not None:
                draft_cache.keep(committed + num_accepted)

            still = []
            for row, (i, n, next_token, drafted, mismatches, row_window) in enumerate(zip(
                    active, num_accepted.tolist(), next_tokens.tolist(), draft_tokens.tolist(),
                    (result.mismatch_accepted & in_row).sum(dim=1).tolist(), row_w.tolist())):
                metrics[i].record_cycle(row_window or None, int(need_draft_hidden), n, mismatches)
                if self._extend(i, drafted[:n] + [next_token], sequences, prompt_lens, config, eos, stops, finish):
                    still.append(row)
            if len(still) < len(active):
                keep = torch.tensor(still, dtype=torch.long, device=target.device)
                target_cache.select(keep)
                if draft_cache is not None:
                    draft_cache.select(keep)
                active = [active[row] for row in still]

        seconds = time.perf_counter() - start
        results = []
        for i, (seq, m) in enumerate(zip(sequences, metrics)):
            token_ids = seq[prompt_lens[i]:]
            m.num_generated_tokens, m.wall_time_s = len(token_ids), seconds
            text = backend.tokenizer.decode(token_ids, skip_special_tokens=True)
            if finish[i] == "stop":
                text = stops.cut_text(text)
            results.append(GenerationResult(token_ids, text, finish[i], m))
        return results

    @staticmethod
    def _extend(i: int, new_ids: list[int], sequences: list[list[int]], prompt_lens: list[int],
                config: DecodeConfig, eos: frozenset[int], stops: StopStrings, finish: list[str]) -> bool:
        """Commit a cycle's tokens to prompt i (cut at EOS or a stop string); False once it has
        ended (EOS, stop string, or its max_new_tokens reached)."""
        seq = sequences[i]
        cut, reason = first_stop(new_ids, eos)
        if reason is None and stops:
            cut, reason = stops.check(seq[prompt_lens[i]:] + new_ids, len(new_ids))
        seq.extend(new_ids[:cut])  # a row never drafts past its budget (row_w)
        if reason is None and len(seq) - prompt_lens[i] >= config.max_new_tokens:
            reason = "length"
        if reason:
            finish[i] = reason
        return reason is None
