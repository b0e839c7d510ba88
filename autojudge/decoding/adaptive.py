"""Adaptive speculation: each request's window follows its own measured acceptance.

Speculation pays only when the draft agrees often enough for the tokens a cycle commits to
outweigh what drafting and the wider verification cost. A :class:`WindowController` keeps one
request's acceptance estimate and, before each cycle, picks the window w in 0..W that
maximises expected committed tokens per unit of cost:

    E(w) = 1 + a + a^2 + ... + a^w      (a: the chance that the next draft token is accepted,
                                         as a run of accepted tokens ends at the first rejection)
    C(w) = target + wide(w) + w * draft   (:class:`CycleCost`, measured on this machine; wide(w): what
                                          verifying w draft tokens more costs, measured at each w)

w = 0 is plain target decoding. While at 0 the controller learns nothing, so after
``probe_every`` idle cycles (a new request: ``first_look``) it drafts one token to look again; each probe that is rejected
doubles that wait (up to ``max_probe_every``), so a draft that never agrees costs almost nothing.
Where drafting could not pay even if every token were accepted, by a margin beyond timing noise
(:func:`could_pay`: a busy batch on a CPU), nobody probes.
The estimate is a decayed count of accepted tokens against rejections (``memory`` per cycle), under a
prior made of what earlier requests measured (:class:`PooledPrior`): the request's first tokens tell
which of them it is like (a chat request among math requests: a few rejections).
Lossless output does not depend on the schedule (every window gives the target's greedy tokens);
judge, top-K and FLy accept what their rule accepts within the window chosen.

In a batch the cycle is shared: every row waits for the widest window, and the forward's cost
grows with the rows. :func:`batch_windows` therefore picks one cap c for the adaptive rows that
maximises the batch's expected tokens per unit of the batch's cycle cost,

    sum_b E_b(min(c, W_b)) / C_B(max_b w_b),   C_B(w) = C(w) at B rows (measured at 1 and at B_max rows)

so speculation is spent only where it raises the batch's throughput by more than ``GAIN_MARGIN``
(a gain within timing noise is not taken); rows that asked for a fixed
window keep it (they count in the cost). At one row this is the controller's own choice.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass

# A gain within timing noise is not taken: the batch drafts only where its expected tokens per unit of
# cost beat plain decoding by more than this, and probes only where a perfect draft would (could_pay).
# (Observed costs are decayed means of many cycles; at one row a W=1 cycle costs 1.1-1.2x a plain one and
# the embedded pair's 45% acceptance gains 1.2-1.3x: at 15% the schedule took that gain only now and then.
# At 10% it stopped drafting wherever a GSM8K answer began with a few rejections, as many do, where its
# paired W=1 ratio was known to ~1% (983 pairs served at one row: median 1.143): replayed on the pair's own
# acceptance traces with the served costs, math's mean window 0.83 against 0.98 at 5%, chat 0.99x either way.)
GAIN_MARGIN = 0.05


@dataclass(frozen=True)
class CycleCost:
    """Cost of one cycle's parts, in seconds (only the ratios matter): at one row, and what each
    row more adds (a linear fit between one row and ``CycleCost.measure``'s ``batch`` rows).

    Verifying w draft tokens more is not linear in w on a CPU: one row is padded to two for the
    weight-first GEMM (:mod:`autojudge.models.cpu.few_rows_linear`), so a few drafts cost almost
    nothing and more cost more (measured at one row, 2 cores: 45, 41, 65, 43, 72, 92 ms for 0..5
    drafts). ``wide`` holds what each w costs (made non-decreasing); a line through the widest
    window alone said a W=3 cycle was 2.25x a plain one where it was 1.6x."""

    target: float  # a target forward verifying 0 draft tokens (one new token)
    target_per_token: float  # each draft token more in that forward (past the measured ``wide``)
    draft: float  # one draft step
    target_per_row: float = 0.0  # each row more: the target forward
    target_per_token_per_row: float = 0.0  # each row more: each draft token more in it
    draft_per_row: float = 0.0  # each row more: a draft step
    wide: tuple[float, ...] = ()  # wide[w-1]: what w draft tokens add to the target forward at one row

    def cycle(self, w: int, batch: int = 1) -> float:
        more = batch - 1
        return (self.target + more * self.target_per_row + self.verify_extra(w)
                + w * more * self.target_per_token_per_row) + self.draft_steps(w, batch)

    def verify_extra(self, w: int) -> float:
        """What w draft tokens add to the target forward at one row."""
        if not w:
            return 0.0
        if w <= len(self.wide):
            return self.wide[w - 1]
        return (self.wide[-1] if self.wide else 0.0) + (w - len(self.wide)) * self.target_per_token

    def draft_steps(self, w: int, batch: int = 1) -> float:
        """The draft's part of a cycle: w steps over ``batch`` rows."""
        return w * (self.draft + (batch - 1) * self.draft_per_row)

    @classmethod
    def measure(cls, backend, prompt: list[int], window: int, repeats: int = 5, batch: int = 1) -> CycleCost:
        """Time the backend's own verify (of 0, 1, .., ``window`` drafts) and propose (1 token) of one
        token after ``prompt``, on a batch state whose caches already hold the prompt (each timed call's
        tokens forgotten again, ``keep``); with ``batch`` > 1 also at that many rows (0 and ``window``
        drafts), for the per-row terms."""
        import torch

        with torch.inference_mode():  # as the loop runs the backend
            plain, wide, step = cls._measure(backend, prompt, range(window + 1), repeats, 1)
            extras = []
            for extra in wide:  # more drafts never cost less: what a timing says otherwise is noise
                extras.append(max(extra, extras[-1] if extras else 0.0))
            slope = extras[-1] / window if window else 0.0
            one = {"target": plain, "target_per_token": slope, "draft": step, "wide": tuple(extras)}
            if batch <= 1:
                return cls(**one)
            many_plain, many_wide, many_step = cls._measure(backend, prompt, (0, window), repeats, batch)
            more = batch - 1
            return cls(**one, target_per_row=max(many_plain - plain, 0.0) / more,
                       target_per_token_per_row=max(many_wide[-1] / max(window, 1) - slope, 0.0) / more,
                       draft_per_row=max(many_step - step, 0.0) / more)

    @staticmethod
    def _measure(backend, prompt: list[int], windows, repeats: int, batch: int
                 ) -> tuple[float, list[float], float]:
        """(plain verify, [what each of ``windows`` past 0 adds to it], one draft step) in seconds."""
        import torch

        prompts, lengths = [prompt] * batch, torch.full((batch,), len(prompt), device=backend.device)
        state = backend.open(batch, uses_draft=True)
        state.verify(prompts, torch.zeros((batch, 0), dtype=torch.long, device=backend.device),
                     need_logits=False)  # prefills, not timed
        state.propose(prompts, 1, need_hidden=False)
        state.keep(lengths)

        fresh = itertools.count(1)  # each timed call reads tokens never read before after the prompt: a backend
        # that reuses the KV blocks of a prefix it has seen (TensorRT-LLM's block reuse) must compute them all
        calls = {w: (lambda seqs, token, w=w: state.verify(
            seqs, torch.full((batch, w), token, dtype=torch.long, device=backend.device), need_logits=False))
            for w in windows}
        calls["draft"] = lambda seqs, _: state.propose(seqs, 1, need_hidden=False)
        samples: dict = {key: [] for key in calls}
        for repeat in range(repeats + 1):  # the first warms caches and kernels up; each repeat times every
            for key, run in calls.items():  # call in turn, so the machine's drift (a VM's: 20% within a
                token = next(fresh)  # minute) hits each alike, as timing one after the other would not
                start = time.perf_counter()
                run([prompt + [token]] * batch, token)
                if repeat:
                    samples[key].append(time.perf_counter() - start)
                state.keep(lengths)  # forget what the call read: every sample starts from the prompt
        plain = samples[windows[0]]  # each window's extra: the median of its differences within repeats
        extras = [max(statistics.median(a - b for a, b in zip(samples[w], plain)), 0.0) for w in windows if w]
        return statistics.median(plain), extras, statistics.median(samples["draft"])


def expected_tokens(a: float, w: int) -> float:
    """Committed tokens of a cycle with window w when each draft token is accepted with chance a."""
    return float(w + 1) if a >= 1.0 else (1.0 - a ** (w + 1)) / (1.0 - a)


class WindowController:
    """One request's acceptance estimate, and when it is time to probe again.

    The estimate is the posterior mean of the request's acceptance given its own decayed counts,
    under a prior that is a mixture of ``types``: (share, accepted, rejected), a Beta distribution's
    pseudo-counts and how likely it is before the request has drafted (shares are relative; one
    type, by default: ``prior`` weighted as ``prior_weight`` trials). A request's evidence makes the
    types that explain it likelier (by their beta-binomial marginal likelihood), so a few rejections
    tell a chat request from the math requests before it. The types' pseudo-counts decay with the
    request's own."""

    def __init__(self, max_window: int, cost: CycleCost, prior: float = 0.5, prior_weight: float = 2.0,
                 memory: float = 0.98, probe_every: int = 8, max_probe_every: int = 128,
                 types: tuple[tuple[float, float, float], ...] = (), first_look: int = 2):
        self.max_window, self.cost, self.memory = max_window, cost, memory
        self.probe_every, self.max_probe_every = probe_every, max_probe_every
        # a new request looks after ``first_look`` idle cycles, not ``probe_every``: its prior mixes the requests
        # before it, and after 20 chat requests a math request's started at a = 0.29, below break-even; looking
        # after 8 cycles, some drafted 0.03 tokens a cycle where alone they draft ~1 (simulated at one row, 20
        # seeds: math after 20 chat requests 1.11x target-only looking after 8 cycles, 1.15x after 2; chat alike)
        self.wait = min(first_look, probe_every)
        self.types = types or ((1.0, prior * prior_weight, (1 - prior) * prior_weight),)
        self.prior_left = 1.0  # the share of the types' pseudo-counts not yet decayed
        self.accepted, self.trials = 0.0, 0.0  # this request's decayed counts
        self.seen_accepted, self.seen_trials = 0, 0  # this request's own counts, never decayed
        self.idle = 0  # cycles at w = 0 since the last look
        self.acceptance = self._posterior_mean()

    def _posterior(self) -> list[tuple[float, float, float]]:
        """(weight, accepted, rejected): each type's share of the posterior and its Beta's pseudo-counts."""
        accepted, rejected = self.accepted, self.trials - self.accepted
        evidence, betas = [], []
        for share, a, r in self.types:
            a, r = max(a * self.prior_left, 1e-6), max(r * self.prior_left, 1e-6)
            evidence.append(math.log(share) + _log_beta(a + accepted, r + rejected) - _log_beta(a, r))
            betas.append((a + accepted, r + rejected))
        top = max(evidence)
        weights = [math.exp(e - top) for e in evidence]
        total = sum(weights)
        return [(w / total, a, r) for w, (a, r) in zip(weights, betas)]

    def _posterior_mean(self) -> float:
        return sum(w * a / (a + r) for w, a, r in self._posterior())

    def above(self, acceptance: float) -> tuple[float, float]:
        """(the posterior probability that this request's acceptance exceeds ``acceptance``, its
        posterior mean where it does): for a Beta(a, r), E[x; x > f] = a / (a + r) * P(Beta(a + 1, r) > f)."""
        from scipy.special import betainc  # the regularised incomplete beta function: a Beta's CDF

        chance = mass = 0.0
        for w, a, r in self._posterior():
            chance += w * (1.0 - float(betainc(a, r, acceptance)))
            mass += w * a / (a + r) * (1.0 - float(betainc(a + 1, r, acceptance)))
        return chance, (mass / chance if chance > 0 else acceptance)

    @property
    def measured(self) -> float | None:
        """This request's own acceptance over every cycle it drafted (None: it never drafted). Not the
        decayed estimate, which stops moving where the request stops drafting (a low point)."""
        return self.seen_accepted / self.seen_trials if self.seen_trials else None

    @property
    def probing(self) -> bool:
        """Idle long enough: the next cycle drafts one token to measure again."""
        return self.idle >= self.wait

    def window(self) -> int:
        """This request's window alone (a batch of one)."""
        return batch_windows([(self, self.max_window, True)], self.cost)[0]

    def update(self, drafted: int, accepted: int) -> None:
        """After a cycle that drafted ``drafted`` tokens and accepted the first ``accepted``."""
        if drafted == 0:
            self.idle += 1
            return
        if self.probing:  # this was a probe: back off while probes fail
            self.wait = self.probe_every if accepted else min(2 * self.wait, self.max_probe_every)
        self.idle = 0
        rejected = 1 if accepted < drafted else 0  # the run stopped at a rejection, or used the whole window
        self.prior_left *= self.memory
        self.accepted = self.memory * self.accepted + accepted
        self.trials = self.memory * self.trials + accepted + rejected
        self.seen_accepted, self.seen_trials = self.seen_accepted + accepted, self.seen_trials + accepted + rejected
        self.acceptance = self._posterior_mean()


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class PooledPrior:
    """Where a new request's acceptance estimate starts: what the requests before it measured, per
    mode (an empirical-Bayes prior). Each of the last ``remember`` ended requests that drafted is a
    type (its own counts, weighted as at most ``weight`` trials), and so is a broad guess (``start``
    weighted as ``start_weight`` trials: a request unlike any before it); the request's own evidence
    picks among them (:class:`WindowController`).

    Why: started from a guess with the weight of 2 trials, a request's estimate swung with every token:
    a draft that agrees 45% of the time (the embedded pair on GSM8K) sat near break-even at one row,
    was judged hopeless after two early rejections and then waited at w = 0 for an accepted probe
    (adaptive@4 drafted 0.3 tokens per cycle where a fixed window of 1 ran 1.2-1.3x target-only).
    One pooled mean weighted as 20 trials fixed that, but served traffic mixes requests the draft
    knows and requests it does not: a chat request after math requests drafted until some 15
    rejections outweighed the math requests' 45%, and a math request after chat requests started
    below break-even (simulated at one row, math and chat alternating: math 1.07x where alone it
    gets 1.25x).

    Requests are remembered by acceptance bin (``bins`` of equal width, the last ``remember / bins``
    in each), and the remembered requests' shares are split equally among the bins, not among the
    requests: how often a kind came recently says little about the next request, and where it
    counted (the last ``remember`` requests, each an equal share), a phase of one kind wiped out the others. After
    35 chat requests (7-10% accepted) every remembered type was chat's, and a math request's chance
    of paying stayed below what a probe's read of its prompt costs: it never drafted, so taught the
    prior nothing, and the next one neither (served at one client, math's mean window fell from
    0.84 before a chat phase to 0.29 after; replayed on the embedded pair's own acceptance traces,
    0.90 to 0.11)."""

    def __init__(self, start: float = 0.5, start_weight: float = 2.0, weight: float = 20.0, remember: int = 32,
                 bins: int = 5):
        self.start, self.start_weight, self.weight = start, start_weight, weight
        # mode -> acceptance bin -> (accepted, trials) of the last requests in it
        self.ended: dict[str, dict[int, deque[tuple[int, int]]]] = {}
        self.remember, self.bins = remember, bins

    def types(self, mode: str) -> tuple[tuple[float, float, float], ...]:
        """(share, accepted, rejected): the broad guess (share 1), then each remembered request (all of
        them together: share n, the number remembered, split equally among the bins)."""
        types = [(1.0, self.start * self.start_weight, (1 - self.start) * self.start_weight)]
        bins = [kept for kept in self.ended.get(mode, {}).values() if kept]
        remembered = sum(len(kept) for kept in bins)
        for kept in bins:
            for accepted, trials in kept:
                scale = min(1.0, self.weight / (trials + 1))
                types.append((remembered / len(bins) / len(kept), (accepted + 0.5) * scale,
                              (trials - accepted + 0.5) * scale))
        return tuple(types)

    def controller(self, mode: str, max_window: int, cost) -> WindowController:
        return WindowController(max_window, cost, types=self.types(mode))

    def learn(self, mode: str, controller: WindowController) -> None:
        """An ended request's own counts (one that never drafted tells nothing)."""
        if controller.seen_trials:
            accepted, trials = controller.seen_accepted, controller.seen_trials
            kept = self.ended.setdefault(mode, {}).setdefault(
                min(int(accepted / trials * self.bins), self.bins - 1), deque(maxlen=-(-self.remember // self.bins)))
            kept.append((accepted, trials))


def batch_windows(rows: list[tuple[WindowController, int, bool]], cost: CycleCost, probe: bool = True,
                  price: float = 0.0, horizon: float = math.inf) -> list[int]:
    """Each row's window for the next cycle. ``rows``: (its estimate, the most it may draft now,
    whether it adapts). A fixed row drafts its most; a probing row one token (when ``probe``:
    in a batch one row's probe makes every row wait for a draft step, so the batch grants probes
    together, :class:`BatchProbes`) if the chance that drafting pays is worth the probe
    (:func:`probe_pays`; ``price``: seconds the draft reads before it drafts, ``horizon``: tokens the
    rows have left); the other adaptive rows share the cap c that maximises the batch's expected
    tokens per unit of its cycle cost, if that beats c = 0 by ``GAIN_MARGIN``. A cycle that drafts
    costs its share of that read too, as the cycles it serves divide it (the tokens left over the
    tokens a cycle commits): at 16 rows the draft first read 16 prompts, ~1 s on 2 cores, for a
    choice priced as the W=1 cycle alone."""
    widest = max((most for _, most, adaptive in rows if adaptive), default=0)
    probe = probe and any(ctl.probing for ctl, _, adaptive in rows if adaptive) and could_pay(cost, len(rows), widest)
    floor = break_even(cost, len(rows), widest) if probe else 1.0

    def looks(ctl: WindowController) -> bool:  # its acceptance may plausibly be high enough for drafting to pay
        return probe_pays(cost, len(rows), widest, *ctl.above(floor), price, horizon)

    fixed = [most if not adaptive else (min(1, most) if probe and ctl.probing and looks(ctl) else None)
             for ctl, most, adaptive in rows]
    choices = range(widest + 1)

    def windows(c: int) -> list[int]:
        return [w if w is not None else min(c, most) for w, (_, most, _) in zip(fixed, rows)]

    def value(c: int) -> float:
        ws = windows(c)
        tokens = sum(expected_tokens(ctl.acceptance, w) for w, (ctl, _, _) in zip(ws, rows))
        seconds = cost.cycle(max(ws, default=0), len(rows))
        if max(ws, default=0) and price:  # the draft's read before it drafts, shared by the cycles it serves
            seconds += price * tokens / len(rows) / horizon
        return tokens / seconds

    best = max(choices, key=value)
    return windows(best if value(best) > (1 + GAIN_MARGIN) * value(0) else 0)


def break_even(cost: CycleCost | ObservedCost, batch: int, max_window: int) -> float:
    """The lowest acceptance at which drafting raises the throughput of ``batch`` rows, all of them at
    it, by more than ``GAIN_MARGIN`` at some window up to ``max_window`` (1.0 where none would)."""
    plain = cost.cycle(0, batch)
    costs = [cost.cycle(w, batch) for w in range(1, max_window + 1)]

    def pays(a: float) -> bool:
        return any(expected_tokens(a, w) * plain > (1 + GAIN_MARGIN) * c for w, c in enumerate(costs, 1))

    low, high = 0.0, 1.0
    if not pays(high):
        return 1.0
    for _ in range(20):  # expected tokens grow with the acceptance: bisect to ~1e-6
        middle = (low + high) / 2
        low, high = (low, middle) if pays(middle) else (middle, high)
    return high


def could_pay(cost: CycleCost | ObservedCost, batch: int, max_window: int) -> bool:
    """Whether drafting could raise throughput at ``batch`` rows by more than ``GAIN_MARGIN`` even
    if every draft token were accepted: if not, probing for a row's acceptance cannot change the
    decision (at 16 rows a W=1 cycle measured 1.8-2.1x a plain one, a perfect draft's break-even),
    and each probe costs its draft's catch-up read, so nobody probes."""
    plain = cost.cycle(0, batch)
    return any((w + 1) * plain > (1 + GAIN_MARGIN) * cost.cycle(w, batch) for w in range(1, max_window + 1))


# A probe is made only where the row's acceptance is above the batch's break-even with at least this
# posterior probability (:meth:`WindowController.above`; and only where that chance of what drafting would
# gain is worth the probe's price, :func:`probe_pays`): at four rows on 2 cores a W=1 cycle costs ~1.7x a
# plain one, break-even ~0.87, and math requests with 20 trials each behind their prior (~45%) have a
# chance of ~0.5%, so their probes could never make it draft; a chat request at one row stops looking
# once its rejections leave little chance above ~0.25.
PROBE_CHANCE = 0.05


def probe_pays(cost: CycleCost | ObservedCost, batch: int, max_window: int, chance: float, mean: float, price: float,
               horizon: float) -> bool:
    """Whether a probe at ``batch`` rows is worth its price, where drafting pays with posterior probability
    ``chance`` (at least ``PROBE_CHANCE``), at ``mean`` acceptance where it does. A probe costs a W=1 cycle
    past a plain one and the draft's read before it (``price`` seconds); if drafting pays, drafting at the
    best window up to ``max_window`` saves that share of the plain cycles of the ``horizon`` tokens the rows
    have left. At four rows on 2 cores a probe cost ~3 plain cycles (its read: the rows' prompts) against
    ~0.1 of 40 plain cycles saved: worth it only at a chance above ~70%, where a chance of 5% let math
    requests (~45% acceptance, break-even ~0.87, yet broad posteriors: each had 1-3 probes' trials) probe
    for 2-3% of the batch's time. What is saved was once priced at ``GAIN_MARGIN`` alone, the least a
    paying draft gains: at one row a math request's first probe (its read: the prompt, ~1.3 plain cycles)
    then needed a 23% chance, where its draft, if it pays, gains ~25%."""
    if chance < PROBE_CHANCE:
        return False
    plain = cost.cycle(0, batch)
    speedup = max(expected_tokens(mean, w) * plain / cost.cycle(w, batch) for w in range(1, max(max_window, 1) + 1))
    saved = horizon * plain * max(0.0, 1.0 - 1.0 / speedup)
    return chance * saved >= cost.cycle(1, batch) - plain + price

# Probing costs more than its draft step: the draft first reads every row's tokens since the last look
# (measured at 4 clients on 2 cores: 8 probes in 23 s took 2.5 s, 7% of a batch that never drafted).
# The batch spends at most this share of its decoding time on probes.
PROBE_BUDGET = 0.03


class BatchProbes:
    """When adaptive rows may probe. A batch of several rows: after ``probe_every`` cycles without
    drafting, all its probing rows look at once; while the batch's probes do not make it draft by
    choice, the wait doubles (up to ``max_probe_every``). A batch of one leaves the wait to its row's
    controller. Either way a probe waits while what probes have cost (``record``: a probe cycle's
    seconds past a plain cycle, its draft's catch-up read included) exceeds ``budget`` of the
    batch's decoding time, and while the read it would make first does not fit in what is left
    (at 16 rows a first probe made the draft read 16 prompts: 1.3-1.9 s of a 15 s run on 2 cores).
    Both sums forget with a half-life of ``memory_s`` seconds of decoding, so the budget holds over
    any stretch of a server's life: an hour without probes would otherwise have saved 108 s of them
    for one burst; now at most ``budget`` of ``memory_s / ln 2`` (3% of 87 s) is saved up."""

    def __init__(self, probe_every: int = 8, max_probe_every: int = 128, budget: float = PROBE_BUDGET,
                 memory_s: float = 60.0):
        self.probe_every, self.max_probe_every, self.budget = probe_every, max_probe_every, budget
        self.memory_s = memory_s
        self.wait, self.idle = probe_every, 0
        self.spent, self.elapsed = 0.0, 0.0  # seconds: on probes past plain cycles; of every cycle
        self.probed = False  # the windows last returned hold a probe

    def affordable(self, upfront: float = 0.0) -> bool:
        """Whether a probe whose draft must first read for about ``upfront`` seconds fits the budget."""
        return self.spent + upfront <= self.budget * self.elapsed

    def record(self, seconds: float, extra: float) -> None:
        """A cycle took ``seconds``, ``extra`` of them more than a plain cycle: a probe's is charged."""
        kept = 0.5 ** (seconds / self.memory_s)
        self.spent, self.elapsed = self.spent * kept, self.elapsed * kept + seconds
        if self.probed:
            self.spent += max(extra, 0.0)

    def windows(self, rows: list[tuple[WindowController, int, bool]], cost: CycleCost, upfront: float = 0.0,
                horizon: float = math.inf, probe_now: bool = True) -> list[int]:
        """Each row's window (:func:`batch_windows`); ``upfront``: seconds the draft would read for before a
        probe (the rows' tokens since it last drafted), which must fit the budget too; ``horizon``: the
        tokens the rows have left (a probe's possible gain); ``probe_now`` False: no probe in this cycle."""
        self.probed = False
        if len(rows) == 1:
            ctl, _, adaptive = rows[0]
            chosen = batch_windows(rows, cost, probe=probe_now and self.affordable(upfront), price=upfront,
                                   horizon=horizon)
            self.probed = adaptive and ctl.probing and chosen[0] > 0
            return chosen
        chosen = batch_windows(rows, cost, probe=False, price=upfront, horizon=horizon)  # what it drafts by choice
        if max(chosen, default=0) > 0:
            self.wait, self.idle = self.probe_every, 0
            return chosen
        if (self.idle >= self.wait and probe_now and self.affordable(upfront)
                and any(ctl.probing for ctl, _, adaptive in rows if adaptive)):
            self.wait, self.idle = min(2 * self.wait, self.max_probe_every), 0
            chosen = batch_windows(rows, cost, probe=True, price=upfront, horizon=horizon)
            self.probed = max(chosen, default=0) > 0
            return chosen
        self.idle += 1
        return chosen


class ObservedCost:
    """The start-up :class:`CycleCost`, corrected by what this batch's cycles really cost (a served
    batch has holes, longer contexts and per-row I/O the start-up measurement does not see): a
    (batch size, window) already run costs its decayed measured mean. Another one costs its batch
    size's plain cycle (measured; where that size has only drafted, the model's scaled as the plain
    cycles measured elsewhere compare with it) plus the model's extra for drafting, scaled by how
    much dearer drafting has turned out than the model said at the batch sizes where both were measured: the start-up
    model can be wrong about drafting alone (measured at 16 rows on a 2-core CPU: a W=1 cycle 2.1x a
    plain one where the model said 1.6x), and one batch size's lesson then holds for the others.
    Only decode cycles are observed (:meth:`autojudge.decoding.loop.Running.cycle`): one that feeds
    a prompt chunk pays a one-off the window does not cost again. So does one whose draft first
    catches up on a new row's prompt or on idle cycles' tokens; it is observed without that read
    (where the backend cannot read it apart, without its proposal, the model's draft steps standing in).

    A VM's speed drifts within seconds (2 cores: successive cycles' times correlate 0.8, and means of
    50 cycles ranged 39-60 ms), so a window timed now against a plain cycle timed many cycles ago says
    more about the drift than about the window (one row, W=1 at 1.13x a plain cycle: priced 0.87x-1.57x,
    10th to 90th percentile). Where the batch switches between plain and drafting cycles, the two next
    to each other give a paired ratio; a window with paired ratios costs the plain cycle times their
    decayed mean (``ratio_memory``)."""

    def __init__(self, model: CycleCost, memory: float = 0.8, ratio_memory: float = 0.9):
        self.model, self.memory, self.ratio_memory = model, memory, ratio_memory
        self.seen: dict[tuple[int, int], float] = {}  # (batch, w) -> seconds per cycle
        self.ratios: dict[tuple[int, int], float] = {}  # (batch, w > 0) -> its cycle over the plain one next to it
        self._last: tuple[int, int, float] | None = None  # the last cycle observed: (batch, w, seconds)

    def observe(self, w: int, batch: int, seconds: float) -> None:
        old = self.seen.get((batch, w))
        self.seen[(batch, w)] = seconds if old is None else self.memory * old + (1 - self.memory) * seconds
        last, self._last = self._last, (batch, w, seconds)
        if last is None or last[0] != batch or (last[1] == 0) == (w == 0) or min(seconds, last[2]) <= 0:
            return  # not a switch between a plain and a drafting cycle of one batch size
        (drafted, drafting_s), plain_s = ((w, seconds), last[2]) if w else ((last[1], last[2]), seconds)
        ratio, old = drafting_s / plain_s, self.ratios.get((batch, drafted))
        self.ratios[(batch, drafted)] = ratio if old is None else (
            self.ratio_memory * old + (1 - self.ratio_memory) * ratio)

    def cycle(self, w: int, batch: int = 1) -> float:
        """Never less than the plain cycle plus the model's extra for drafting, scaled as the plain
        cycle is: timings are noisy (a served W=1 cycle once averaged less than a plain one), and
        the start-up model timed what drafting computes."""
        plain = self._plain(batch)
        if w == 0:
            return plain
        floor = plain * self.model.cycle(w, batch) / self.model.cycle(0, batch)
        if (batch, w) in self.ratios:
            return max(plain * self.ratios[(batch, w)], floor)
        if (batch, w) in self.seen:
            return max(self.seen[(batch, w)], floor)
        return max(plain + self._drafting_scale(batch) * self._model_extra(w, batch), floor)

    def _plain(self, batch: int) -> float:
        """A cycle without drafting at ``batch`` rows: measured; or, where this batch size has only
        drafted, the model's scaled as the plain cycles measured at other sizes (or at start-up)
        compare with it (its drafting cycles tell how dear drafting is, not what a plain cycle costs:
        scaled by them, drafting looked as cheap as the model said; at 4 rows a W=1 cycle cost 2x a
        plain one for 25 cycles priced at 1.28x); or, nothing measured at that size, the model's."""
        if (batch, 0) in self.seen:
            return self.seen[(batch, 0)]
        if any(b == batch for b, _ in self.seen):
            plains = [s / self.model.cycle(0, b) for (b, v), s in self.seen.items() if v == 0] or [1.0]
            return self.model.cycle(0, batch) * sum(plains) / len(plains)  # none measured: the start-up one's
        return self.model.cycle(0, batch)  # nothing measured at this size

    def _scale(self, batch: int) -> float:
        """How the measured cycles at ``batch`` rows compare with the model (1.0: none measured)."""
        ratios = [s / self.model.cycle(v, b) for (b, v), s in self.seen.items() if b == batch]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def _model_extra(self, w: int, batch: int) -> float:
        return self.model.cycle(w, batch) - self.model.cycle(0, batch)

    def _drafting_scale(self, batch: int) -> float:
        """Measured extra over the model's extra for drafting, over every drafting cycle measured (past
        its batch size's plain cycle, :meth:`_plain`); without one, the scale of ``batch``'s cycles."""
        ratios = [(s - self._plain(b)) / self._model_extra(v, b) for (b, v), s in self.seen.items()
                  if v > 0 and self._model_extra(v, b) > 0]
        return max(sum(ratios) / len(ratios), 0.0) if ratios else self._scale(batch)
