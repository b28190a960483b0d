"""Shared fixtures: tiny real models and tokenizers built offline, the shipped data, and two
toy verifiers the trainer tests reward with."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from verirl import Step, hookimpl, verifier
from verirl.plugins import register_plugin, unregister_plugin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_char_model(path: Path, seed: int = 0, hidden: int = 32, layers: int = 1) -> Path:
    """A character-level tokenizer and a randomly initialised tiny Llama, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in string.printable[:95]:
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=1, pad_token_id=0, bos_token_id=None,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def char_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_char_model(tmp_path_factory.mktemp("char_model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"the shared data folder is not at {SHARED_DATA}")
    return SHARED_DATA


@verifier("starts_with_digit")
def starts_with_digit(samples, *, digits: str = "0123456789"):
    """1 if the completion's first character is one of `digits`."""
    return [1.0 if s.completion[:1] in digits else 0.0 for s in samples]


@verifier("halves", kind="process")
def halves(samples):
    """Two steps per completion: +1 for a first half with a digit, −1 otherwise; the second half 0."""
    out = []
    for s in samples:
        n = len(s.completion)
        if n < 2:
            out.append([])
            continue
        first = s.completion[: n // 2]
        out.append([Step(0, n // 2, 1.0 if any(c.isdigit() for c in first) else -1.0), Step(n // 2, n, 0.0)])
    return out


class ToyVerifiers:
    @hookimpl
    def verirl_register_verifiers(self):
        return [starts_with_digit, halves]


@pytest.fixture(scope="session")
def problems_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 GSM8K-style rows "What is i plus i+1?" for the trainer tests."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with path.open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"question": f"What is {i} plus {i + 1}?",
                                 "answer": f"{i}+{i + 1}={2 * i + 1}\n#### {2 * i + 1}"}) + "\n")
    return path


@pytest.fixture()
def toy_verifiers():
    """`starts_with_digit` (outcome) and `halves` (process), registered for one test."""
    register_plugin(ToyVerifiers(), name="toy-verifiers")
    yield
    unregister_plugin("toy-verifiers")


@pytest.fixture()
def small_config(char_model, problems_file, toy_verifiers):
    """A factory ``small_config(out, *overrides)``: a run of the character model on the
    40 problems, rewarded by `starts_with_digit`, 2 prompts × 4 completions of 4 tokens
    per step, no eval, into ``out``; the overrides come last."""
    from verirl.config import load_config

    def make(out, *extra):
        return load_config(None, [
            f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
            "data.prompt_template='Q: {question}\nA:'", "rewards=[{verifier: starts_with_digit}]",
            f"train.output_dir={out}", "train.progress=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
            "rollout.max_new_tokens=4", "optim.lr=1e-2", "algo.beta=0", "train.seed=1", "train.show_samples_every=0",
            *extra,
        ])

    return make


def run_trainer(config):
    """Train ``config`` to its end; the metrics records of this call."""
    from verirl.trainer import Trainer

    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


@pytest.fixture()
def train_run():
    """``train_run(config)``: :func:`run_trainer` as a fixture."""
    return run_trainer
