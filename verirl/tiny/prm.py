"""Build the tiny process reward model for tiny-steps, offline: ``python -m verirl.tiny prm``.

A ``LlamaForTokenClassification`` with two labels (1: the solution is still right after
this step, 0: it has gone wrong), its trunk initialised from the tiny-steps policy and
its head from scratch, trained on solutions the task generator labels itself: each
training problem written once correctly and once with each kind of mistake of
:func:`verirl.tiny.steps.inject_mistake` (a slip in one line's result, a misread
operand; every later line computed from the wrong value). The labels are prefix
correctness, as PRM800K's first-error and Math-Shepherd's labels are: a step is right
when no earlier step went wrong and its own does not, and the ``####`` line is right
when its answer is the gold.

The model reads exactly what the ``prm`` verifier gives it with
``style: token_classification, split: lines, step_tag: "", prompt_separator: ""``: the
rendered prompt ``Question: {q}\\nAnswer:`` followed by the completion, and it is trained
with cross-entropy at the token holding each line's last character (the positions that
verifier reads; :func:`verirl.verifiers.prm.token_positions`). Use it as::

    rewards:
      - {verifier: prm, model: builtin:tiny-steps-prm, style: token_classification,
         step_tag: "", prompt_separator: "", signed: true}

After training, the held-out metrics (test problems the policy never trained on, each
clean and with each mistake kind) are measured through the ``prm`` verifier itself and
written to ``build.json``: step accuracy at p = 0.5, AUROC of flagging a wrong step,
first-error accuracy, and the false-flag rate on clean solutions.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForTokenClassification

from verirl.grading.steps import split_steps
from verirl.tiny import steps as steps_task
from verirl.tiny import tasks
from verirl.tiny.build import _portable_tokenizer_config, format_completion, format_prompt, train_on_examples

LABELS = {0: "wrong", 1: "right"}


@dataclass
class PRMBuildConfig:
    """Every knob of the PRM build; the defaults make the shipped ``tiny-steps-prm``."""

    policy: str = ""
    """The tiny-steps policy folder whose trunk, tokenizer and train/test data are used
    ("" = the shipped ``verirl/assets/tiny-steps``)."""
    seed: int = 0
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    threads: int = 1
    labels: str = "prefix"
    """Step labels (``steps.inject_mistake``): "prefix" (still on the gold path) or "local"
    (this step right given the ones before it)."""
    dense: bool = True
    """Prefix labels only: label every completion token (still a prefix of the gold
    solution?), not only the line ends (:func:`encode_labelled`)."""
    n_eval: int = 300
    """Held-out test problems scored after training (each clean and with each mistake kind)."""
    log_every: int = 50


def labelled_solutions(problems: Sequence[tasks.Problem], seed: int,
                       labels: str = "prefix") -> list[tuple[tasks.Problem, list[bool]]]:
    """Each problem clean (every step right) and with each mistake kind, with its step labels."""
    rng = random.Random(seed * 7_919 + 3)
    out = []
    for p in problems:
        out.append((p, [True] * len(p["answer"].split("\n"))))
        for kind in steps_task.MISTAKE_KINDS:
            out.append(steps_task.inject_mistake(p, rng, kind, labels))
    return out


def encode_labelled(tokenizer, problem: tasks.Problem, labels: Sequence[bool],
                    gold: tasks.Problem | None = None) -> tuple[list[int], list[int]]:
    """``(input_ids, token labels)``: label 1/0 at the token holding each step's last
    character (as the ``prm`` verifier reads it), -100 on the prompt.

    With ``gold`` (the same problem's correct solution; prefix labels only) every other
    completion token is labelled too: 1 while the completion up to and including that
    token is a prefix of the gold completion, 0 from the first character that leaves it.
    The label then flips on the very token where the mistake is written, a far denser and
    more local signal than one label per line; the line-end tokens keep their step labels.
    Without ``gold`` the other tokens are -100."""
    from verirl.verifiers.prm import compose, token_positions

    prompt, completion = format_prompt(problem["question"]), format_completion(problem["answer"])
    spans = split_steps(completion, "lines")
    if len(spans) != len(labels):
        raise ValueError(f"{len(spans)} steps but {len(labels)} labels in {completion!r}")
    text, read_at = compose(prompt, completion, spans, "", "")
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    positions = token_positions(enc["offset_mapping"], read_at)
    ids = list(enc["input_ids"])
    token_labels = [-100] * len(ids)
    if gold is not None:
        reference = format_completion(gold["answer"])
        leave = next((k for k, (a, b) in enumerate(zip(completion, reference)) if a != b),
                     min(len(completion), len(reference)))
        start = len(prompt)
        for t, (s, e) in enumerate(enc["offset_mapping"]):
            if e > start and e > s:
                token_labels[t] = int(e - start <= leave)
    for pos, right in zip(positions, labels):
        token_labels[pos] = int(right)
    return ids, token_labels


def from_policy(policy_dir: Path) -> LlamaForTokenClassification:
    """A two-label token classifier whose trunk is the policy's (the head is new)."""
    policy = LlamaForCausalLM.from_pretrained(policy_dir)
    config = policy.config
    config.num_labels = 2
    config.id2label = dict(LABELS)
    config.label2id = {v: k for k, v in LABELS.items()}
    config.architectures = ["LlamaForTokenClassification"]
    model = LlamaForTokenClassification(config)
    model.model.load_state_dict(policy.model.state_dict())
    return model


def auroc(scores_of_wrong: Sequence[float], scores_of_right: Sequence[float]) -> float:
    """P(a wrong step scores below a right one), ties counted half: the AUROC of flagging
    wrong steps by low p(right). Rank-sum form, O(n log n)."""
    pooled = sorted([(s, 0) for s in scores_of_wrong] + [(s, 1) for s in scores_of_right])
    rank_sum_right, i = 0.0, 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # average 1-based rank of the tie block
        rank_sum_right += mid * sum(1 for k in range(i, j) if pooled[k][1] == 1)
        i = j
    n_r, n_w = len(scores_of_right), len(scores_of_wrong)
    if not n_r or not n_w:
        return float("nan")
    return (rank_sum_right - n_r * (n_r + 1) / 2) / (n_r * n_w)


def step_metrics(probs: Sequence[Sequence[float]], labels: Sequence[Sequence[bool]],
                 threshold: float = 0.5) -> dict[str, float]:
    """Step accuracy, AUROC, first-error accuracy and clean false-flag rate of per-step
    p(right) against labels. First error: the first step with ``p < threshold`` (none if
    no step is flagged) equals the first ``False`` label (none for a clean solution)."""
    correct = total = first_ok = clean = clean_flagged = 0
    wrong_scores, right_scores = [], []
    for ps, ls in zip(probs, labels):
        for p, right in zip(ps, ls):
            total += 1
            correct += (p >= threshold) == right
            (right_scores if right else wrong_scores).append(p)
        flagged = next((j for j, p in enumerate(ps) if p < threshold), None)
        truth = next((j for j, right in enumerate(ls) if not right), None)
        first_ok += flagged == truth
        if truth is None:
            clean += 1
            clean_flagged += flagged is not None
    return {
        "step_accuracy": correct / total,
        "auroc": auroc(wrong_scores, right_scores),
        "first_error_accuracy": first_ok / len(probs),
        "clean_false_flag_rate": clean_flagged / clean if clean else float("nan"),
        "steps": total,
        "solutions": len(probs),
    }


def evaluate_prm(model_dir: Path | str, problems: Sequence[tasks.Problem], seed: int,
                 labels: str = "prefix", batch_size: int = 32) -> dict[str, float]:
    """The held-out metrics of :func:`step_metrics`, scored through the ``prm`` verifier."""
    from verirl import Sample
    from verirl.verifiers.prm import ProcessRewardModel

    prm = ProcessRewardModel(model=str(model_dir), style="token_classification", step_tag="",
                             prompt_separator="", split="lines", batch_size=batch_size, device="cpu")
    solutions = labelled_solutions(problems, seed + 1, labels)
    samples = [Sample(prompt=format_prompt(p["question"]), completion=format_completion(p["answer"]),
                      answer="") for p, _ in solutions]
    steps = prm(samples)
    probs = [[s.reward for s in st] for st in steps]  # a Failure here would raise: every sample is well-formed
    return step_metrics(probs, [ls for _, ls in solutions])


def build_prm(out_dir: Path | str, cfg: PRMBuildConfig | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Train the PRM and write it (model, tokenizer, build.json with the held-out metrics)
    to ``out_dir``. Returns build.json's content."""
    from verirl.tiny import tiny_model_path

    cfg = cfg or PRMBuildConfig()
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}")
    policy_dir = Path(cfg.policy) if cfg.policy else tiny_model_path().parent / "tiny-steps"
    if not (policy_dir / "train.jsonl").is_file():
        raise ValueError(f"policy folder {policy_dir} has no train.jsonl: build tiny-steps first "
                         "(python -m verirl.tiny build --task steps)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    train = tasks.read_jsonl(policy_dir / "train.jsonl")
    test = tasks.read_jsonl(policy_dir / "test.jsonl")[: cfg.n_eval]
    if cfg.dense and cfg.labels != "prefix":
        raise ValueError("dense token labels need labels='prefix' (a local label has no gold prefix)")
    solutions = labelled_solutions(train, cfg.seed, cfg.labels)
    # labelled_solutions lists each problem clean first, then its mistakes
    per = 1 + len(steps_task.MISTAKE_KINDS)
    examples = [encode_labelled(tokenizer, p, ls, solutions[k - k % per][0] if cfg.dense else None)
                for k, (p, ls) in enumerate(solutions)]
    model = from_policy(policy_dir)
    log(f"prm: {len(examples):,} labelled solutions, {sum(p.numel() for p in model.parameters()):,} parameters")

    losses = train_on_examples(model, examples, tokenizer.pad_token_id, cfg, log)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    train_seconds = round(time.perf_counter() - t0, 1)
    held_out = evaluate_prm(out, test, cfg.seed, cfg.labels)
    summary = {
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "build_seconds": train_seconds,
        "held_out": held_out,
        "torch": torch.__version__,
    }
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {out} in {train_seconds}s (final loss {summary['final_loss']:.4f}); held out: "
        + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in held_out.items()))
    return summary
