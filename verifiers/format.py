"""Built-in verifier ``format``: rewards the answer shape a run trains toward, and can
add DAPO's soft over-length penalty.

Score of one sample (an outcome verifier: one float)::

    score = shape + overlong_weight * R_length

``shape`` is ``reward`` if the completion has the shape named by ``require``, else
``penalty`` (and 0 with ``require="none"``). The shapes:

- ``boxed``: a ``\\boxed{...}`` with balanced braces and non-blank content;
- ``gsm8k``: the last non-blank line is ``#### N``, ``N`` a number (``72``, ``-3``,
  ``1,000``, ``2.5``, optionally ``$``-prefixed);
- ``think``: ``<think>`` reasoning ``</think>`` then a non-blank answer. The opening tag
  may end the prompt instead of starting the completion (chat templates of R1-style
  models put it there). Exactly one closing tag, at most one opening tag, nothing but
  whitespace before the opening tag, non-blank reasoning;
- ``think_answer``: ``think`` whose answer is exactly ``<answer>...</answer>``
  (non-blank content; only whitespace around it);
- ``none``: no shape is required (use the verifier for the length penalty alone).

``R_length`` (DAPO's overlong reward shaping, arXiv 2503.14476), with ``L_max`` = ``max_tokens`` (or the
sample's ``max_tokens`` when the param is 0), ``L_cache`` = ``overlong_buffer`` and
``n`` = the sample's ``num_tokens``::

    R_length = 0                                  if n <= L_max - L_cache
             = ((L_max - L_cache) - n) / L_cache  if L_max - L_cache < n <= L_max
             = -1                                 if n > L_max

so it ramps linearly from 0 to -1 across the buffer. With ``overlong_buffer=0`` the
penalty is off. A sample that lacks the token counts the penalty needs gets a
:class:`verirl.Failure` (the aggregator's fallback), not a guess.
"""

from __future__ import annotations

import re
from typing import Sequence

from verirl import ConfigError, Failure, Sample, hookimpl, verifier

REQUIRE_CHOICES: tuple[str, ...] = ("boxed", "gsm8k", "think", "think_answer", "none")

_GSM8K_LAST_LINE = re.compile(r"####[ \t]*\$?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[ \t]*")
_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")
_ANSWER_TAGS = re.compile(r"\s*<answer>(.*)</answer>\s*", re.DOTALL)


def has_boxed(text: str) -> bool:
    """Whether ``text`` holds a ``\\boxed{...}`` with balanced braces and non-blank content.

    One pass over the braces with a stack, so a text of many unclosed ``\\boxed{`` stays
    linear.
    """
    opens = {m.end() - 1 for m in _BOXED.finditer(text)}  # the "{" of each \boxed{
    if not opens:
        return False
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            start = stack.pop()
            if start in opens and text[start + 1:m.start()].strip():
                return True
    return False


def has_gsm8k_answer(text: str) -> bool:
    """Whether the last non-blank line of ``text`` is ``#### N`` with ``N`` a number."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and _GSM8K_LAST_LINE.fullmatch(lines[-1].strip()) is not None


def split_think(prompt: str, completion: str, open_tag: str, close_tag: str) -> tuple[str, str] | None:
    """``(reasoning, answer)`` if the completion is well-formed thinking then an answer
    (see the module doc), else None."""
    if completion.count(close_tag) != 1 or completion.count(open_tag) > 1:
        return None
    head, answer = completion.split(close_tag)
    if open_tag in head:
        before, reasoning = head.split(open_tag)
        if before.strip():
            return None
    elif prompt.rstrip().endswith(open_tag):
        reasoning = head
    else:
        return None
    if open_tag in answer or not reasoning.strip() or not answer.strip():
        return None
    return reasoning, answer


def overlong_penalty(num_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft over-length punishment ``R_length`` (formula in the module doc)."""
    if buffer <= 0 or buffer > max_tokens:
        raise ValueError(f"need 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
    expected = max_tokens - buffer
    if num_tokens <= expected:
        return 0.0
    if num_tokens <= max_tokens:
        return (expected - num_tokens) / buffer
    return -1.0


@verifier("format", kind="outcome")
class Format:
    """Reward a required answer shape (boxed, gsm8k, think, think_answer), plus DAPO's overlong penalty."""

    def __init__(
        self,
        *,
        require: str = "boxed",
        reward: float = 1.0,
        penalty: float = 0.0,
        overlong_buffer: int = 0,
        max_tokens: int = 0,
        overlong_weight: float = 1.0,
        think_open: str = "<think>",
        think_close: str = "</think>",
    ):
        if require not in REQUIRE_CHOICES:
            raise ConfigError(
                f"verifier 'format' param 'require' must be one of {', '.join(REQUIRE_CHOICES)}; "
                f"got {require!r}"
            )
        if overlong_buffer < 0 or max_tokens < 0:
            raise ConfigError(
                "verifier 'format' params 'overlong_buffer' and 'max_tokens' must be >= 0 "
                f"(0 = off / take from the sample); got {overlong_buffer} and {max_tokens}"
            )
        if max_tokens and overlong_buffer > max_tokens:
            raise ConfigError(
                f"verifier 'format' param 'overlong_buffer' ({overlong_buffer}) must not exceed "
                f"'max_tokens' ({max_tokens}): the buffer is the last part of the length limit"
            )
        if require == "none" and overlong_buffer == 0:
            raise ConfigError(
                "verifier 'format' with require='none' and overlong_buffer=0 scores nothing: "
                f"set require to one of {', '.join(REQUIRE_CHOICES[:-1])} or overlong_buffer > 0"
            )
        if require in ("think", "think_answer") and (not think_open or not think_close or think_open == think_close):
            raise ConfigError(
                "verifier 'format' params 'think_open' and 'think_close' must be two different "
                f"non-empty tags; got {think_open!r} and {think_close!r}"
            )
        self.require = require
        self.reward = reward
        self.penalty = penalty
        self.overlong_buffer = overlong_buffer
        self.max_tokens = max_tokens
        self.overlong_weight = overlong_weight
        self.think_open = think_open
        self.think_close = think_close

    def has_shape(self, sample: Sample) -> bool:
        """Whether ``sample.completion`` has the required shape."""
        text = sample.completion
        if self.require == "boxed":
            return has_boxed(text)
        if self.require == "gsm8k":
            return has_gsm8k_answer(text)
        parts = split_think(sample.prompt, text, self.think_open, self.think_close)
        if parts is None:
            return False
        if self.require == "think":
            return True
        m = _ANSWER_TAGS.fullmatch(parts[1])
        return m is not None and bool(m.group(1).strip()) and "<answer>" not in m.group(1)

    def score(self, sample: Sample) -> float | Failure:
        """The score of one sample (formula in the module doc)."""
        total = 0.0
        if self.require != "none":
            total = self.reward if self.has_shape(sample) else self.penalty
        if self.overlong_buffer:
            limit = self.max_tokens or sample.max_tokens
            if sample.num_tokens is None or not limit:
                missing = "num_tokens" if sample.num_tokens is None else "max_tokens"
                return Failure(
                    "error",
                    f"format: the overlong penalty needs the sample's {missing}, which is missing "
                    "(set the verifier's max_tokens param, or pass token counts with the sample)",
                )
            if self.overlong_buffer > limit:
                return Failure(
                    "error",
                    f"format: overlong_buffer {self.overlong_buffer} exceeds the sample's max_tokens {limit}",
                )
            total += self.overlong_weight * overlong_penalty(sample.num_tokens, limit, self.overlong_buffer)
        return total

    def __call__(self, samples: Sequence[Sample]) -> list[float | Failure]:
        return [self.score(s) for s in samples]


@hookimpl
def verirl_register_verifiers():
    return [Format]
