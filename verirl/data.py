"""Problems: load GSM8K/MATH-style rows, extract gold answers, build prompts.

Sources:
- a JSONL path (one JSON object per line);
- ``builtin:NAME/FILE`` — a file shipped in ``verirl/assets`` (the tiny default's data);
- ``hf:NAME[:CONFIG[:SPLIT]]`` — any Hugging Face dataset through ``datasets``.

Gold answers by format: ``gsm8k`` takes the text after ``####``; ``math`` takes the
``answer`` field, else the last ``\\boxed{}`` of the solution; ``plain`` takes the answer
field as it is; ``auto`` picks per row.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from verirl.grading.extract import last_boxed
from verirl.verifier import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets"
SOURCE_FORMS = "give a JSONL path, builtin:NAME/FILE or hf:NAME[:CONFIG[:SPLIT]]"
QUESTION_FIELDS = ("question", "problem", "prompt", "query")
ANSWER_FIELDS = ("answer", "solution", "gold", "target")


def _named(key: str | None, message: str) -> str:
    """``message`` led by the config key or option that gave the data, where known."""
    return f"{key}: {message}" if key else message


def resolve_path(name: str, key: str | None = None) -> str:
    """``builtin:X`` → the shipped asset path ``verirl/assets/X``; anything else unchanged.
    ``key``: the config key or option that named it, for the error message."""
    if name.startswith("builtin:"):
        path = ASSETS / name[len("builtin:"):]
        if not path.exists():
            available = sorted(p.name for p in ASSETS.iterdir()) if ASSETS.exists() else []
            raise ConfigError(_named(key, f"{name!r}: no such built-in asset; available: {available}"))
        return str(path)
    return name


@dataclass
class Problem:
    """One training/eval problem: the question, its gold answer (a short string), the row."""

    question: str
    answer: str
    row: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | Path, key: str | None = None) -> list[dict[str, Any]]:
    """Read JSONL rows; a malformed line is an error naming the file, the line number and
    ``key`` (the config key or option that named the file, where given)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(_named(key, f"file not found: {path}; {SOURCE_FORMS}"))
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            fix = f"each line must be one JSON object: fix line {lineno} or delete it"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(_named(key, f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                              f"{fix}")) from None
            if not isinstance(row, dict):
                raise ConfigError(_named(key, f"{path}:{lineno}: a {type(row).__name__}, not a JSON object; {fix}"))
            rows.append(row)
    return rows


def read_rows(source: str, key: str | None = None) -> list[dict[str, Any]]:
    """Rows from a JSONL path, a ``builtin:`` asset, or ``hf:NAME[:CONFIG[:SPLIT]]``
    (``key``: the config key or option that named it, for error messages)."""
    if source.startswith("hf:"):
        parts = source[3:].split(":")
        name = parts[0]
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 else "train"
        try:
            import datasets
        except ImportError:
            raise ConfigError(_named(key, f"{source!r} needs the `datasets` package: pip install datasets")) from None
        return [dict(r) for r in datasets.load_dataset(name, config, split=split)]
    return read_jsonl(resolve_path(source, key), key)


def gold_answer(row: dict[str, Any], answer_text: str, fmt: str) -> str | None:
    """Extract the gold answer of one row according to ``fmt``."""
    if fmt in ("gsm8k", "auto") and "####" in answer_text:
        return answer_text.rsplit("####", 1)[1].strip().replace(",", "")
    if fmt in ("math", "auto"):
        if isinstance(row.get("answer"), str) and row["answer"].strip() and "\\boxed" not in row["answer"] and "####" not in row["answer"]:
            return row["answer"].strip()
        boxed = last_boxed(answer_text)
        if boxed is not None:
            return boxed.strip()
    if fmt in ("plain", "auto") and answer_text.strip():
        return answer_text.strip()
    return None


def _pick(row: dict[str, Any], explicit: str | None, candidates: Sequence[str], what: str, where: str,
          field_hint: str) -> str:
    keys = (explicit,) if explicit else candidates
    for key in keys:
        if key in row and row[key] is not None:
            value = row[key]
            return value if isinstance(value, str) else str(value)
    raise ConfigError(
        f"{where}: no {what} field (looked for {', '.join(map(repr, keys))}; row has {sorted(row)}); "
        f"set {field_hint.format(what=what)}"
    )


def load_problems(
    source: str,
    fmt: str = "auto",
    question_field: str | None = None,
    answer_field: str | None = None,
    field_hint: str = "data.{what}_field",
    key: str | None = None,
) -> list[Problem]:
    """Load a dataset as Problems; a row without a usable question or answer is an error
    with its index. ``field_hint``: how the caller's user names a column (``{what}`` is
    ``question`` or ``answer``): the config key by default, a command-line option in ``eval``.
    ``key``: the config key or option that gave ``source`` (``data.train``), leading every
    error message."""
    rows = read_rows(source, key)
    if not rows:
        raise ConfigError(_named(key, f"{source}: no rows; give a JSONL file with one problem per line "
                                      '(e.g. {"question": ..., "answer": ...})'))
    problems = []
    for index, row in enumerate(rows):
        where = _named(key, f"{source} row {index}")
        question = _pick(row, question_field, QUESTION_FIELDS, "question", where, field_hint)
        # prefer the short `answer` column for MATH, the worked solution otherwise
        answer_text = _pick(row, answer_field, ANSWER_FIELDS, "answer", where, field_hint)
        gold = gold_answer(row, answer_text, fmt)
        if not gold:
            raise ConfigError(
                f"{where}: could not extract a gold answer in format {fmt!r} from {answer_text[:80]!r} "
                "(gsm8k needs '#### N', math an 'answer' field or a \\boxed{})"
            )
        problems.append(Problem(question.strip(), gold, row))
    return problems


def build_prompt(tokenizer: Any, question: str, template: str | None, system_prompt: str | None) -> str:
    """The prompt text: ``template.format(question=...)`` if given, else the chat template."""
    if template is not None:
        return template.format(question=question)
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": question}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


class ProblemStream:
    """An endless, seeded, resumable stream of training problems (reshuffled each epoch).

    ``position`` (epoch, index) is all the state a checkpoint needs to continue it.
    """

    def __init__(self, problems: Sequence[Problem], seed: int, shuffle: bool = True):
        self.problems = list(problems)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(len(self.problems)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[Problem]:
        out = []
        for _ in range(k):
            if self.index >= len(self._order):
                self.epoch += 1
                self.index = 0
                self._order = self._make_order()
            out.append(self.problems[self._order[self.index]])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._make_order()
