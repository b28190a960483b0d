"""Multi-step (3-5 calculations) arithmetic word problems in GSM8K's format, for
process-reward experiments.

A problem follows one quantity through a chain of events: a start amount, then 2-4
events, each changing it by one calculation (``+`` buys, ``-`` gives away, ``*`` "times
as many"), or by two (buying ``k`` containers of ``m``: ``k*m`` then ``x+k*m``). Every
solution line carries exactly one GSM8K annotation ``<<a op b=c>>c``, its result is the
next line's left operand or addend, and the last line is ``#### N`` with N the last
result. All values are non-negative integers at most :data:`MAX_VALUE`.

:func:`inject_error` makes the negative steps a process reward model learns from: one
line's result replaced by a nearby wrong value (the later lines computed from the wrong
value, as a solver who made that slip would), labelled per line.

Deterministic in ``seed`` (``random.Random`` only; no global state).
"""

from __future__ import annotations

import random
import re
from typing import Iterator

from verirl.tiny.tasks import CONTAINER_PLURAL, NAMES_HE, NAMES_SHE, OBJECTS, Problem, _unique

MAX_VALUE = 199  # no intermediate or final result exceeds this
MIN_CALCS, MAX_CALCS = 3, 5  # calculations (annotated lines) per solution

_LINE = re.compile(r"<<(\d+)([-+*])(\d+)=(-?\d+)>>(-?\d+)")


def _calc(a: int, op: str, b: int) -> tuple[int, str]:
    r = {"+": a + b, "-": a - b, "*": a * b}[op]
    return r, f"<<{a}{op}{b}={r}>>{r}"


def _one(rng: random.Random) -> Problem:
    """One problem with 3-5 annotated lines; values stay in [0, MAX_VALUE]."""
    if rng.random() < 0.5:
        name, he = rng.choice(NAMES_HE), "He"
    else:
        name, he = rng.choice(NAMES_SHE), "She"
    friend = rng.choice([n for n in NAMES_HE + NAMES_SHE if n != name])
    obj, box = rng.choice(OBJECTS)
    target = rng.randint(MIN_CALCS, MAX_CALCS)
    x = rng.randint(2, 30)
    sentences = [f"{name} has {x} {obj}."]
    lines: list[str] = []
    while len(lines) < target:
        room = target - len(lines)
        kind = rng.choice(["buy", "give", "times", "boxes"] if room >= 2 else ["buy", "give", "times"])
        if kind == "boxes" and x + 4 <= MAX_VALUE:
            k, m = rng.randint(2, 6), rng.randint(2, 9)
            if x + k * m > MAX_VALUE:
                continue
            p, e1 = _calc(k, "*", m)
            x, e2 = _calc(x, "+", p)
            boxes = CONTAINER_PLURAL.get(box, box + "s")
            sentences.append(f"{he} buys {k} {boxes} of {m} {obj} each.")
            lines += [f"The {boxes} hold {e1} {obj}.", f"{name} has {e2} {obj}."]
        elif kind == "buy" and x + 1 <= MAX_VALUE:
            b = rng.randint(1, min(40, MAX_VALUE - x))
            x, e = _calc(x, "+", b)
            sentences.append(f"{he} gets {b} more {obj} from {friend}.")
            lines.append(f"{name} has {e} {obj}.")
        elif kind == "give" and x >= 2:
            b = rng.randint(1, x - 1)
            x, e = _calc(x, "-", b)
            sentences.append(f"{he} gives {b} {obj} away.")
            lines.append(f"{name} has {e} {obj} left.")
        elif kind == "times" and 2 * x <= MAX_VALUE:
            k = rng.randint(2, min(5, MAX_VALUE // x))
            x, e = _calc(x, "*", k)
            sentences.append(f"Then {he.lower()} ends up with {k} times as many {obj}.")
            lines.append(f"{name} has {e} {obj}.")
    question = " ".join(sentences) + f" How many {obj} does {name} have now?"
    return {"question": question, "answer": "\n".join(lines + [f"#### {x}"])}


def _stream(seed: int) -> Iterator[Problem]:
    rng = random.Random(seed * 1_000_003 + 8)
    while True:
        yield _one(rng)


def generate(n: int, seed: int = 0) -> list[Problem]:
    """``n`` distinct multi-step problems (no two share a question), deterministic in ``seed``."""
    return list(_unique(_stream(seed), n))


def make_splits(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` with no question in both (the first ``n_test`` drawn go to test)."""
    problems = generate(n_train + n_test, seed)
    return problems[n_test:], problems[:n_test]


def inject_error(problem: Problem, rng: random.Random) -> tuple[Problem, list[bool]]:
    """``problem`` with one calculation's result wrong, and per solution line (the
    ``####`` line excluded) whether its calculation is right.

    The wrong line ``i`` (uniform over the annotated lines) reports ``c + d`` for a
    nonzero ``d`` in [-3, 3] (kept non-negative) in both the annotation and the text
    after it; the other lines are unchanged, so the label of a line is exactly whether
    its own annotation holds (what ``arith_steps`` checks). When ``i`` is the last line
    the ``####`` line repeats the wrong result, otherwise it keeps the gold answer.
    """
    lines = problem["answer"].split("\n")
    body, final = lines[:-1], lines[-1]
    i = rng.randrange(len(body))
    m = _LINE.search(body[i])
    if m is None:
        raise ValueError(f"line without a <<a op b=c>> annotation: {body[i]!r}")
    c = int(m[4])
    shown = c + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if c + d >= 0])
    body = list(body)
    body[i] = body[i][:m.start()] + f"<<{m[1]}{m[2]}{m[3]}={shown}>>{shown}" + body[i][m.end():]
    if i == len(body) - 1:
        final = f"#### {shown}"
    labels = [j != i for j in range(len(body))]
    return {"question": problem["question"], "answer": "\n".join(body + [final])}, labels
