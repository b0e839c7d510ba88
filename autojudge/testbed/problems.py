"""The testbed's problems: two-step word problems whose wording is free and whose numbers are not.

In the spirit of the paper's Figure 2, an answer is mostly *wording* (which synonym, which
connective) around a few *answer-critical* tokens (the numbers, the operators, and the verb
that says which operator). A question such as

    mia has 12 stamps with a friend . then she gets 9 more . later she loses 1 with a friend .
    how many stamps does mia have now ?

is answered, in the target's style and in the draft's, as

    mia had 12 stamps . then she got 9 , thus 12 + 9 = 21 . later she lost 1 , hence 21 - 1 = 20 . #### 20
    mia owned 12 stamps . next she found nine , hence 12 + nine = 21 . then she gave one , so 21 - one = 20 . #### 20

Every wording slot of an answer has four options. Which one a *style* writes is a fixed rule
of the question: "echo" slots repeat the question's choice (``owns`` -> ``owned``), "keyed"
slots follow the person's name. The target and the draft learn different styles (the draft
writes ``option[(i + shift) % 4]`` where the target writes ``option[i]``), so they disagree on
wording, and the draft spells small numbers out (``four`` for ``4``): a mismatch at a number
is then sometimes harmless and sometimes not, so a judge must read the token, not just the slot.
The draft is smaller and trained less, so it also errs on some numbers. Swapping a
wording token (or a number for its spelling) cannot change the answer; swapping a number, an
operator or an operation's verb for one of the other operation does: that is the ground truth of every mismatch
(:func:`meaning`).

Problems are a pure function of (split, index): ``random.Random(f"autojudge-testbed/{split}/{index}")``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = (("mia", "she"), ("tom", "he"), ("ana", "she"), ("leo", "he"),
         ("zoe", "she"), ("sam", "he"), ("eva", "she"), ("max", "he"))
ITEMS = ("apples", "pens", "coins", "books", "cards", "shells", "stamps", "marbles")
FILLERS = ("", "at the market", "on monday", "in the morning", "with a friend", "after school")
ADD_VERBS = (("buys", "bought"), ("gets", "got"), ("finds", "found"), ("wins", "won"))
SUB_VERBS = (("sells", "sold"), ("gives", "gave"), ("loses", "lost"), ("eats", "ate"))
HAS = (("has", "had"), ("owns", "owned"), ("keeps", "kept"), ("holds", "held"))
THEN = (("then", "then"), ("later", "later"), ("next", "next"), ("afterwards", "afterwards"))
SO = ("so", "thus", "hence", "now")
NUMBERS = tuple(str(n) for n in range(100))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
OPERATORS = ("+", "-")
STRUCTURE = ("####", "<eos>")  # the answer line's marker and the end: swapping either in or out is critical
SPLITS = ("lm", "train", "test")  # model training, mining (the judge's data), held-out evaluation


@dataclass(frozen=True)
class Style:
    """How an answer's wording is chosen: option ``(choice + shift[slot]) % 4`` of each wording
    slot, and numbers up to ten spelled out (``four``) at the number slots in ``spell``."""

    shift: dict[str, int]
    spell: frozenset[int] = frozenset()  # indices of the answer's numbers (0..NUMBER_SLOTS-1)

    def pick(self, slot: str, options: tuple[str, ...], choice: int) -> str:
        return options[(choice + self.shift.get(slot, 0)) % len(options)]

    def number(self, slot: int, value: int) -> str:
        return NUMBER_WORDS[value] if slot in self.spell and value < len(NUMBER_WORDS) else str(value)


SLOTS = ("has", "then1", "verb1", "so1", "then2", "verb2", "so2")
NUMBER_SLOTS = 9  # a, then per step: x, left, x, right (the final "#### N" is always digits)
TARGET_STYLE = Style({})
DRAFT_STYLE = Style({"has": 1, "then1": 2, "verb1": 1, "so1": 1, "then2": 3, "verb2": 3, "so2": 2},
                    spell=frozenset({1, 3, 5, 7}))  # the numbers each step adds or takes away


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    choices: dict  # the question's own wording choices (what echo slots repeat)
    numbers: tuple[int, int, int]
    ops: tuple[str, str]

    def solution(self, style: Style = TARGET_STYLE) -> str:
        """The worked answer in ``style``, ending in ``#### N``."""
        c, (a, b, d), (op1, op2) = self.choices, self.numbers, self.ops
        r1 = a + b if op1 == "+" else a - b
        name, pronoun = NAMES[c["name"]]
        words = [name, style.pick("has", _past(HAS), c["has"]), style.number(0, a), ITEMS[c["item"]], "."]
        for step, (op, x, left, right) in enumerate(((op1, b, a, r1), (op2, d, r1, self.answer)), 1):
            verbs = _past(ADD_VERBS if op == "+" else SUB_VERBS)
            k = 1 + 4 * (step - 1)  # this step's number slots: k .. k + 3
            words += [style.pick(f"then{step}", _past(THEN), c[f"then{step}"]), pronoun,
                      style.pick(f"verb{step}", verbs, c[f"verb{step}"]), style.number(k, x), ",",
                      style.pick(f"so{step}", SO, c["name"] + step), style.number(k + 1, left), op,
                      style.number(k + 2, x), "=", style.number(k + 3, right), "."]
        return " ".join(words + ["####", str(self.answer)])


def _past(pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(past for _, past in pairs)


def problem(split: str, index: int) -> Problem:
    """Problem ``index`` of ``split`` (deterministic; splits are disjoint by seed)."""
    rng = random.Random(f"autojudge-testbed/{split}/{index}")
    c = {"name": rng.randrange(len(NAMES)), "item": rng.randrange(len(ITEMS)), "has": rng.randrange(4),
         "then1": rng.randrange(4), "then2": rng.randrange(4), "verb1": rng.randrange(4), "verb2": rng.randrange(4)}
    a, b, d = rng.randint(3, 20), rng.randint(1, 9), rng.randint(1, 9)
    op1 = rng.choice(OPERATORS) if a >= b else "+"
    r1 = a + b if op1 == "+" else a - b
    op2 = rng.choice(OPERATORS) if r1 >= d else "+"
    answer = r1 + d if op2 == "+" else r1 - d
    name, pronoun = NAMES[c["name"]]
    item = ITEMS[c["item"]]
    parts = [name, HAS[c["has"]][0], str(a), item, rng.choice(FILLERS), "."]
    for step, (op, x) in enumerate(((op1, b), (op2, d)), 1):
        verb = (ADD_VERBS if op == "+" else SUB_VERBS)[c[f"verb{step}"]][0]
        more = "more" if op == "+" and rng.random() < 0.5 else ""
        parts += [THEN[c[f"then{step}"]][0], pronoun, verb, str(x), more, rng.choice(FILLERS), "."]
    parts += ["how", "many", item, "does", name, "have", "now", "?"]
    question = " ".join(" ".join(parts).split())  # fillers may be empty
    return Problem(question, answer, c, (a, b, d), (op1, op2))


def meaning(token: str) -> str | None:
    """What an answer token contributes to the result: itself for a number, an operator, the
    answer marker or the end, the operator an operation's verb names, None for wording. A mismatch is *critical* (its
    swap changes the answer) iff the two tokens' meanings differ."""
    if token in OPERATORS or token in STRUCTURE or token.isdigit():
        return token
    if token in NUMBER_WORDS:
        return str(NUMBER_WORDS.index(token))
    if token in _past(ADD_VERBS):
        return "+"
    if token in _past(SUB_VERBS):
        return "-"
    return None


def vocabulary() -> list[str]:
    """Every word a question or an answer can use, in a fixed order."""
    words = [w for name, pronoun in NAMES for w in (name, pronoun)]
    words += [*ITEMS, *(w for f in FILLERS for w in f.split()), "more", ".", ",", "?", "=", "####", *OPERATORS,
              "how", "many", "does", "have", "now", *SO]
    for table in (ADD_VERBS, SUB_VERBS, HAS, THEN):
        words += [w for pair in table for w in pair]
    return list(dict.fromkeys([*words, *NUMBERS, *NUMBER_WORDS]))
