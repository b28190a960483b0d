"""A small accuracy check for the tiny model: greedy accuracy and pass@k on a JSONL file.

This measures the shipped model while it is built and tuned; it is not the project's
``verirl eval`` (which handles any model and dataset). The check is deliberately plain:
the completion's answer is the integer after its last ``####``, compared to the gold one
as an exact integer string.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from verirl.tiny import tasks

_FINAL = re.compile(r"####\s*(-?\d+)\s*$")


def final_number(completion: str) -> str | None:
    """The integer after ``####`` at the very end of ``completion`` (as a string with no
    leading zeros, sign kept), or ``None`` when the completion does not end that way."""
    m = _FINAL.search(completion)
    return str(int(m[1])) if m else None


@torch.no_grad()
def complete(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], *,
             num_samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 96,
             batch_size: int = 256, seed: int = 0) -> list[list[tuple[str, bool]]]:
    """For each question, ``num_samples`` completions as ``(text, ended_with_eos)``.

    ``temperature == 0`` is greedy decoding (then ``num_samples`` must be 1); otherwise
    plain sampling from ``softmax(logits / temperature)`` with no top-k or top-p cut.
    Prompts come from the tokenizer's chat template, left-padded.
    """
    if temperature == 0 and num_samples != 1:
        raise ValueError(f"greedy decoding gives one completion per question; got num_samples={num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    torch.manual_seed(seed)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=False) for q in questions]
    flat = [p for p in prompts for _ in range(num_samples)]
    eos = tokenizer.eos_token_id
    out: list[tuple[str, bool]] = []
    tokenizer.padding_side = "left"
    for start in range(0, len(flat), batch_size):
        enc = tokenizer(flat[start:start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 \
            else dict(do_sample=False)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
        new = gen[:, enc["input_ids"].shape[1]:]
        for row in new:
            ended = bool((row == eos).any())
            out.append((tokenizer.decode(row, skip_special_tokens=True), ended))
    return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(questions))]


@dataclass
class Accuracy:
    """``greedy``: share of questions whose greedy answer is right; ``pass_at_k``: share
    with at least one right answer among ``k`` samples at ``temperature``; ``sample_mean``:
    share of right samples (pass@1 at that temperature); ``format_greedy`` /
    ``format_sampled``: share of completions that end ``#### N`` then EOS."""

    n: int
    k: int
    temperature: float
    greedy: float
    pass_at_k: float
    sample_mean: float
    format_greedy: float
    format_sampled: float
    seconds: float

    def line(self) -> str:
        return (f"n={self.n} greedy={self.greedy:.3f} pass@{self.k}(T={self.temperature:g})={self.pass_at_k:.3f} "
                f"sample_mean={self.sample_mean:.3f} format_greedy={self.format_greedy:.3f} "
                f"format_sampled={self.format_sampled:.3f} ({self.seconds:.0f}s)")


def _ok(completion: tuple[str, bool], gold: str) -> bool:
    return completion[1] and final_number(completion[0]) == gold


def _formatted(completion: tuple[str, bool]) -> bool:
    return completion[1] and final_number(completion[0]) is not None


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[tasks.Problem], *,
             k: int = 8, temperature: float = 1.0, seed: int = 0) -> Accuracy:
    """Greedy accuracy, pass@k and format rates of ``model`` on ``problems`` (GSM8K rows)."""
    t0 = time.perf_counter()
    questions = [p["question"] for p in problems]
    golds = [str(int(tasks.gold_number(p["answer"]))) for p in problems]
    greedy = complete(model, tokenizer, questions)
    sampled = complete(model, tokenizer, questions, num_samples=k, temperature=temperature, seed=seed)
    n = len(problems)
    return Accuracy(
        n=n, k=k, temperature=temperature,
        greedy=sum(_ok(g[0], gold) for g, gold in zip(greedy, golds)) / n,
        pass_at_k=sum(any(_ok(s, gold) for s in ss) for ss, gold in zip(sampled, golds)) / n,
        sample_mean=sum(_ok(s, gold) for ss, gold in zip(sampled, golds) for s in ss) / (n * k),
        format_greedy=sum(_formatted(g[0]) for g in greedy) / n,
        format_sampled=sum(_formatted(s) for ss in sampled for s in ss) / (n * k),
        seconds=time.perf_counter() - t0,
    )


def evaluate_dir(model_dir: Path | str, data: Path | str | None = None, *, k: int = 8,
                 temperature: float = 1.0, limit: int | None = None, seed: int = 0) -> Accuracy:
    """Load ``model_dir`` with the Auto classes and evaluate it on ``data`` (default: the
    folder's own test.jsonl), the first ``limit`` rows if given."""
    model_dir = Path(model_dir)
    data = Path(data) if data is not None else model_dir / "test.jsonl"
    if not data.is_file():
        raise FileNotFoundError(f"no evaluation data at {data}: pass a GSM8K-style JSONL file")
    problems = tasks.read_jsonl(data)[:limit]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return evaluate(model, tokenizer, problems, k=k, temperature=temperature, seed=seed)
