"""Multi-step (3-5 calculations) arithmetic word problems in GSM8K's format, for
process-reward experiments.

A problem follows one quantity through a chain of events: a start amount, then 2-4
events, each changing it by one calculation (``+`` buys, ``-`` gives away, ``*`` "times
as many"), or by two (buying ``k`` containers of ``m``: ``k*m`` then ``x+k*m``). Every
solution line carries exactly one GSM8K annotation ``<<a op b=c>>c``, its result is the
next line's left operand or addend, and the last line is ``#### N`` with N the last
result. All values are non-negative integers at most :data:`MAX_VALUE`.

:func:`inject_error` changes one line's result and leaves the rest as it was (labels: does
each line's own annotation hold, what ``arith_steps`` checks). :func:`inject_mistake`
makes the mistakes a solver makes, for the tiny process reward model: a slip in one
line's result or a misread operand, every later line then computed from the wrong value,
labelled by prefix correctness (is the solution still on the gold path after this line).

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


MISTAKE_KINDS = ("result", "operand")


def _parse_body(body: list[str]) -> list[tuple[re.Match, bool]]:
    parsed = []
    for line in body:
        m = _LINE.search(line)
        if m is None:
            raise ValueError(f"line without a <<a op b=c>> annotation: {line!r}")
        # "The boxes hold <<k*m=p>>p ..." is a container product: it does not read the
        # running amount, and the next line adds it (``x+p``).
        parsed.append((m, line.startswith("The ")))
    return parsed


LABEL_MODES = ("prefix", "local")


def inject_mistake(problem: Problem, rng: random.Random, kind: str = "result",
                   labels: str = "prefix") -> tuple[Problem, list[bool]]:
    """``problem`` solved with one mistake, and per step (every solution line, the
    ``####`` line included) whether the solution is still right after it.

    ``kind="result"``: line ``i`` (uniform) reports a misread (:func:`_misread`) of its
    correct result ``c``; ``kind="operand"``: line ``i`` computes correctly from a misread
    right operand ``b``; ``d``, drawn from ±1, ±2, ±3, picks the misread. Every later line is computed
    correctly from the wrong value (the running amount, and a container product the next
    line adds), and ``####`` gives the last result, as a solver who made that one mistake
    would write. Values stay non-negative (``d`` is redrawn when not).

    ``labels="prefix"`` (is the solution still on the gold path): line ``j`` is right iff
    ``j < i``, the ``####`` line iff its answer is the gold. ``labels="local"`` (is this
    step right given the steps before it): only line ``i`` is wrong; the ``####`` line,
    which repeats the last result, is right.
    """
    if kind not in MISTAKE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MISTAKE_KINDS)}; got {kind!r}")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    lines = problem["answer"].split("\n")
    body, gold = lines[:-1], lines[-1].removeprefix("#### ").strip()
    parsed = _parse_body(body)
    i = rng.randrange(len(body))
    for _ in range(20):
        d = rng.choice((-3, -2, -1, 1, 2, 3))
        out = _resolve(body, parsed, i, kind, d)
        if out is not None:
            break
    else:
        raise ValueError(f"no mistake of kind {kind!r} keeps line {i} of this problem non-negative")
    new_body, final = out
    if labels == "prefix":
        verdicts = [j < i for j in range(len(body))] + [str(final) == gold]
    else:
        verdicts = [j != i for j in range(len(body))] + [True]
    answer = "\n".join(new_body + [f"#### {final}"])
    return {"question": problem["question"], "answer": answer}, verdicts


def _misread(value: int, d: int) -> int:
    """``value`` written wrong the ways the tiny policies get numbers wrong, picked by
    ``d`` in ±1, ±2, ±3: off by ``d`` for |d| <= 2 (and for one-digit values); for |d| = 3
    and two or more digits, the last digit dropped (``d = 3``: ``34`` -> ``3``, the SFT
    model's commonest misread) or repeated (``d = -3``: ``34`` -> ``344``)."""
    if abs(d) < 3 or value < 10:
        return value + d
    return value // 10 if d > 0 else value * 10 + value % 10


def _resolve(body: list[str], parsed: list[tuple[re.Match, bool]], i: int, kind: str,
             d: int) -> tuple[list[str], int] | None:
    """The solution recomputed with the mistake at line ``i``; None if a value goes negative."""
    new_body = []
    amount = None  # the running amount as the solver now has it
    product = None  # the last container product, added by the next line
    for j, ((m, is_product), line) in enumerate(zip(parsed, body)):
        a, op, b = int(m[1]), m[2], int(m[3])
        if not is_product:
            if amount is not None:
                a = amount
            if product is not None:
                b, product = product, None
        if j == i and kind == "operand":
            b = _misread(b, d)
        c = {"+": a + b, "-": a - b, "*": a * b}[op]
        if j == i and kind == "result":
            c = _misread(c, d)
        if min(a, b, c) < 0:
            return None
        if is_product:
            product = c
        else:
            amount = c
        new_body.append(line[:m.start()] + f"<<{a}{op}{b}={c}>>{c}" + line[m.end():])
    return new_body, amount
