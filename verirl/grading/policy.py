"""The grading policy: the switches where reasonable graders differ, and two presets.

A :class:`Policy` is a small frozen value (hashable, picklable: it travels to the
sandbox workers and is part of the verdict cache's key). The rules it switches, and the
rules that have no switch, are written out in ``verirl/grading/README.md``; each field
below names its rule there.

- ``numeric`` (rule N): how a decimal is compared with an exact value.
  ``"exact"``: a decimal is the exact value it writes (``0.5`` is 1/2, ``0.333`` is not
  1/3). ``"digits"``: also, a decimal stands for an exact non-integer value when it
  agrees with it at every digit it gives (truncated or rounded in its last digit) and
  gives at least ``min_digits`` significant digits; never for an integer. ``"rel_tol"``:
  a decimal matches within relative tolerance ``rel_tol`` (what Qwen2.5-Math's grader
  and Math-Verify's rounding accept; lets ``9999.857`` pass for 10000).
- ``units`` (rule U): ``"match"``: unit words are not part of the value, but where both
  answers name units they must name the same ones (``5 cm`` is not ``5 m``);
  ``"strip"``: units are ignored.
- ``percent`` (rule P): ``"number"``: ``28\\%`` is the number 28 (the sign names what is
  counted, as datasets write their gold answers); ``"fraction"``: it is 0.28;
  ``"either"``: it matches 28 or 0.28.
- ``unevaluated`` (rule E): where the gold answer is a number written as one (``18``,
  ``\\frac{7}{2}``, ``2.5``), ``"refuse"``: the prediction must be written as a number
  too, not as the computation (``3 \\cdot 6``, ``2^{10}``, ``\\binom{16}{5}``, a giant
  expression that equals the gold after seconds of work); ``"accept"``: any expression of
  the same value.
- ``fallback`` (rule A5): where a completion marks no final answer (no ``\\boxed{}``,
  ``####``, "the answer is"): ``"last_math"``: the whole completion when it is a bare
  answer, else its last math span (``$...$``, ``\\(...\\)``, ``\\[...\\]``) or its last
  number, whichever comes last; ``"last_number"``: the last number only;
  ``"none"``: no answer.

``PRESETS["train"]`` is the strict default for RL training; ``PRESETS["eval"]`` is lenient
for comparison with published evaluation numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from verirl.verifier import ConfigError

MAX_CHARS = 2000  # the longest answer string judged; a longer extracted answer is wrong

NUMERIC_MODES = ("exact", "digits", "rel_tol")
UNIT_MODES = ("match", "strip")
PERCENT_MODES = ("number", "fraction", "either")
UNEVALUATED_MODES = ("refuse", "accept")
FALLBACK_MODES = ("last_math", "last_number", "none")


@dataclass(frozen=True)
class Policy:
    """One choice for every switch of the grading policy (see the module doc)."""

    numeric: str = "digits"  # exact | digits | rel_tol: how a decimal meets an exact value (N)
    min_digits: int = 4  # significant digits a decimal must give to stand for an exact value
    rel_tol: float = 1e-4  # relative tolerance, used only with numeric="rel_tol"
    units: str = "match"  # match | strip: whether units named on both sides must agree (U)
    percent: str = "number"  # number | fraction | either: what "28\%" is (P)
    unevaluated: str = "refuse"  # refuse | accept: a computation given for a numeric gold (E)
    fallback: str = "last_math"  # last_math | last_number | none: answer of an unmarked completion (A5)

    def __post_init__(self) -> None:
        _choice("numeric", self.numeric, NUMERIC_MODES)
        _choice("units", self.units, UNIT_MODES)
        _choice("percent", self.percent, PERCENT_MODES)
        _choice("unevaluated", self.unevaluated, UNEVALUATED_MODES)
        _choice("fallback", self.fallback, FALLBACK_MODES)
        if isinstance(self.min_digits, bool) or not isinstance(self.min_digits, int) or self.min_digits < 1:
            raise ConfigError(f"grading policy 'min_digits' must be an int >= 1, got {self.min_digits!r}")
        if isinstance(self.rel_tol, bool) or not isinstance(self.rel_tol, (int, float)) \
                or not 0 <= self.rel_tol < 1:
            raise ConfigError(f"grading policy 'rel_tol' must be a number in [0, 1), got {self.rel_tol!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"grading policy '{name}' must be one of {', '.join(allowed)}; got {value!r}")


PRESETS: dict[str, Policy] = {
    "train": Policy(),
    "eval": Policy(numeric="rel_tol", units="strip", percent="either", unevaluated="accept"),
}

FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Policy))


def make_policy(preset: str = "train", **overrides: Any) -> Policy:
    """The preset's policy with the given fields replaced (``None`` keeps the preset's).

    Raises :class:`ConfigError` for an unknown preset, field or value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"grading policy preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise ConfigError(f"grading policy has no field {sorted(unknown)[0]!r}; fields: {', '.join(FIELDS)}")
    if overrides.get("rel_tol") is not None and overrides.get("numeric", PRESETS[preset].numeric) != "rel_tol":
        raise ConfigError("grading policy 'rel_tol' applies only with numeric: rel_tol "
                          f"(preset {preset!r} compares decimals by {PRESETS[preset].numeric!r})")
    if isinstance(overrides.get("rel_tol"), int) and not isinstance(overrides["rel_tol"], bool):
        overrides["rel_tol"] = float(overrides["rel_tol"])
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
