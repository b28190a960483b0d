"""Labelled answer-checking sets built from the project's own data (GSM8K, MATH-500).

Each gold answer is rewritten by string rules whose effect is known from LaTeX/arithmetic
alone (not from verirl's parser): into equivalent forms (``18`` -> ``18.0``, ``\\$18``,
``18 dollars``, ``\\frac{36}{2}``, ``1.8\\times10^{1}``; ``\\frac{a}{b}`` -> ``\\dfrac``,
``a/b``, a terminating decimal; ``pmatrix`` -> ``bmatrix``; reordered sets and lists of
roots; ``x = 5`` -> ``5`` ...) labelled 1, and into different answers (off by one, digit
swaps, sign flips, flipped interval ends, swapped tuple entries, ``3.14`` for ``\\pi``,
inverted fractions ...) labelled 0. Each candidate is wrapped in a realistic completion
(chain of thought ending in ``\\boxed{}``, ``####``, or "The answer is ...").

``build_sets(data_dir, limit, seed)`` returns a list of :class:`Row`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path


@dataclass(frozen=True)
class Row:
    dataset: str  # gsm8k | math
    gold: str  # the gold final answer
    candidate: str  # the rewritten answer
    completion: str  # the candidate wrapped in a model-like completion
    label: bool  # is the candidate equivalent to the gold answer?
    rule: str  # which rewrite made it


_TEMPLATES_BOXED = [
    "Let's think step by step.\n{work}\nTherefore, the final answer is $\\boxed{{{ans}}}$.",
    "{work}\n\nSo the answer is $\\boxed{{{ans}}}$. I hope it is correct.",
    "We solve it carefully.\n{work}\n\\[\\boxed{{{ans}}}\\]",
]
_TEMPLATES_PLAIN = [
    "{work}\n#### {ans}",
    "{work}\nThe answer is {ans}.",
    "{work}\nFinal Answer: {ans}",
]


def _work(question: str, rng: random.Random) -> str:
    """A chain-of-thought-like body that mentions numbers of the question (so that the
    last-number fallback would be wrong if used instead of the final answer)."""
    nums = re.findall(r"\d+", question)[:4]
    steps = [f"From the problem we have {n}." for n in nums] or ["We set up the equation."]
    rng.shuffle(steps)
    return " ".join(steps)


def _wrap(candidate: str, question: str, plain_ok: bool, rng: random.Random) -> str:
    templates = _TEMPLATES_BOXED + (_TEMPLATES_PLAIN if plain_ok else [])
    return rng.choice(templates).format(work=_work(question, rng), ans=candidate)


# ---- GSM8K: integer answers --------------------------------------------------------------
def _sci(n: int) -> str | None:
    if n == 0:
        return None
    digits = str(abs(n))
    k = len(digits) - 1
    mantissa = digits[0] + ("." + digits[1:].rstrip("0") if digits[1:].rstrip("0") else "")
    return f"{'-' if n < 0 else ''}{mantissa}\\times10^{{{k}}}"


def gsm8k_rewrites(gold: str) -> list[tuple[str, bool, str]]:
    n = int(gold)
    out = [
        (f"{n}.0", True, "decimal"), (f"\\${n}", True, "currency"),
        (f"{n} dollars", True, "unit"), (f"\\frac{{{2 * n}}}{{2}}", True, "fraction"),
        (f"{n:,}", True, "thousands"), (f"{n}.00", True, "decimal2"),
    ]
    sci = _sci(n)
    if sci and abs(n) >= 10:
        out.append((sci, True, "scientific"))
    out += [(str(n + 1), False, "off_by_one"), (str(n - 1), False, "off_by_minus_one")]
    if n != 0:
        out.append((str(-n), False, "sign_flip"))
    s = str(abs(n))
    if len(s) >= 2 and s[-1] != s[-2]:
        swapped = s[:-2] + s[-1] + s[-2]
        if swapped.lstrip("0"):
            out.append((("-" if n < 0 else "") + swapped.lstrip("0"), False, "digit_swap"))
    if n != 0:
        out.append((str(n * 10), False, "times_ten"))
    return out


# ---- MATH: LaTeX answers -----------------------------------------------------------------
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_INT = re.compile(r"^-?\d+$")
_INTERVAL = re.compile(r"^(\\left)?([\[(])(.*),(.*?)(\\right)?([\])])$")
_TUPLE = re.compile(r"^(\\left)?\((.*)\)$")
_SQRT = re.compile(r"^(\d*)\s*\\sqrt\{(\d+)\}$")
_CHOICE = re.compile(r"^\\text\{\(([A-E])\)\}$")
_TEXT = re.compile(r"^\\text\{([A-Za-z ]+)\}$")
_PI_MULT = re.compile(r"^(\d*)\s*\\pi$")


def _terminating(fr: Fraction) -> str | None:
    d = fr.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return None
    s = f"{float(fr):.10f}".rstrip("0").rstrip(".")
    return s if Fraction(s) == fr else None


def _split_top(s: str) -> list[str] | None:
    """Split at top-level commas (outside brackets/braces)."""
    parts, depth, cur = [], 0, ""
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    parts.append(cur)
    return [p.strip() for p in parts] if depth == 0 else None


def math_rewrites(gold: str) -> list[tuple[str, bool, str]]:
    g = gold.strip()
    out: list[tuple[str, bool, str]] = []
    m = _FRAC.match(g)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        fr = Fraction(a, b) * (-1 if sign else 1)
        out += [(f"{sign}\\dfrac{{{a}}}{{{b}}}", True, "dfrac"), (f"{sign}{a}/{b}", True, "slash"),
                (f"{sign}\\frac{{{2 * a}}}{{{2 * b}}}", True, "unreduced")]
        dec = _terminating(fr)
        if dec:
            out.append((dec, True, "decimal"))
        if a != b:
            out.append((f"{sign}\\frac{{{b}}}{{{a}}}", False, "inverted"))
        out.append((f"{sign}\\frac{{{a + 1}}}{{{b}}}", False, "numerator_plus_one"))
        out.append(((f"\\frac{{{a}}}{{{b}}}" if sign else f"-\\frac{{{a}}}{{{b}}}"), False, "sign_flip"))
        return out
    if _INT.match(g) or re.fullmatch(r"\d{1,3}(,\\?!?\s*\d{3})+", g):  # 58,500 / 10,\!080
        return gsm8k_rewrites(re.sub(r"[^\d-]", "", g))
    m = _SQRT.match(g)
    if m:
        coef, rad = m.group(1), int(m.group(2))
        c = int(coef) if coef else 1
        out += [(f"{coef}\\sqrt {rad}" if rad < 10 else f"{coef}\\sqrt{{{rad}}}", True, "spacing"),
                (f"\\sqrt{{{c * c * rad}}}", True, "into_root"),
                (f"{coef}{rad}^{{1/2}}" if not coef else f"{coef}\\cdot{rad}^{{1/2}}", True, "power"),
                (f"{coef}\\sqrt{{{rad + 1}}}", False, "radicand_plus_one"),
                (f"-{coef}\\sqrt{{{rad}}}", False, "sign_flip")]
        return out
    m = _PI_MULT.match(g)
    if m:
        c = m.group(1) or "1"
        out += [(f"\\pi \\cdot {c}", True, "commuted"), (f"{c}\\pi", True, "spacing")]
        val = int(c) * 3.14
        out.append((f"{val:.2f}", False, "pi_as_3.14"))
        out.append((f"{int(c) + 1}\\pi", False, "coefficient_plus_one"))
        return out
    m = _CHOICE.match(g)
    if m:
        letter = m.group(1)
        other = "A" if letter != "A" else "B"
        return [(f"({letter})", True, "choice_parens"), (letter, True, "choice_bare"),
                (f"\\textbf{{({letter})}}", True, "choice_bold"),
                (f"({other})", False, "other_choice")]
    m = _TEXT.match(g)
    if m:
        word = m.group(1)
        return [(word, True, "plain_word"), (word.upper(), True, "upper"),
                (word + "s" if not word.endswith("s") else word[:-1], False, "other_word")]
    if g.startswith("\\begin{pmatrix}"):
        out.append((g.replace("pmatrix", "bmatrix"), True, "bmatrix"))
        cells = re.findall(r"-?\d+", g)
        if cells:
            first = cells[0]
            flipped = first[1:] if first.startswith("-") else "-" + first
            if first != "0":
                out.append((g.replace(first, flipped, 1), False, "entry_sign_flip"))
        return out
    if "\\cup" in g:
        pieces = [p.strip() for p in g.split("\\cup")]
        out.append((" \\cup ".join(reversed(pieces)), True, "union_reordered"))
        first = pieces[0]
        if first.endswith(")") and "infty" not in first.split(",")[-1]:
            flipped = [first[:-1] + "]", *pieces[1:]]
            out.append((" \\cup ".join(flipped), False, "union_end_flipped"))
        return out
    if "\\cup" not in g:
        m = _INTERVAL.match(g)
        parts = _split_top(g[1:-1]) if m else None
        # a mixed or closed pair is an interval; "(a, b)" is left to the tuple rules
        if m and parts and len(parts) == 2 and (g[0] != "(" or g[-1] != ")"):
            lo, hi = parts
            inner = f"{lo}, {hi}"
            out.append((f"\\left{g[0]} {inner} \\right{g[-1]}", True, "left_right"))
            flip_l = "[" if g[0] == "(" else "("
            if "infty" not in lo:
                out.append((f"{flip_l}{inner}{g[-1]}", False, "left_end_flipped"))
            flip_r = "]" if g[-1] == ")" else ")"
            if "infty" not in hi:
                out.append((f"{g[0]}{inner}{flip_r}", False, "right_end_flipped"))
            return out
    m = _TUPLE.match(g)
    if m and g.startswith("(") and g.endswith(")"):
        parts = _split_top(g[1:-1])
        if parts and len(parts) >= 2:
            out.append((f"\\left( {', '.join(parts)} \\right)", True, "left_right"))
            if parts[0] != parts[1]:
                swapped = [parts[1], parts[0], *parts[2:]]
                out.append((f"({', '.join(swapped)})", False, "swapped_entries"))
            return out
    parts = _split_top(g)
    if parts and len(parts) >= 2 and all(re.fullmatch(r"-?\d+", p) for p in parts):
        out.append((", ".join(reversed(parts)), True, "reordered_roots"))
        out.append((f"\\{{{', '.join(parts)}\\}}", True, "as_set"))
        out.append((", ".join(parts[:-1]), False, "missing_root"))
        return out
    if re.fullmatch(r"[a-z]\s*=\s*-?\d+", g):
        value = g.split("=")[1].strip()
        out.append((value, True, "drop_variable"))
        out.append((str(int(value) + 1), False, "off_by_one"))
        return out
    if re.fullmatch(r"-?\d+\.\d+", g):
        fr = Fraction(g)
        out.append((f"\\frac{{{fr.numerator}}}{{{fr.denominator}}}", True, "as_fraction"))
        bumped = g[:-1] + str((int(g[-1]) + 1) % 10)  # last digit changed: off by >= 1e-4
        out.append((bumped, False, "last_digit_changed"))
        return out
    if re.fullmatch(r"\d+\^\\circ", g):
        n = g.split("^")[0]
        out.append((n, True, "no_degree_sign"))
        out.append((f"{n}^{{\\circ}}", True, "braced_degree"))
        out.append((str(int(n) + 1) + "^\\circ", False, "off_by_one"))
        return out
    return out


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f]


def build_sets(data_dir: Path, limit: int | None = None, seed: int = 0) -> list[Row]:
    """Labelled rows from ``data_dir``/gsm8k/test.jsonl and math/math500_test.jsonl;
    ``limit`` caps the source problems taken from each dataset."""
    rng = random.Random(seed)
    rows: list[Row] = []
    gsm = _rows(data_dir / "gsm8k" / "test.jsonl")[:limit]
    for r in gsm:
        gold = r["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        for cand, label, rule in gsm8k_rewrites(gold):
            rows.append(Row("gsm8k", gold, cand, _wrap(cand, r["question"], True, rng), label, rule))
    math = _rows(data_dir / "math" / "math500_test.jsonl")[:limit]
    for r in math:
        gold = r["answer"]
        for cand, label, rule in math_rewrites(gold):
            rows.append(Row("math", gold, cand, _wrap(cand, r["problem"], False, rng), label, rule))
    return rows
