"""The embedded tiny default: a small causal LM and tokenizer built offline for CPU runs.

The shipped folder (``tiny_model_path()``) loads with ``AutoModelForCausalLM`` and
``AutoTokenizer`` and holds its own ``train.jsonl`` / ``test.jsonl`` of synthetic
GSM8K-format arithmetic problems. Rebuild it with ``python -m verirl.tiny build``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["tiny_model_path"]


def tiny_model_path() -> Path:
    """The folder of the shipped tiny model, tokenizer and data (``verirl/assets/tiny-arith``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny-arith"
