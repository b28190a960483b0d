"""Synthetic arithmetic word problems in GSM8K's format, deterministic from a seed.

Each problem is a dict ``{"question": str, "answer": str}`` where ``answer`` is a worked
solution whose every calculation carries a GSM8K calculator annotation
``<<a+b=c>>c`` and whose last line is ``#### N``, exactly like the rows of GSM8K's
``train.jsonl``. Problems take one or two steps of ``+``, ``-`` or ``*`` on small
non-negative integers; every intermediate and final result is a non-negative integer.

The number ranges are the difficulty knob (:class:`Difficulty`). The defaults keep
one-step arithmetic within reach of a 1M-parameter model after a short SFT (operands up
to 20, products of 2-5 by 2-10), so that what RL has to fix is a habit the SFT corpus
teaches (:func:`sft_corpus`) plus the larger numbers of second steps; wider ranges make
the carries themselves the hard part.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

Problem = dict[str, str]

NAMES_HE = ("Tom", "Sam", "Ben", "Leo", "Max", "Omar", "Ravi", "Carlos", "Ivan", "Kenji",
            "Noah", "Liam", "Hugo", "Amir", "Jack", "Paul")
NAMES_SHE = ("Mia", "Ana", "Lily", "Emma", "Zoe", "Sara", "Priya", "Mei", "Nora", "Ella",
             "Aisha", "Lucia", "Grace", "Ruth", "Julia", "Hana")
# (plural noun, container noun) pairs: the container holds the noun in multi-step problems.
OBJECTS = (("apples", "bag"), ("pencils", "box"), ("stickers", "sheet"), ("marbles", "jar"),
           ("cookies", "tray"), ("books", "shelf"), ("eggs", "carton"), ("cards", "pack"),
           ("flowers", "vase"), ("shells", "bucket"), ("candies", "bag"), ("stamps", "album"),
           ("oranges", "crate"), ("buttons", "box"), ("beads", "string"), ("coins", "purse"))
ITEMS = ("a book", "a toy", "a hat", "lunch", "a ticket", "a plant", "a game", "a shirt")
CONTAINER_PLURAL = {"shelf": "shelves", "box": "boxes"}


@dataclass(frozen=True)
class Difficulty:
    """Number ranges, inclusive: ``add`` for operands of + and -, ``small`` for the
    single-digit factor of a product, ``factor`` for its other factor."""

    add: tuple[int, int] = (1, 20)
    small: tuple[int, int] = (2, 5)
    factor: tuple[int, int] = (2, 10)

    def __post_init__(self) -> None:
        # The templates need these minimums: a subtraction draws from [1, a*b - 1] and
        # from [add_lo, a + b - 1], both empty below them.
        for name, lowest in (("add", 1), ("small", 2), ("factor", 1)):
            lo, hi = getattr(self, name)
            if not lowest <= lo <= hi:
                raise ValueError(f"Difficulty.{name} must be (lo, hi) with {lowest} <= lo <= hi, got {(lo, hi)}")


DEFAULT_DIFFICULTY = Difficulty()


class _Ctx:
    """The random choices one template draws on: a person, a friend, an object."""

    def __init__(self, rng: random.Random, diff: Difficulty) -> None:
        self.rng = rng
        self.diff = diff
        if rng.random() < 0.5:
            self.name, self.he, self.him, self.his = rng.choice(NAMES_HE), "He", "him", "his"
        else:
            self.name, self.he, self.him, self.his = rng.choice(NAMES_SHE), "She", "her", "her"
        self.friend = rng.choice([n for n in NAMES_HE + NAMES_SHE if n != self.name])
        self.obj, self.box = rng.choice(OBJECTS)
        self.boxes = CONTAINER_PLURAL.get(self.box, self.box + "s")
        self.item = rng.choice(ITEMS)

    def add(self) -> int:
        return self.rng.randint(*self.diff.add)

    def small(self) -> int:
        return self.rng.randint(*self.diff.small)

    def factor(self) -> int:
        return self.rng.randint(*self.diff.factor)


def calc(a: int, op: str, b: int) -> tuple[int, str]:
    """``(result, "<<a op b=result>>result")``: one GSM8K calculator annotation.

    GSM8K often writes the expression twice (``48+24 = <<48+24=72>>72``); the shipped
    solutions keep only the annotation, a form GSM8K also uses, so that a two-step
    solution fits in 48 tokens and RL rollouts stay short."""
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return result, f"<<{a}{op}{b}={result}>>{result}"


def _finish(question: str, lines: list[str], result: int) -> Problem:
    return {"question": question, "answer": "\n".join(lines + [f"#### {result}"])}


# ---- one-step templates -------------------------------------------------------------

def _buy_more(c: _Ctx) -> Problem:
    a, b = c.add(), c.add()
    r, e = calc(a, "+", b)
    q = f"{c.name} has {a} {c.obj}. {c.he} buys {b} more {c.obj}. How many {c.obj} does {c.name} have now?"
    return _finish(q, [f"{c.name} has {e} {c.obj} now."], r)


def _gift(c: _Ctx) -> Problem:
    a, b = c.add(), c.add()
    r, e = calc(a, "+", b)
    q = f"{c.friend} gave {c.name} {a} {c.obj} on Monday and {b} {c.obj} on Tuesday. How many {c.obj} did {c.friend} give {c.name}?"
    return _finish(q, [f"{c.friend} gave {c.name} {e} {c.obj}."], r)


def _give_away(c: _Ctx) -> Problem:
    a, b = sorted((c.add(), c.add()), reverse=True)
    r, e = calc(a, "-", b)
    q = f"{c.name} had {a} {c.obj}. {c.he} gave {b} {c.obj} to {c.friend}. How many {c.obj} does {c.name} have left?"
    return _finish(q, [f"{c.name} has {e} {c.obj} left."], r)


def _how_many_more(c: _Ctx) -> Problem:
    a, b = sorted((c.add(), c.add()), reverse=True)
    r, e = calc(a, "-", b)
    q = f"{c.name} has {a} {c.obj} and {c.friend} has {b} {c.obj}. How many more {c.obj} does {c.name} have than {c.friend}?"
    return _finish(q, [f"{c.name} has {e} more {c.obj} than {c.friend}."], r)


def _boxes(c: _Ctx) -> Problem:
    a, b = c.small(), c.factor()
    r, e = calc(a, "*", b)
    q = f"{c.name} buys {a} {c.boxes} of {c.obj}. Each {c.box} has {b} {c.obj}. How many {c.obj} did {c.name} buy?"
    return _finish(q, [f"{c.name} bought {e} {c.obj}."], r)


def _wage(c: _Ctx) -> Problem:
    a, b = c.factor(), c.small()
    r, e = calc(a, "*", b)
    q = f"{c.name} earns ${a} an hour. {c.he} works {b} hours. How much money does {c.name} earn?"
    return _finish(q, [f"{c.name} earns {e} dollars."], r)


# ---- two-step templates -------------------------------------------------------------

def _has_then_buys_boxes(c: _Ctx) -> Problem:
    a, n, k = c.add(), c.small(), c.factor()
    m, e1 = calc(n, "*", k)
    r, e2 = calc(a, "+", m)
    q = (f"{c.name} has {a} {c.obj}. {c.he} buys {n} {c.boxes} with {k} {c.obj} in each {c.box}. "
         f"How many {c.obj} does {c.name} have now?")
    return _finish(q, [f"{c.name} buys {e1} {c.obj}.", f"{c.name} has {e2} {c.obj} now."], r)


def _earn_then_spend(c: _Ctx) -> Problem:
    k, n = c.factor(), c.small()
    m, e1 = calc(k, "*", n)
    s = c.rng.randint(1, m - 1)
    r, e2 = calc(m, "-", s)
    q = (f"{c.name} earns ${k} an hour and works {n} hours. Then {c.he.lower()} spends ${s} on {c.item}. "
         f"How much money does {c.name} have left?")
    return _finish(q, [f"{c.name} earns {e1} dollars.", f"{c.name} has {e2} dollars left."], r)


def _get_then_give(c: _Ctx) -> Problem:
    a, b = c.add(), c.add()
    m, e1 = calc(a, "+", b)
    s = c.rng.randint(c.diff.add[0], min(m - 1, c.diff.add[1]))
    r, e2 = calc(m, "-", s)
    q = (f"{c.name} has {a} {c.obj}. {c.friend} gives {c.him} {b} more. Then {c.name} gives {s} {c.obj} "
         f"to {c.his} sister. How many {c.obj} does {c.name} have left?")
    return _finish(q, [f"{c.name} has {e1} {c.obj}.", f"{c.name} has {e2} {c.obj} left."], r)


def _two_colors_times(c: _Ctx) -> Problem:
    a, b, n = c.rng.randint(2, 15), c.rng.randint(2, 15), c.small()
    m, e1 = calc(a, "+", b)
    r, e2 = calc(m, "*", n)
    q = (f"Each {c.box} has {a} red {c.obj} and {b} blue {c.obj}. {c.name} has {n} {c.boxes}. "
         f"How many {c.obj} does {c.name} have?")
    return _finish(q, [f"Each {c.box} has {e1} {c.obj}.", f"{c.name} has {e2} {c.obj}."], r)


def _sell_then_buy(c: _Ctx) -> Problem:
    a, b = sorted((c.add(), c.add()), reverse=True)
    m, e1 = calc(a, "-", b)
    k = c.add()
    r, e2 = calc(m, "+", k)
    q = (f"{c.name} had {a} {c.obj}. {c.he} sold {b} of them. The next day {c.he.lower()} bought {k} more. "
         f"How many {c.obj} does {c.name} have now?")
    return _finish(q, [f"After selling, {c.he.lower()} had {e1} {c.obj}.", f"{c.name} has {e2} {c.obj} now."], r)


def _times_as_many(c: _Ctx) -> Problem:
    a, n = c.factor(), c.small()
    m, e1 = calc(a, "*", n)
    r, e2 = calc(m, "+", a)
    q = (f"{c.friend} has {a} {c.obj}. {c.name} has {n} times as many {c.obj} as {c.friend}. "
         f"How many {c.obj} do they have together?")
    return _finish(q, [f"{c.name} has {e1} {c.obj}.", f"Together they have {e2} {c.obj}."], r)


ONE_STEP: tuple[Callable[[_Ctx], Problem], ...] = (_buy_more, _gift, _give_away, _how_many_more, _boxes, _wage)
TWO_STEP: tuple[Callable[[_Ctx], Problem], ...] = (
    _has_then_buys_boxes, _earn_then_spend, _get_then_give, _two_colors_times, _sell_then_buy, _times_as_many,
)


def generate(n: int, seed: int = 0, *, two_step_frac: float = 0.5,
             difficulty: Difficulty = DEFAULT_DIFFICULTY) -> list[Problem]:
    """``n`` distinct problems (no two share a question), deterministic in ``seed``.

    Each is two-step with probability ``two_step_frac``, else one-step; the template is
    uniform within its group.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= two_step_frac <= 1.0:
        raise ValueError(f"two_step_frac must be in [0, 1], got {two_step_frac}")
    return list(_unique(_stream(seed, two_step_frac, difficulty), n))


def _stream(seed: int, two_step_frac: float, difficulty: Difficulty) -> Iterator[Problem]:
    rng = random.Random(seed)
    while True:
        group = TWO_STEP if rng.random() < two_step_frac else ONE_STEP
        template = rng.choice(group)
        yield template(_Ctx(rng, difficulty))


def _unique(problems: Iterable[Problem], n: int, *, patience: int = 1000) -> Iterator[Problem]:
    """The first ``n`` problems with distinct questions; gives up (ValueError) after
    ``patience`` duplicates in a row, i.e. when the stream has nothing new to give."""
    seen: set[str] = set()
    misses = 0
    for p in problems:
        if len(seen) == n:
            return
        if p["question"] in seen:
            misses += 1
            if misses >= patience:
                raise ValueError(f"could not draw {n} distinct problems: {patience} duplicates in a row "
                                 f"after {len(seen)}; widen the number ranges or ask for fewer")
            continue
        misses = 0
        seen.add(p["question"])
        yield p


def make_splits(n_train: int, n_test: int, seed: int = 0, **kwargs) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` with no question in both: one stream of distinct problems, the
    first ``n_test`` go to test and the next ``n_train`` to train."""
    problems = generate(n_train + n_test, seed, **kwargs)
    return problems[n_test:], problems[:n_test]


def stop_after_first_step(problem: Problem) -> Problem:
    """The flawed solution of a hasty solver: a two-step solution cut after its first
    step, reporting the intermediate result as the final answer. One-step problems are
    returned unchanged."""
    lines = problem["answer"].split("\n")
    if len(lines) < 3:
        return problem
    first = _ANNOTATION.search(lines[0])
    if first is None:
        raise ValueError(f"first step has no <<a op b=c>> annotation: {lines[0]!r}")
    return {"question": problem["question"], "answer": f"{lines[0]}\n#### {first[5]}"}


def sft_corpus(train: Iterable[Problem], premature_frac: float, seed: int = 0) -> list[Problem]:
    """The supervised-fine-tuning corpus: ``train`` with a share ``premature_frac`` of its
    two-step solutions replaced by :func:`stop_after_first_step` (drawn with ``seed``).

    This is the habit RL has to unlearn: with ``premature_frac > 0.5`` the SFT model's
    greedy answer to a two-step problem is usually the intermediate result, while its
    samples finish the computation often enough for a group-relative reward to tell the
    two apart. The shipped ``train.jsonl`` keeps every solution correct: it holds the
    gold answers that RL is rewarded against.
    """
    if not 0.0 <= premature_frac <= 1.0:
        raise ValueError(f"premature_frac must be in [0, 1], got {premature_frac}")
    rng = random.Random(seed * 7919 + 1)
    return [stop_after_first_step(p) if p["answer"].count("\n") >= 2 and rng.random() < premature_frac else p
            for p in train]


_ANNOTATION = re.compile(r"<<(\d+)([-+*])(\d+)=(-?\d+)>>(-?\d+)")
_FINAL = re.compile(r"^#### (-?\d+)$")


def check_answer(answer: str) -> int:
    """Re-check a solution independently of the generator: every ``<<a op b=c>>c``
    annotation must hold, the text after each annotation must repeat its result, and the
    last line must be ``#### N`` with N the last result. Returns N; raises ValueError
    naming the first wrong step."""
    lines = answer.split("\n")
    final = _FINAL.match(lines[-1])
    if final is None:
        raise ValueError(f"last line must be '#### N', got {lines[-1]!r}")
    results = []
    for m in _ANNOTATION.finditer(answer):
        a, op, b, c, shown = int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])
        true = {"+": a + b, "-": a - b, "*": a * b}[op]
        if c != true or shown != c:
            raise ValueError(f"wrong step {m[0]!r}: {a}{op}{b} is {true}")
        results.append(c)
    if not results:
        raise ValueError(f"no <<a op b=c>> annotation in {answer!r}")
    if int(final[1]) != results[-1]:
        raise ValueError(f"final answer {final[1]} is not the last result {results[-1]}")
    return int(final[1])


def gold_number(answer: str) -> str:
    """The text after ``#### `` on the last line of a GSM8K answer."""
    return answer.rsplit("####", 1)[-1].strip()


def write_jsonl(path: Path, problems: Iterable[Problem]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Problem]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
