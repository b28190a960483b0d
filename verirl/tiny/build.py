"""Build the tiny default model from nothing: synthetic data, tokenizer, Llama, short SFT.

Everything is offline and seeded: the same seed, torch build and thread count give the
same files. The model learns the GSM8K answer format (worked steps with ``<<a+b=c>>``
annotations, ``#### N``, end of text) and one-step arithmetic, but also the SFT corpus's
bad habit of stopping two-step solutions after their first step
(``tasks.sft_corpus``): its greedy answer is then often the intermediate result while
its samples finish the computation often enough for a verifier reward to tell the two
apart, which is the room GRPO needs.

Prompt format (what the chat template renders)::

    Question: {question}\\nAnswer: {solution}<|endoftext|>

the prompt being everything up to and including ``Answer:``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from verirl.tiny import steps as steps_task
from verirl.tiny import tasks

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, EOS_TOKEN)  # ids 0, 1, 2
MODEL_INPUT_NAMES = ("input_ids", "attention_mask")  # a Llama takes no token_type_ids

# Renders exactly the SFT prompt: "Question: {q}\nAnswer:" (then " {solution}<eos>" for an
# assistant turn). A system message, if any, goes first on its own line.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'user' -%}Question: {{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}Answer: {{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ raise_exception('tiny-arith chat roles are system, user and assistant; got ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Answer:{%- endif -%}"
)


def format_prompt(question: str) -> str:
    """The text the model is conditioned on: ``"Question: {question}\\nAnswer:"``."""
    return f"Question: {question}\nAnswer:"


def format_completion(answer: str) -> str:
    """The text the model learns to produce after the prompt (EOS excluded): ``" " + answer``."""
    return " " + answer


@dataclass
class BuildConfig:
    """Every knob of the build; the defaults make the shipped model."""

    task: str = "arith"
    """Which problems: "arith" (tasks: 1-2 steps, the shipped tiny-arith) or "steps"
    (tiny.steps: 3-5 calculations, the step-credit task tiny-steps; premature_frac,
    two_step_frac and the ranges do not apply to it)."""
    seed: int = 0
    """Seeds the problem generator, the weight init and the SFT batch order."""
    n_train: int = 4000
    """Synthetic training problems (shipped as train.jsonl)."""
    n_test: int = 300
    """Held-out problems, no question shared with train (shipped as test.jsonl)."""
    two_step_frac: float = 0.5
    """Share of two-step problems."""
    premature_frac: float = 0.6
    add_range: tuple[int, int] = tasks.DEFAULT_DIFFICULTY.add
    """Operands of + and - (inclusive); see ``tasks.Difficulty``."""
    small_range: tuple[int, int] = tasks.DEFAULT_DIFFICULTY.small
    """The small factor of a product."""
    factor_range: tuple[int, int] = tasks.DEFAULT_DIFFICULTY.factor
    """The other factor of a product."""
    """Share of the two-step SFT solutions cut after their first step (see
    ``tasks.sft_corpus``): the habit GRPO has to unlearn. 0 gives a clean SFT corpus."""
    vocab_size: int = 640
    """BPE vocabulary size: 256 byte symbols + 3 specials + merges."""
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 256
    steps: int = 1000
    """SFT optimizer steps. Stopping early keeps the second steps' arithmetic partial."""
    batch_size: int = 32
    lr: float = 3e-3
    """Peak AdamW learning rate (tiny models tolerate and need a high one)."""
    warmup_steps: int = 30
    min_lr_frac: float = 0.1
    """Cosine decay ends at min_lr_frac * lr."""
    weight_decay: float = 0.01
    threads: int = 2
    """torch threads; CPU float sums depend on it, so it is part of what fixes the output."""
    log_every: int = 50


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` with every digit its own token.

    Byte-level: any text (other scripts, emoji) encodes to byte tokens and decodes back
    exactly, so nothing is out of vocabulary. Digits split one per token so that the
    model sees numbers place by place, the form in which carrying can be learned.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_input_names=list(MODEL_INPUT_NAMES),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=256,
        padding_side="left",  # batched generation appends on the right
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: BuildConfig) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by ``cfg``, its vocab and special ids from ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,  # halves the embedding bytes; fine at this scale
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_new_tokens=96,
        do_sample=False,
    )
    return model


def encode_example(tokenizer: PreTrainedTokenizerFast, problem: tasks.Problem) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one problem: the prompt tokens are labelled -100 (no
    loss), the completion tokens and the final EOS are labelled with themselves.

    Prompt and completion are encoded separately, as a rollout will see them (prompt
    ids from the chat template, completion ids generated after them).
    """
    prompt = tokenizer.encode(format_prompt(problem["question"]), add_special_tokens=False)
    completion = tokenizer.encode(format_completion(problem["answer"]), add_special_tokens=False)
    completion.append(tokenizer.eos_token_id)
    return prompt + completion, [-100] * len(prompt) + completion


def _collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lr_at(step: int, cfg: BuildConfig) -> float:
    """Learning rate of 0-based ``step``: linear warmup to ``lr`` over ``warmup_steps``,
    then cosine decay reaching ``m · lr`` (``m = min_lr_frac``) on the last step:
    ``lr · (m + (1 − m) · ½(1 + cos(π · p)))``, ``p = (step − warmup) / (steps − 1 − warmup)``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps)
    m = cfg.min_lr_frac
    return cfg.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def sft(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, train: Sequence[tasks.Problem],
        cfg: BuildConfig, log: Callable[[str], None] = print) -> list[float]:
    """Supervised fine-tuning for ``cfg.steps`` AdamW steps on the completion tokens.

    Loss: mean over the batch's completion tokens of ``−log π(o_t | q, o_<t)``. Batches
    are drawn by a ``random.Random(cfg.seed)`` shuffle, epoch after epoch. Returns the
    loss of every step.
    """
    examples = [encode_example(tokenizer, p) for p in train]
    too_long = [len(ids) for ids, _ in examples if len(ids) > cfg.max_positions]
    if too_long:
        raise ValueError(f"{len(too_long)} examples exceed max_positions={cfg.max_positions} tokens "
                         f"(longest {max(too_long)}); raise max_positions")
    return train_on_examples(model, examples, tokenizer.pad_token_id, cfg, log)


def train_on_examples(model: torch.nn.Module, examples: Sequence[tuple[list[int], list[int]]], pad_id: int,
                      cfg: Any, log: Callable[[str], None] | None = print) -> list[float]:
    """``cfg.steps`` AdamW steps (learning rate :func:`lr_at`, gradients clipped to norm 1)
    on batches of ``cfg.batch_size`` ``(input ids, labels)`` examples drawn by a
    ``random.Random(cfg.seed)`` shuffle, epoch after epoch; the model's own loss on the
    labels (-100: ignored). Leaves the model in eval mode; returns every step's loss.
    ``cfg`` needs ``seed, steps, batch_size, lr, weight_decay, warmup_steps, min_lr_frac,
    log_every`` (the tiny policy's and the tiny PRM's build configs both have them)."""
    rng = random.Random(cfg.seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = _collate([examples[i] for i in order[: cfg.batch_size]], pad_id)
        del order[: cfg.batch_size]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping keeps the high learning rate from blowing up the first steps.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % cfg.log_every == 0:
            recent = losses[-cfg.log_every:]
            log(f"step {step + 1}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"lr {lr_at(step, cfg):.2e}  {time.perf_counter() - t0:.0f}s")
    model.eval()
    return losses


def _portable_tokenizer_config(config_path: Path) -> None:
    # transformers 5 writes its own class name, TokenizersBackend, which 4.x cannot
    # resolve; PreTrainedTokenizerFast names the same tokenizer in both. And 4.x's
    # PreTrainedTokenizerFast also returns token_type_ids unless told otherwise, which
    # `model.generate(**encoded)` then refuses. Before 4.47 the chat template is read
    # from here only, not from chat_template.jinja.
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = list(MODEL_INPUT_NAMES)
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def build(out_dir: Path | str, cfg: BuildConfig | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Write the whole asset folder to ``out_dir``: train.jsonl, test.jsonl, the tokenizer
    files, config.json, generation_config.json, model.safetensors and build.json (the
    config used, the final loss and the build time). Returns build.json's content."""
    cfg = cfg or BuildConfig()
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    if cfg.task not in ("arith", "steps"):
        raise ValueError(f"task must be 'arith' or 'steps', got {cfg.task!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    if cfg.task == "steps":
        train, test = steps_task.make_splits(cfg.n_train, cfg.n_test, cfg.seed)
        sft_data = train
    else:
        difficulty = tasks.Difficulty(add=tuple(cfg.add_range), small=tuple(cfg.small_range),
                                      factor=tuple(cfg.factor_range))
        train, test = tasks.make_splits(cfg.n_train, cfg.n_test, cfg.seed, two_step_frac=cfg.two_step_frac,
                                        difficulty=difficulty)
        sft_data = tasks.sft_corpus(train, cfg.premature_frac, cfg.seed)
    tasks.write_jsonl(out / "train.jsonl", train)
    tasks.write_jsonl(out / "test.jsonl", test)

    corpus = [format_prompt(p["question"]) + format_completion(p["answer"]) for p in train]
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    model = build_model(tokenizer, cfg)
    log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tokenizer)}")

    losses = sft(model, tokenizer, sft_data, cfg, log)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    summary = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out} in {summary['build_seconds']}s (final loss {summary['final_loss']:.4f})")
    return summary
