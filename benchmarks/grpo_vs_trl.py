"""verirl's GRPO against TRL's ``GRPOTrainer``, side by side, in one invocation.

    python benchmarks/grpo_vs_trl.py --steps 25 --prompts-per-step 8 --group-size 8 \\
        --max-new-tokens 48 --eval-problems 200 --threads 1

Each trainer runs in its own child process (so peak memory does not mix) from the same
config (``--config``, default ``configs/tiny.yaml``, with the options below
applied on top). The parent then prints a markdown table, verirl / TRL ratios and the
targets (issue 10: verirl ≤ 0.35× TRL's seconds per step and ≤ 0.5× its generation
time; ≤ TRL's peak RSS, accuracy no worse), and writes everything to ``--out`` as JSON.

Schedule (``--schedule``): by default the two children run in *lockstep*: both are
alive, and the parent lets them take turns one training step at a time (who goes first
alternates), so a burst of load from other processes on a shared machine lands on both
trainers alike. ``sequential`` runs one trainer after the other instead. On a shared
CPU, prefer ``--threads 1``: with more torch threads than free cores, OpenMP threads
wait on each other and both trainers slow down several-fold, which buries the
comparison in noise.

What is measured
----------------
- seconds per step: the median over steps 2..N (the first step pays for lazy
  initialisation: worker pools, allocator warm-up). verirl: the trainer's own
  ``perf/step_s`` (rollout → rewards → advantages → update, metrics computed);
  TRL: ``on_step_begin`` → ``on_step_end`` of a ``TrainerCallback``, which spans
  ``training_step`` (generation, rewards, advantages, loss, backward) and the optimizer
  step. Neither includes its per-step logging I/O. Phases: verirl's ``perf/rollout_s``
  and ``perf/reward_s`` (less ``perf/reward_overlap_s``, the scoring that ran during
  generation); TRL's ``_generate_and_score_completions`` (generation, rewards,
  advantages, reference log-probs) and the reward function's own time. The remainder is
  the update.
- peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child at the end of
  training (imports, model, optimizer and training included; the evaluation after it
  is not). Also the RSS just before the first step.
- accuracy: greedy (temperature 0) accuracy of each final model on the same first
  ``--eval-problems`` held-out problems, scored by the config's ``train.eval_verifier``
  with the same code for both: :func:`verirl.evaluation.evaluate` on an
  :class:`~verirl.rollout.hf.HFEngine`. The parent also evaluates the starting model.

Fairness: what is matched
-------------------------
- the model (loaded by verirl's ``load_causal_lm``, same dtype, handed to TRL as an
  object), the tokenizer, the data and the *order of prompts*: TRL gets the exact
  sequence of problems verirl's seeded ``ProblemStream`` draws, with
  ``shuffle_dataset=False``, so step k sees the same B prompts in both;
- the prompt text: the tokenizer's chat template (TRL renders the same conversation
  itself); the script checks that both paths give the same prompt token ids;
- B prompts × G completions per step (TRL: ``per_device_train_batch_size = B·G``,
  ``num_generations = G``, ``gradient_accumulation_steps = 1``, ``steps_per_generation
  = 1``), one optimizer step per rollout, μ = 1 (``num_iterations = 1``; verirl
  ``ppo_epochs = 1``, one minibatch, one micro-batch);
- sampling: temperature, top_p from the config, ``top_k`` off (0), no min_p, no
  repetition penalty, same EOS ids, ``max_new_tokens`` = ``max_completion_length``;
- the loss: the clipped surrogate with ε_low / ε_high, β with the k3 KL estimator
  (TRL only has k3), aggregation ``seq-mean-token-mean`` ↔ ``loss_type="grpo"``
  (``token-mean`` ↔ ``"bnpo"``, ``seq-mean-token-sum-norm`` ↔ ``"dr_grpo"``; TRL's
  default ``"dapo"`` is *not* used), advantage scaling ``group_std`` ↔
  ``scale_rewards="group"`` (``none`` ↔ ``"none"``, ``batch_std`` ↔ ``"batch"``);
- the optimizer: the same ``torch.optim.AdamW`` (lr, betas, weight decay) and the same
  ``LambdaLR`` warm-up schedule as verirl's trainer, passed to TRL through
  ``optimizers=``; gradient clipping at ``optim.max_grad_norm``;
- rewards: TRL's reward function builds the config's verifiers with
  ``get_verifier(name).build(**params)`` (the same params as verirl's rewards config)
  and computes ``Σ weight · score`` with the same fallback for failures, so a
  completion gets the same reward in both;
- precision and device: float32 on CPU (TRL ``use_cpu=True``, ``bf16=False``,
  ``fp16=False``, no vLLM); gradient checkpointing off in both (TRL's default is on);
  the same number of torch threads.

Fairness: what differs (and cannot be matched from the outside)
---------------------------------------------------------------
- ε_std: verirl adds ``algo.eps_std`` (1e-6) to the group std, TRL a hard-coded 1e-4;
  both use the sample (G − 1) std. Advantages differ by < 0.01 % for non-degenerate
  groups.
- a reward of ``None`` ("does not apply"): verirl adds 0, TRL would drop the completion
  from the group baseline. The benchmark maps ``None`` to 0 in TRL's reward function
  too, so it matches verirl.
- random streams: both are seeded with ``train.seed`` but consume random numbers
  differently, so the sampled completions (not the prompts) differ; accuracy after a
  few dozen steps therefore carries sampling noise (the table prints its standard
  error).
- TRL computes per-token entropies in its loss pass and keeps its own metric buffers;
  verirl computes the entropy too (under ``no_grad``). Both are part of each trainer's
  normal cost and are left on.
- features with no counterpart are refused rather than approximated: DAPO dynamic
  sampling (``algo.drop_zero_std``), process rewards, KL estimators other than k3,
  μ > 1 with minibatches, PPO.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("benchmarks.grpo_vs_trl")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "tiny.yaml"
TRAINERS = ("verirl", "trl")

# verirl config value → TRL GRPOConfig value
LOSS_TYPES = {"seq-mean-token-mean": "grpo", "token-mean": "bnpo", "seq-mean-token-sum-norm": "dr_grpo"}
SCALE_REWARDS = {"group_std": "group", "none": "none", "batch_std": "batch"}


# ---------------------------------------------------------------------- shared helpers


def peak_rss_mib() -> float:
    """Peak resident set of this process, MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def current_rss_mib() -> float | None:
    """Resident set of this process now, MiB (Linux ``/proc``; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError as exc:
        log.warning("cannot read /proc/self/status (%s); RSS before training not recorded", exc)
    return None


def median_excluding_first(values: Sequence[float]) -> float:
    """``median(values[1:])``: the first step pays one-off costs. Needs ≥ 2 values."""
    if len(values) < 2:
        raise ValueError(f"need at least 2 steps to exclude the first one, got {len(values)}")
    return statistics.median(values[1:])


def build_config(config_path: Path, args: argparse.Namespace, work: Path, trainer: str) -> Any:
    """The resolved verirl config both trainers run, with the benchmark's options applied."""
    from verirl.config import load_config

    overrides = [
        f"train.steps={args.steps}",
        f"rollout.prompts_per_step={args.prompts_per_step}",
        f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"train.threads={args.threads}",
        f"train.output_dir={work / trainer}",
        "train.eval_every=0",  # both final models are evaluated by this script, the same way
        "train.save_every=0",
        "train.progress=false",
        "train.overwrite=true",  # a --work-dir given again is rerun afresh
        "train.device=cpu",
    ]
    for key, value in (("optim.lr", args.lr), ("algo.beta", args.beta), ("train.seed", args.seed),
                       ("model.name_or_path", args.model), ("data.train", args.train_data),
                       ("data.eval", args.eval_data)):
        if value is not None:
            overrides.append(f"{key}={value}")
    overrides += args.set
    return load_config(config_path, overrides)


def check_comparable(config: Any) -> None:
    """Refuse configs TRL's GRPOTrainer has no exact counterpart for (see the docstring)."""
    from verirl.verifier import ConfigError

    a = config.algo
    problems = []
    if a.name != "grpo":
        problems.append(f"algo.name={a.name!r} (TRL's GRPOTrainer is GRPO only)")
    if a.reward_mode != "outcome":
        problems.append("algo.reward_mode=process (TRL's reward functions return one float per completion)")
    if a.drop_zero_std:
        problems.append("algo.drop_zero_std=true (TRL has no dynamic sampling)")
    if a.beta > 0 and a.kl_estimator != "k3":
        problems.append(f"algo.kl_estimator={a.kl_estimator!r} (TRL implements k3 only)")
    if a.ref_reset_every:
        problems.append("algo.ref_reset_every (TRL's sync_ref_model mixes weights differently)")
    n = config.rollout.prompts_per_step * config.rollout.group_size
    if (a.minibatch_size or n) != n or a.ppo_epochs != 1:
        problems.append("algo.ppo_epochs > 1 or minibatches (the benchmark compares μ = 1, one update per rollout)")
    if problems:
        raise ConfigError("grpo_vs_trl compares like with like; unsupported here: " + "; ".join(problems))


def check_inputs(config: Any) -> None:
    """Fail in the parent, with a clear message, on what would otherwise crash a child:
    TRL missing, a built-in model that is not there, unreadable data."""
    import importlib.util

    from verirl.data import load_problems, resolve_path
    from verirl.verifier import ConfigError

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the TRL side needs {', '.join(missing)}: pip install -e '.[bench]'")
    resolve_path(config.model.name_or_path)
    d = config.data
    for source in (d.train, d.eval):
        if source:
            load_problems(source, d.format, d.question_field, d.answer_field)


def eval_problems_and_prompts(config: Any, tokenizer: Any, limit: int) -> tuple[list, list[str]]:
    """The first ``limit`` held-out problems and their prompts."""
    from verirl.data import build_prompt, load_problems
    from verirl.verifier import ConfigError

    d = config.data
    if not d.eval:
        raise ConfigError("the benchmark needs held-out problems: set data.eval (or --eval-data)")
    problems = load_problems(d.eval, d.format, d.question_field, d.answer_field)[:limit]
    prompts = [build_prompt(tokenizer, p.question, d.prompt_template, d.system_prompt) for p in problems]
    return problems, prompts


def greedy_accuracy(model: Any, tokenizer: Any, config: Any, limit: int) -> dict[str, Any]:
    """Greedy accuracy of ``model`` on the first ``limit`` held-out problems, scored by
    ``train.eval_verifier`` (correct: score > 0.5) through :func:`verirl.evaluation.evaluate`."""
    from verirl.evaluation import evaluate
    from verirl.rewards import RewardFunction, parse_rewards
    from verirl.rollout.hf import HFEngine

    problems, prompts = eval_problems_and_prompts(config, tokenizer, limit)
    t0 = time.perf_counter()
    with RewardFunction(parse_rewards([{"verifier": config.train.eval_verifier}], source="eval")) as score:
        result = evaluate(HFEngine(model, tokenizer), problems, prompts, lambda s: score(s).rewards,
                          temperature=0.0, max_new_tokens=config.rollout.max_new_tokens,
                          batch_size=config.train.eval_batch_size)
    correct = sum(c[0] for c in result.correct)
    return {"accuracy": result.metrics["accuracy"], "correct": correct, "problems": len(problems),
            "eval_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------- the verirl child


def run_verirl(config: Any, eval_limit: int, gate: Gate) -> dict[str, Any]:
    """Train with :class:`verirl.trainer.Trainer`; returns timings, memory and accuracy."""
    from verirl.trainer import Trainer

    class GatedTrainer(Trainer):
        def train_step(self) -> dict[str, Any]:
            gate.wait()  # before perf/step_s starts counting
            metrics = super().train_step()
            gate.done()
            return metrics

    trainer = GatedTrainer(config)
    rss_before = current_rss_mib()
    t0 = time.perf_counter()
    try:
        records = trainer.train()
    finally:
        trainer.close()
    train_wall = time.perf_counter() - t0
    peak = peak_rss_mib()
    steps = [r for r in records if "perf/step_s" in r]
    step_s = [r["perf/step_s"] for r in steps]
    rollout_s = [r["perf/rollout_s"] for r in steps]
    reward_s = [r["perf/reward_s"] for r in steps]
    # scoring that ran while the engine was still generating is inside rollout_s already
    overlap_s = [r.get("perf/reward_overlap_s", 0.0) for r in steps]
    trainer.model.eval()
    accuracy = greedy_accuracy(trainer.model, trainer.tokenizer, config, eval_limit)
    return {
        "step_s": step_s,
        "generate_s": rollout_s,  # generation only
        "reward_s": reward_s,
        "reward_overlap_s": overlap_s,
        "update_s": [s - r - (w - o) for s, r, w, o in zip(step_s, rollout_s, reward_s, overlap_s)],
        "reward_mean": [r["reward/mean"] for r in steps],
        "completion_len": [r["rollout/len_mean"] for r in steps],
        "zero_std_frac": [r["rollout/zero_std_frac"] for r in steps],
        "train_wall_s": train_wall,
        "rss_before_train_mib": rss_before,
        "peak_rss_mib": peak,
        "eval": accuracy,
    }


# ---------------------------------------------------------------------- the TRL child


class _Verifiers:
    """TRL's reward function: the config's rewards terms, each built with
    ``get_verifier(name).build(**params)``; ``R_i = Σ_k w_k · s_k(i)`` with the term's
    fallback for a failed sample and 0 for ``None``, as :class:`verirl.rewards.RewardFunction`
    scores. Failures are counted per term and logged once per cause."""

    def __init__(self, config: Any):
        from verirl.plugins import get_verifier
        from verirl.rewards import parse_rewards
        from verirl.verifier import ConfigError

        self.terms = parse_rewards(config.rewards)
        self.specs = [get_verifier(t.verifier) for t in self.terms]
        for term, spec in zip(self.terms, self.specs):
            if spec.kind != "outcome":
                raise ConfigError(f"rewards term {term.name!r} is a {spec.kind} verifier; the benchmark compares outcome rewards")
        self.scorers = [spec.build(**dict(t.params)) for spec, t in zip(self.specs, self.terms)]
        self.max_tokens = config.rollout.max_new_tokens
        self.failures = {t.name: {"timeout": 0, "error": 0} for t in self.terms}
        self.seconds: list[float] = []
        self._logged: set[str] = set()
        self.__name__ = "+".join(t.name for t in self.terms)  # TRL names its reward metrics after this

    def __call__(self, prompts: list, completions: list, completion_ids: list, prompt_text: list[str],
                 answer: list[str], **_: Any) -> list[float]:
        from verirl.verifier import Failure, Sample

        t0 = time.perf_counter()
        samples = [Sample(prompt=prompt_text[i], completion=_completion_text(c), answer=answer[i],
                          num_tokens=len(completion_ids[i]), max_tokens=self.max_tokens)
                   for i, c in enumerate(completions)]
        rewards = [0.0] * len(samples)
        for term, scorer in zip(self.terms, self.scorers):
            for i, score in enumerate(scorer(samples)):
                if isinstance(score, Failure):
                    self.failures[term.name][score.kind] += 1
                    if score.cause not in self._logged:
                        self._logged.add(score.cause)
                        log.warning("verifier %r: %s: %s; sample gets fallback %g", term.name, score.kind,
                                    score.cause, term.fallback)
                    score = term.fallback
                if score is not None:
                    rewards[i] += term.weight * float(score)
        self.seconds.append(time.perf_counter() - t0)
        return rewards

    def close(self) -> None:
        for scorer in self.scorers:
            if callable(getattr(scorer, "close", None)):
                scorer.close()


def _completion_text(completion: Any) -> str:
    """TRL hands conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"unexpected TRL completion {completion!r:.80}; expected a string or a list of messages")


def trl_prompt(config: Any, tokenizer: Any, question: str) -> tuple[Any, str]:
    """What TRL's dataset holds for one question (a conversation when the chat template is
    used, so TRL renders it; else the rendered text) and the text verirl samples from.
    Raises if the two tokenize differently."""
    from verirl.data import build_prompt

    d = config.data
    text = build_prompt(tokenizer, question, d.prompt_template, d.system_prompt)
    verirl_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if d.prompt_template is None and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + [
            {"role": "user", "content": question}]
        trl_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        prompt: Any = messages
    else:
        trl_ids = tokenizer(text)["input_ids"]  # TRL tokenizes plain prompts with the special tokens
        prompt = text
    if list(trl_ids) != list(verirl_ids):
        raise RuntimeError(
            f"TRL and verirl would feed different prompt tokens for {question[:60]!r}: "
            f"{list(trl_ids)[:12]}… vs {list(verirl_ids)[:12]}…; the comparison would not be fair"
        )
    return prompt, text


def _checkpointing_field(config_cls: type) -> str:
    names = {f.name for f in dataclasses.fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def run_trl(config: Any, eval_limit: int, gate: Gate) -> dict[str, Any]:
    """Train with TRL's ``GRPOTrainer`` on the same model, prompts and settings."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from verirl.data import ProblemStream, load_problems
    from verirl.models import load_causal_lm, load_tokenizer
    from verirl.trainer import seed_everything

    c = config
    torch.set_num_threads(c.train.threads)
    seed_everything(c.train.seed)
    B, G, steps = c.rollout.prompts_per_step, c.rollout.group_size, c.train.steps
    tokenizer = load_tokenizer(c.model.name_or_path, c.model.trust_remote_code)
    model = load_causal_lm(c.model.name_or_path, c.model.dtype, torch.device("cpu"), c.model.trust_remote_code)
    model.train()

    # the exact prompt sequence verirl's trainer draws: same stream, same seed
    d = c.data
    stream = ProblemStream(load_problems(d.train, d.format, d.question_field, d.answer_field), c.train.seed, d.shuffle)
    rows = []
    for problem in stream.take(steps * B):
        prompt, text = trl_prompt(c, tokenizer, problem.question)
        rows.append({"prompt": prompt, "prompt_text": text, "answer": problem.answer})
    dataset = Dataset.from_list(rows)

    o = c.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    warmup = o.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)

    a, r = c.algo, c.rollout
    args = GRPOConfig(
        output_dir=str(Path(c.train.output_dir)),
        max_steps=steps,
        per_device_train_batch_size=B * G,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=G,
        num_iterations=a.ppo_epochs,
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=0,
        beta=a.beta,
        epsilon=a.eps_low,
        epsilon_high=a.eps_high,
        loss_type=LOSS_TYPES[a.loss_agg],
        scale_rewards=SCALE_REWARDS[a.scale],
        mask_truncated_completions=False,
        max_grad_norm=o.max_grad_norm if o.max_grad_norm > 0 else 0.0,
        learning_rate=o.lr,  # informational: the optimizer below is what steps
        shuffle_dataset=False,
        seed=c.train.seed,
        use_cpu=True,
        bf16=False,
        fp16=False,
        use_vllm=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # TRL defaults to checkpointing on; transformers 5 renamed the flag (the old name warns)
        **{_checkpointing_field(GRPOConfig): c.model.gradient_checkpointing},
    )

    class StepClock(TrainerCallback):
        """Seconds per optimizer step and TRL's own logged metrics."""

        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.logs: list[dict[str, Any]] = []
            self._t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            gate.wait()
            self._t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step_s.append(time.perf_counter() - self._t0)
            gate.done()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if logs:
                self.logs.append(dict(logs))

    class TimedGRPOTrainer(GRPOTrainer):
        """Times TRL's rollout phase (generation, rewards, advantages, π_old/π_ref log-probs)."""

        rollout_s: list[float] = []

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.rollout_s.append(time.perf_counter() - t0)
            return out

    reward_fn = _Verifiers(c)
    clock = StepClock()
    trainer = TimedGRPOTrainer(model=model, reward_funcs=[reward_fn], args=args, train_dataset=dataset,
                               processing_class=tokenizer, optimizers=(optimizer, scheduler), callbacks=[clock])
    # with tqdm off, transformers prints every log dict to stdout; the table is the output
    trainer.remove_callback(PrinterCallback)
    TimedGRPOTrainer.rollout_s = []
    rss_before = current_rss_mib()
    t0 = time.perf_counter()
    try:
        trainer.train()
    finally:
        reward_fn.close()
    train_wall = time.perf_counter() - t0
    peak = peak_rss_mib()
    if len(clock.step_s) != steps:
        raise RuntimeError(f"TRL ran {len(clock.step_s)} optimizer steps, expected {steps}")
    step_logs = [entry for entry in clock.logs if "reward" in entry]
    final = trainer.accelerator.unwrap_model(trainer.model)
    final.eval()
    accuracy = greedy_accuracy(final, tokenizer, c, eval_limit)
    rollout = TimedGRPOTrainer.rollout_s
    return {
        "step_s": clock.step_s,
        "generate_s": [x - w for x, w in zip(rollout, reward_fn.seconds)],  # generation + log-probs, no rewards
        "reward_s": reward_fn.seconds,
        "update_s": [s - x for s, x in zip(clock.step_s, rollout)],
        "reward_mean": [entry["reward"] for entry in step_logs],
        "completion_len": [entry.get("completions/mean_length", float("nan")) for entry in step_logs],
        "zero_std_frac": [entry.get("frac_reward_zero_std", float("nan")) for entry in step_logs],
        "train_wall_s": train_wall,
        "rss_before_train_mib": rss_before,
        "peak_rss_mib": peak,
        "eval": accuracy,
        "verifier_failures": reward_fn.failures,
        "trl_settings": {k: getattr(args, k) for k in (
            "loss_type", "scale_rewards", "num_iterations", "beta", "epsilon", "epsilon_high", "top_k",
            "temperature", "top_p", "max_completion_length", "per_device_train_batch_size",
            "generation_batch_size", "steps_per_generation", "gradient_checkpointing")},
    }


# ---------------------------------------------------------------------- the parent


class Gate:
    """A child's side of the lockstep schedule: before each step, wait for the parent's
    go; after it, report done. The wait happens before the step's clock starts. Before the
    first step the child reports ready, so no step runs while the other child is still
    loading."""

    def __init__(self, spec: str | None):
        self.fds = tuple(int(x) for x in spec.split(",")) if spec else None
        self._ready_sent = False

    def wait(self) -> None:
        if self.fds is None:
            return
        if not self._ready_sent:
            os.write(self.fds[1], b"r")
            self._ready_sent = True
        if os.read(self.fds[0], 1) != b"g":
            raise RuntimeError("the benchmark parent closed the lockstep pipe; stopping")

    def done(self) -> None:
        if self.fds is not None:
            os.write(self.fds[1], b"d")


def run_children(order: Sequence[str], work: Path, eval_limit: int, threads: int, steps: int,
                 lockstep: bool) -> dict[str, dict[str, Any]]:
    """Run each trainer in a fresh interpreter and return their result JSONs.

    ``lockstep``: both children run at once but take turns, one training step at a time
    (who goes first alternates), so a load spike from other processes on a shared machine
    hits both trainers alike instead of whichever happened to run during it. Otherwise
    they run one after the other.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")

    def command(trainer: str, gate: str | None) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", trainer,
               "--child-config", str(work / f"{trainer}.yaml"), "--child-out", str(work / f"{trainer}.json"),
               "--eval-problems", str(eval_limit)]
        return cmd + (["--child-gate", gate] if gate else [])

    t0 = time.perf_counter()
    if not lockstep:
        for trainer in order:
            print(f"[{trainer}] training …", file=sys.stderr, flush=True)
            code = subprocess.run(command(trainer, None), env=env).returncode
            if code != 0:
                raise RuntimeError(f"the {trainer} child failed with exit status {code} (its stderr is above)")
    else:
        procs, pipes = {}, {}
        for trainer in order:
            go_r, go_w = os.pipe()
            done_r, done_w = os.pipe()
            procs[trainer] = subprocess.Popen(command(trainer, f"{go_r},{done_w}"), env=env, pass_fds=(go_r, done_w))
            os.close(go_r)
            os.close(done_w)  # so a dead child reads as EOF here
            pipes[trainer] = (go_w, done_r)
        print(f"[lockstep] {' and '.join(order)} take turns, {steps} steps …", file=sys.stderr, flush=True)
        try:
            for trainer in order:
                if os.read(pipes[trainer][1], 1) != b"r":
                    raise RuntimeError(f"the {trainer} child stopped before its first step "
                                       f"(exit status {procs[trainer].wait()}; its stderr is above)")
            for step in range(steps):
                for trainer in (order if step % 2 == 0 else order[::-1]):
                    go_w, done_r = pipes[trainer]
                    os.write(go_w, b"g")
                    if os.read(done_r, 1) != b"d":
                        raise RuntimeError(f"the {trainer} child stopped before step {step + 1} ended "
                                           f"(exit status {procs[trainer].wait()}; its stderr is above)")
        finally:
            # closing the pipes also stops a child still waiting for its turn (it reads EOF)
            for go_w, done_r in pipes.values():
                os.close(go_w)
                os.close(done_r)
            for proc in procs.values():
                proc.wait()
        for trainer, proc in procs.items():
            if proc.returncode != 0:
                raise RuntimeError(f"the {trainer} child failed with exit status {proc.returncode} (its stderr is above)")
    results = {trainer: json.loads((work / f"{trainer}.json").read_text()) for trainer in order}
    print(f"[children] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return results


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """The table's numbers for one trainer."""
    last = max(1, min(5, len(result["reward_mean"])))
    acc = result["eval"]
    return {
        "step_s_median": median_excluding_first(result["step_s"]),
        "generate_s_median": median_excluding_first(result["generate_s"]),
        "reward_s_median": median_excluding_first(result["reward_s"]),
        "update_s_median": median_excluding_first(result["update_s"]),
        "step_s_sum": sum(result["step_s"]),
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_before_train_mib": result["rss_before_train_mib"] or float("nan"),
        "accuracy": acc["accuracy"],
        "accuracy_se": math.sqrt(acc["accuracy"] * (1 - acc["accuracy"]) / max(acc["problems"], 1)),
        "reward_mean_first5": _mean(result["reward_mean"][:5]),
        "reward_mean_last5": _mean(result["reward_mean"][-last:]),
        "completion_len_mean": _mean(result["completion_len"]),
        "zero_std_frac_mean": _mean(result["zero_std_frac"]),
    }


ROWS = [
    ("s/step (median, excl. step 1)", "step_s_median", "{:.3f}"),
    ("  generation s/step", "generate_s_median", "{:.3f}"),
    ("  rewards s/step", "reward_s_median", "{:.3f}"),
    ("  update (rest) s/step", "update_s_median", "{:.3f}"),
    ("all steps, s (sum, step 1 included)", "step_s_sum", "{:.1f}"),
    ("peak RSS, MiB", "peak_rss_mib", "{:.0f}"),
    ("RSS before step 1, MiB", "rss_before_train_mib", "{:.0f}"),
    ("greedy accuracy after training", "accuracy", "{:.3f}"),
    ("train reward, first 5 steps", "reward_mean_first5", "{:.3f}"),
    ("train reward, last 5 steps", "reward_mean_last5", "{:.3f}"),
    ("mean completion tokens", "completion_len_mean", "{:.1f}"),
    ("all-equal-reward groups (zero advantage)", "zero_std_frac_mean", "{:.2f}"),
]


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    v, t = summary["verirl"], summary["trl"]
    lines = ["| metric | verirl | TRL | verirl / TRL |", "|---|---:|---:|---:|"]
    for label, key, fmt in ROWS:
        a, b = v[key], t[key]
        ratio = f"{a / b:.2f}" if b and math.isfinite(a) and math.isfinite(b) else "n/a"
        cell = lambda x: fmt.format(x) if math.isfinite(x) else "n/a"  # noqa: E731
        if key == "accuracy":
            lines.append(f"| {label} | {cell(a)} ± {v['accuracy_se']:.3f} | {cell(b)} ± {t['accuracy_se']:.3f} "
                         f"| {ratio} |")
        else:
            lines.append(f"| {label} | {cell(a)} | {cell(b)} | {ratio} |")
    return "\n".join(lines)


#: issue 10's targets, as verirl / TRL ratios of the medians
STEP_TIME_TARGET = 0.35
GENERATION_TARGET = 0.5


def targets(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The targets: step time ≤ 0.35× TRL's and generation time ≤ 0.5× TRL's (issue 10),
    peak RSS ≤ TRL's, accuracy ≥ TRL's."""
    v, t = summary["verirl"], summary["trl"]
    step_ratio = v["step_s_median"] / t["step_s_median"]
    gen_ratio = v["generate_s_median"] / t["generate_s_median"]
    rss_ratio = v["peak_rss_mib"] / t["peak_rss_mib"]
    diff = v["accuracy"] - t["accuracy"]
    se = math.sqrt(v["accuracy_se"] ** 2 + t["accuracy_se"] ** 2)
    return {
        "step_time_le_0.35x": {"ratio": step_ratio, "target": STEP_TIME_TARGET,
                               "met": step_ratio <= STEP_TIME_TARGET},
        "generation_le_0.5x": {"ratio": gen_ratio, "target": GENERATION_TARGET,
                               "met": gen_ratio <= GENERATION_TARGET},
        "peak_rss_le_trl": {"ratio": rss_ratio, "target": 1.0, "met": rss_ratio <= 1.0},
        # `met` is the literal target; a gap within two standard errors of the difference
        # is what a few dozen noisy steps on a few hundred problems can resolve
        "accuracy_no_worse": {"difference": diff, "se_of_difference": se,
                              "met": diff >= 0, "within_2se": diff >= -2 * se},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="verirl config both trainers follow")
    p.add_argument("--steps", type=int, default=25, help="training steps (one rollout batch each)")
    p.add_argument("--prompts-per-step", type=int, default=8, help="B: prompts per step")
    p.add_argument("--group-size", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48, help="generation limit per completion")
    p.add_argument("--eval-problems", type=int, default=100, help="held-out problems for greedy accuracy")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in each child")
    p.add_argument("--lr", type=float, help="override optim.lr")
    p.add_argument("--beta", type=float, help="override algo.beta (KL coefficient; > 0 loads a reference model)")
    p.add_argument("--seed", type=int, help="override train.seed")
    p.add_argument("--model", help="override model.name_or_path")
    p.add_argument("--train-data", help="override data.train")
    p.add_argument("--eval-data", help="override data.eval")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config override (repeatable), e.g. --set algo.eps_high=0.28")
    p.add_argument("--schedule", choices=["lockstep", "sequential"], default="lockstep",
                   help="lockstep: both trainers alive, alternating one step each (fair under outside "
                        "load); sequential: one trainer after the other")
    p.add_argument("--order", choices=["verirl-first", "trl-first"], default="verirl-first",
                   help="which trainer goes first (each step alternates in lockstep)")
    p.add_argument("--work-dir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "grpo_vs_trl.json", help="result JSON")
    p.add_argument("--skip-baseline", action="store_true", help="do not evaluate the starting model")
    # internal: one trainer in this process
    p.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    p.add_argument("--child-config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-gate", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "eval_problems", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.steps < 2:
        p.error("--steps must be ≥ 2: the median step time excludes the first step")
    return args


def child_main(args: argparse.Namespace) -> int:
    from verirl.config import load_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.child_config)
    gate = Gate(args.child_gate)
    run = run_verirl if args.child == "verirl" else run_trl
    result = run(config, args.eval_problems, gate)
    args.child_out.write_text(json.dumps(result, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)

    from verirl.config import save_config
    from verirl.verifier import ConfigError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="grpo_vs_trl-")
        work = Path(tmp.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        configs = {}
        for trainer in TRAINERS:
            config = build_config(args.config, args, work, trainer)
            check_comparable(config)
            configs[trainer] = config
            save_config(config, work / f"{trainer}.yaml")
        check_inputs(configs["verirl"])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if tmp is not None:
            tmp.cleanup()
        return 2
    try:
        started = time.perf_counter()
        order = TRAINERS if args.order == "verirl-first" else TRAINERS[::-1]
        try:
            results = run_children(order, work, args.eval_problems, args.threads, args.steps,
                                   lockstep=args.schedule == "lockstep")
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        baseline = None
        if not args.skip_baseline:
            baseline = _baseline_accuracy(configs["verirl"], args.eval_problems, args.threads)
        summary = {t: summarize(results[t]) for t in TRAINERS}
        table = markdown_table(summary)
        goals = targets(summary)
        c = configs["verirl"]
        header = (f"GRPO, verirl vs TRL: {c.model.name_or_path}, {args.steps} steps × "
                  f"{args.prompts_per_step} prompts × G={args.group_size}, ≤{args.max_new_tokens} new tokens, "
                  f"lr={c.optim.lr:g}, β={c.algo.beta:g}, {args.threads} threads, "
                  f"accuracy on {results['verirl']['eval']['problems']} held-out problems")
        print(header)
        if baseline is not None:
            print(f"starting model's greedy accuracy: {baseline['accuracy']:.3f} "
                  f"({baseline['correct']}/{baseline['problems']})")
        print()
        print(table)
        print()
        for name, goal in goals.items():
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in goal.items()}
            print(f"target {name}: {shown}")
        total = time.perf_counter() - started
        print(f"benchmark wall time: {total:.0f} s")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "header": header, "config": c.to_dict(), "order": list(order), "summary": summary,
            "targets": goals, "baseline": baseline, "raw": results, "table_markdown": table,
            "wall_s": total,
        }, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _baseline_accuracy(config: Any, limit: int, threads: int) -> dict[str, Any]:
    """Greedy accuracy of the starting model (what both trainers began from)."""
    import torch

    from verirl.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(threads)
    tokenizer = load_tokenizer(config.model.name_or_path, config.model.trust_remote_code)
    model = load_causal_lm(config.model.name_or_path, config.model.dtype, torch.device("cpu"),
                           config.model.trust_remote_code)
    model.eval()
    return greedy_accuracy(model, tokenizer, config, limit)


if __name__ == "__main__":
    sys.exit(main())
