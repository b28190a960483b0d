"""The training loop: rollout → verifiers → advantages → loss → update → metrics/checkpoint.

One step of GRPO (ALGORITHMS.md), as :meth:`Trainer.train_step` reads:

1. take ``B`` prompts; sample ``G`` completions each from π_old (the current policy);
2. score every completion with the configured verifiers (``R_i`` or step rewards);
3. advantages: group-normalised per completion (outcome) or per step (process),
   broadcast to tokens; all-equal groups counted (and optionally resampled, DAPO);
4. log π_old stored (recomputed by the trainer; with one update per rollout it is
   ``log π_θ`` detached, so ρ = 1), log π_ref if β > 0;
5. μ epochs × minibatches of the clipped loss + β·KL, AdamW, gradient clipping;
6. metrics to ``metrics.jsonl``; eval and checkpoint on their schedules.

PPO with a critic (``algo.name: ppo``) is the same loop: steps 3–5 become
:meth:`verirl.ppo.PPO.step` (per-token rewards with the KL penalty, GAE from the
critic's values, the clipped policy + value + entropy loss).
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import functools
import json
import logging
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from verirl import distributed, losses
from verirl.advantages import PROCESS_ESTIMATORS, AdvantageInputs, get_advantage_estimator, steps_to_tokens
from verirl.batching import chunks, micro_batch_rows, minibatches, rows_to_run
from verirl.checkpoint import latest_checkpoint, load_state, rng_state, save_checkpoint, set_rng_state
from verirl.config import BATCH_COUPLED_LOSSES, Config, save_config
from verirl.cpu_memory import keep_freed_memory
from verirl.data import Problem, ProblemStream, build_prompt, load_problems
from verirl.evaluation import evaluate
from verirl.guard import guard_step
from verirl.metrics import (MetricsWriter, RunInfo, UpdateStats, check_backends, make_backends, peak_rss_mb,
                            truncate_jsonl_after)
from verirl.models import (
    ADAPTER_DIR,
    DTYPES,
    attach_lora,
    check_model_source,
    completion_logits,
    compute_autocast,
    frozen_copy,
    load_causal_lm,
    load_tokenizer,
    pick_device,
)
from verirl.optim import build_optimizer
from verirl.overlap import OverlappedScoring
from verirl.policy_losses import PolicyLossParams, grpo_loss, token_filter_weights
from verirl.ppo import PPO
from verirl.report import sample_table
from verirl.rewards import RewardBatch, RewardFunction, RewardTerm, parse_rewards
from verirl.rollout import engine_options, make_engine
from verirl.rollout.base import RolloutBatch, SamplingConfig, concat_batches, select_rows, trim_padding
from verirl.rundir import clear_run, prepare_run_dir
from verirl.verifier import ConfigError, Sample, Step

log = logging.getLogger("verirl.trainer")


class TrainingAborted(RuntimeError):
    """The run stopped itself (too many updates skipped for NaN/inf); the last checkpoint is good."""


@dataclass
class Rollout:
    """One step's scored rollout: ``N = B·G`` completions, groups of G consecutive rows."""

    batch: RolloutBatch
    problems: list[Problem]  # one per group
    samples: list[Sample]  # one per completion
    rewards: RewardBatch
    zero_std_frac: float  # fraction of all-equal groups before any resampling
    resample_rounds: int
    rollout_s: float
    reward_s: float  # seconds the verifiers ran, overlapped with generation or not
    samples_drawn: int = 0  # completions generated for this step, resampled groups included
    baseline: list[float] | None = None  # remax: each completion's greedy-rollout reward of its prompt
    reward_overlap_s: float = 0.0  # of reward_s, the seconds that ran while the engine was still generating


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_token_indices(tokenizer: Any, ids: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """For each character offset ``e`` into the decoded completion, the index of the
    token whose text contains character ``e − 1`` (the last token of a step ending at
    ``e``). Decoding prefixes keeps this right for byte-level tokenizers, where one
    token's text is not a substring of the whole."""
    ids = list(ids)
    cache: dict[int, int] = {}

    def prefix_len(k: int) -> int:  # characters decoded from the first k tokens
        if k not in cache:
            cache[k] = len(tokenizer.decode(ids[:k], skip_special_tokens=True))
        return cache[k]

    out = []
    for end in char_ends:
        # smallest k with prefix_len(k) >= end; the token is k − 1
        k = bisect.bisect_left(range(len(ids) + 1), end, key=prefix_len)
        out.append(min(max(k - 1, 0), max(len(ids) - 1, 0)))
    return out


class Trainer:
    """Owns the models, optimizer, engine, verifiers and data of one run."""

    def __init__(self, config: Config):
        self.config = config
        c = config
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        # torchrun's ranks join the process group first (a bad launch fails before anything loads)
        self.dist, device_name = distributed.setup(c.train.parallel, c.rollout.prompts_per_step,
                                                   c.algo.minibatch_size, c.train.device)
        self.out = Path(c.train.output_dir)
        # the run directory, the model path and the logging backends are checked first, the
        # data and verifiers next: bad input fails before any model loads. Nothing is
        # written until everything has loaded, so a failed start leaves no run directory.
        checkpoint = prepare_run_dir(self.out, c.train.resume, c.train.overwrite)
        check_model_source(c.model.name_or_path)
        check_backends(c.train.report_to)
        self.device = pick_device(device_name)
        if c.train.keep_freed_memory:
            keep_freed_memory(self.device)
        seed_everything(c.train.seed)

        d = c.data
        self.train_problems = load_problems(d.train, d.format, d.question_field, d.answer_field, key="data.train")
        self.eval_problems = (
            load_problems(d.eval, d.format, d.question_field, d.answer_field, key="data.eval") if d.eval else []
        )
        if d.max_eval and len(self.eval_problems) > d.max_eval:
            self.eval_problems = self.eval_problems[: d.max_eval]
        self.reward_fn = RewardFunction(parse_rewards(c.rewards), outcome_step=c.algo.outcome_step)
        self.eval_reward_fn = None
        if self.eval_problems:  # one term, weight 1: a problem is solved when its score is > 0.5
            term = RewardTerm(c.train.eval_verifier, params=dict(c.train.eval_verifier_params))
            try:
                self.eval_reward_fn = RewardFunction([term])
            except ConfigError as exc:
                raise ConfigError(f"train.eval_verifier / eval_verifier_params: {exc}") from None
        self.stream = ProblemStream(self.train_problems, c.train.seed, d.shuffle)

        source = str(checkpoint) if checkpoint else c.model.name_or_path
        self.tokenizer = load_tokenizer(source, c.model.trust_remote_code)
        m = c.model
        # mixed precision: float32 weights (and so gradients and AdamW state), forwards in m.dtype
        autocast_dtype = DTYPES.get(m.autocast_dtype)
        self.autocast = functools.partial(compute_autocast, self.device, autocast_dtype)
        # a LoRA run trains adapters on the base model: resume loads the base, then its adapter
        self.model = load_causal_lm(m.name_or_path if m.lora_rank else source, m.weights_dtype, self.device,
                                    m.trust_remote_code)
        self.lora = None
        if m.lora_rank:
            adapter = checkpoint / ADAPTER_DIR if checkpoint is not None else None
            self.lora = attach_lora(self.model, m.lora_rank, m.lora_alpha, m.lora_dropout, m.lora_target_modules,
                                    adapter)
            self.model = self.lora.get_base_model()
        if c.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.train()
        self.ref_model = None
        # GRPO puts the KL to π_ref in the loss (β), PPO in the per-token reward (β_r);
        # with LoRA π_ref is the base model itself, the adapters switched off
        self.uses_reference = (c.algo.beta_r if c.algo.name == "ppo" else c.algo.beta) > 0
        if self.uses_reference and self.lora is None:
            ref_source = c.model.name_or_path
            if checkpoint is not None and (checkpoint / "ref").exists():
                ref_source = str(checkpoint / "ref")
            self.ref_model = frozen_copy(load_causal_lm(ref_source, c.model.dtype, self.device, c.model.trust_remote_code))
        # Several processes: DDP wraps the update's forward (the policy's, or PPO's policy and
        # critic together); FSDP2 shards the policy and keeps a whole copy, refreshed after
        # every update, for sampling, eval and the no-gradient passes.
        self.train_policy = None  # DDP around the update's forward, else None
        self.rollout_model = None  # FSDP2: the whole-weights copy
        if self.dist.parallel == "fsdp2":
            self.rollout_model = frozen_copy(copy.deepcopy(self.model))
            distributed.shard_fsdp2(self.model, autocast_dtype)
        elif self.dist.parallel == "ddp" and c.algo.name != "ppo":
            self.train_policy = distributed.wrap_ddp(distributed.CallModule(completion_logits, self.model),
                                                     self.device)
        self.infer_model = self.rollout_model if self.rollout_model is not None else self.model
        self.engine = make_engine(c.rollout.engine, self.infer_model, self.tokenizer, **engine_options(c, source))

        self.optimizer, self.scheduler = build_optimizer(self.model.parameters(), c.optim.lr, c)
        self.estimator = c.algo.estimator()
        self.loss_params = PolicyLossParams.from_fields(c.algo)
        # PPO: the critic, its optimizer and the KL controller (a resumed run loads the critic here)
        self.ppo = (PPO(c, self.model, self.optimizer, self.scheduler, checkpoint, self.dist, self.autocast)
                    if c.algo.name == "ppo" else None)
        self.step = 0
        self.bad_updates = 0  # optimizer steps skipped for a NaN/inf loss or gradient, over the run
        if self.dist.world_size > 1:  # the same weights everywhere, each rank its own samples
            seed_everything(c.train.seed + self.dist.rank)
        if checkpoint is not None:
            self._restore(checkpoint)

        # everything has loaded on every rank: rank 0 alone writes the run directory
        self.dist.barrier()
        self.metrics = None
        self.samples_path = self.out / "samples.jsonl"
        if self.dist.is_main:
            if c.train.overwrite:
                clear_run(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(c, self.out / "config.yaml")
            resume_step = self.step if checkpoint is not None else None
            run = RunInfo(self.out, c.train.run_name or self.out.resolve().name, c.to_dict(), resume_step,
                          c.train.wandb_project)
            self.metrics = MetricsWriter(self.out, resume_step, make_backends(c.train.report_to, run))
            if checkpoint is None:
                self.samples_path.write_text("")
            else:  # the killed run's samples after the checkpoint are redone, like its metrics
                truncate_jsonl_after(self.samples_path, self.step)
        self.dist.barrier()

    # ------------------------------------------------------------------ loop

    def train(self) -> list[dict[str, Any]]:
        """Run to ``train.steps``; returns the metrics records written by this call."""
        c = self.config.train
        records = []
        progress = None
        main = self.dist.is_main
        if c.progress and main:
            from tqdm import tqdm

            # in a log file (no terminal) a redraw per step would be one line per step
            progress = tqdm(total=c.steps, initial=self.step, desc="verirl train", unit="step",
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        try:
            if self.step == 0 and c.eval_every and self.eval_problems and main:
                record = {"step": 0, **self.evaluate()}
                self.metrics.write(0, record)
                records.append(record)
            while self.step < c.steps:
                metrics = self.train_step()
                self.step += 1
                if self._count_bad_updates(metrics):
                    if main:
                        self.metrics.write(self.step, metrics)
                    raise TrainingAborted(
                        f"step {self.step}: {self.bad_updates} optimizer steps were skipped for a NaN/inf loss or "
                        f"gradient, more than train.max_bad_updates={c.max_bad_updates}; stopping. The weights were "
                        f"never touched by them; the last checkpoint is {latest_checkpoint(self.out)}"
                    )
                if (c.eval_every and self.eval_problems and main
                        and (self.step % c.eval_every == 0 or self.step == c.steps)):
                    metrics.update(self.evaluate())
                if main:
                    self.metrics.write(self.step, metrics)
                records.append({"step": self.step, **metrics})
                if (c.save_every and self.step % c.save_every == 0) or self.step == c.steps:
                    self.save()
                if progress is not None:
                    progress.update(1)
                    shown = {"reward": metrics["reward/mean"]}
                    if "eval/accuracy" in metrics:
                        shown["acc"] = metrics["eval/accuracy"]
                    progress.set_postfix(shown, refresh=False)
        finally:
            if progress is not None:
                progress.close()
        self.dist.barrier()
        return records

    def _count_bad_updates(self, metrics: dict[str, Any]) -> bool:
        """Add this step's skipped optimizer steps to the run's count (logged with the
        step, in the metrics as ``optim/skipped_total``); True when the count is past
        ``train.max_bad_updates``."""
        skipped = int(metrics.get("optim/skipped_updates", 0))
        self.bad_updates += skipped
        metrics["optim/skipped_total"] = self.bad_updates
        if skipped:
            log.warning("step %d: %d optimizer step(s) skipped for a NaN/inf loss or gradient; weights and "
                        "optimizer state untouched (%d in this run; train.max_bad_updates=%d)",
                        self.step, skipped, self.bad_updates, self.config.train.max_bad_updates)
        return self.bad_updates > self.config.train.max_bad_updates

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.reward_fn.close()
        if self.eval_reward_fn is not None:
            self.eval_reward_fn.close()
        self.dist.close()

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        c = self.config
        with self.autocast():
            rollout = self.rollout()
        self.engine.sleep()  # an engine holding accelerator memory lends it to the update
        batch = _to_device(rollout.batch, self.device)
        mask = batch.completion_mask

        # 3-5. advantages, stored log-probs, the update: GRPO's or PPO's
        rewards = torch.tensor(rollout.rewards.rewards, dtype=torch.float32, device=self.device)
        if self.ppo is not None:
            stats, update_s = self._ppo_update(batch, rollout, rewards)
        else:
            stats, update_s = self._grpo_update(batch, rollout, rewards)

        if self.rollout_model is not None:  # FSDP2: the whole updated weights for sampling
            self.rollout_model.load_state_dict(distributed.full_state_dict(self.model))
        self.engine.sync_weights()  # the next rollout samples from the updated policy
        if c.algo.ref_reset_every and self.ref_model is not None and (self.step + 1) % c.algo.ref_reset_every == 0:
            sync_reference(self.ref_model, self.infer_model, c.algo.ref_mixup_alpha)

        # 6. metrics
        N = mask.shape[0]
        gen_tokens = float(mask.sum())
        total_tokens = float(batch.prompt_mask.sum() + mask.sum())
        metrics: dict[str, Any] = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if N > 1 else 0.0,
        }
        for name, mean in _per_verifier_means(rollout.rewards.scores).items():
            metrics[f"reward/{name}"] = mean
        for name, counts in rollout.rewards.failures.items():
            metrics[f"verifier/{name}/timeouts"] = counts["timeout"]
            metrics[f"verifier/{name}/errors"] = counts["error"]
        metrics.update(stats)
        lengths = mask.sum(-1).float()
        metrics.update({
            "rollout/len_mean": float(lengths.mean()),
            "rollout/len_max": float(lengths.max()),
            "rollout/finished_frac": float(batch.finished.float().mean()),
            "rollout/zero_std_frac": rollout.zero_std_frac,
            "rollout/resample_rounds": rollout.resample_rounds,
            "rollout/samples_drawn": rollout.samples_drawn,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "perf/rollout_s": rollout.rollout_s,
            "perf/reward_s": rollout.reward_s,
            "perf/reward_overlap_s": rollout.reward_overlap_s,
            "perf/rollout_tok_s": gen_tokens / max(rollout.rollout_s, 1e-9),
            "perf/train_tok_s": total_tokens * c.algo.ppo_epochs / max(update_s, 1e-9),
            "perf/step_s": time.perf_counter() - start,
            "mem/peak_rss_mb": peak_rss_mb(),
        })
        if rollout.baseline is not None:
            metrics["rollout/baseline_reward"] = sum(rollout.baseline) / len(rollout.baseline)
        if torch.cuda.is_available() and self.device.type == "cuda":
            metrics["mem/peak_gpu_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        metrics = distributed.reduce_metrics(self.dist, metrics, rollout.rewards.rewards)
        if self.dist.is_main:
            self._log_samples(rollout)
            every = c.train.show_samples_every
            if every and c.train.show_samples and (self.step + 1) % every == 0:
                self._show_samples(rollout)
        return metrics

    def _grpo_update(self, batch: RolloutBatch, rollout: Rollout, rewards: torch.Tensor) -> tuple[dict[str, float], float]:
        """GRPO's steps 3-5 on a scored rollout; returns ``(stats, update seconds)``."""
        c = self.config
        mask = batch.completion_mask
        # 3. advantages [N, T] from the configured estimator
        advantages = self.advantages(batch, rollout, rewards)

        # 4. stored log-probs: π_old (trainer's recomputation) and π_ref
        update_start = time.perf_counter()
        N = mask.shape[0]
        minibatch = c.algo.minibatch_size // self.dist.world_size or N
        single_update = c.algo.ppo_epochs == 1 and minibatch == N
        old_logp = None if single_update else self.logprobs(self.infer_model, batch)
        ref_logp = self.reference_logprobs(batch)

        # 5. μ epochs × minibatches
        stats = self.update(batch, advantages, old_logp, ref_logp, self.loss_mask(batch))
        return stats, time.perf_counter() - update_start

    def advantages(self, batch: RolloutBatch, rollout: Rollout, rewards: torch.Tensor) -> torch.Tensor:
        """``Â`` ``[N, T]`` by the estimator ``algo.advantage`` selects (its process variant
        in process mode), given the inputs it reads."""
        a = self.config.algo
        mask = batch.completion_mask
        inputs = AdvantageInputs(rewards, mask, self.config.rollout.group_size, a.eps_std, a.scale, a.gamma)
        if self.estimator in PROCESS_ESTIMATORS:
            step_rewards, step_index, step_mask = self.place_steps(batch, rollout.rewards.steps)
            inputs = dataclasses.replace(inputs, step_rewards=step_rewards, step_index=step_index, step_mask=step_mask)
        elif self.estimator == "remax":
            inputs = dataclasses.replace(inputs, baseline=torch.tensor(rollout.baseline, device=self.device))
        elif self.estimator == "gdpo":
            values, weights = self.reward_fn.term_values(rollout.rewards)
            inputs = dataclasses.replace(inputs, term_rewards=torch.tensor(values, device=self.device),
                                         term_weights=torch.tensor(weights, device=self.device))
        return get_advantage_estimator(self.estimator)(inputs)

    def loss_mask(self, batch: RolloutBatch) -> torch.Tensor:
        """The tokens the loss sees: the completion tokens, less those of completions cut
        off at ``max_new_tokens`` when ``algo.mask_truncated`` (DAPO's overlong filtering)."""
        mask = batch.completion_mask
        if not self.config.algo.mask_truncated:
            return mask
        return mask * batch.finished.to(mask.dtype).unsqueeze(1)

    def _ppo_update(self, batch: RolloutBatch, rollout: Rollout, rewards: torch.Tensor) -> tuple[dict[str, float], float]:
        """PPO's steps 3-5 (:meth:`verirl.ppo.PPO.step`); returns ``(stats, update seconds)``."""
        update_start = time.perf_counter()
        # outcome: R_i on the last token; process: each step's reward on its last token
        if self.config.algo.reward_mode == "outcome":
            scores = rewards
        else:  # each step's reward on its last token (two steps on one token: both)
            scores = steps_to_tokens(*self.place_steps(batch, rollout.rewards.steps), batch.completion_mask)
        ref_logp = self.reference_logprobs(batch)
        stats = self.ppo.step(batch, scores, ref_logp, self.loss_mask(batch))
        return stats, time.perf_counter() - update_start

    def rollout(self) -> Rollout:
        """Sample and score ``B`` groups; with ``drop_zero_std``, replace all-equal groups
        by groups of fresh prompts (at most ``max_resample_rounds`` extra rounds)."""
        c = self.config
        # every rank takes the same prompts from its identically seeded stream and keeps its share
        B, G = c.rollout.prompts_per_step // self.dist.world_size, c.rollout.group_size
        sampling = SamplingConfig(G, c.rollout.max_new_tokens, c.rollout.temperature, c.rollout.top_p)
        kept: list[tuple[RolloutBatch, Problem, list[Sample], RewardBatch, bool]] = []
        rollout_s = reward_s = overlap_s = 0.0
        failures: dict[str, dict[str, int]] = {}
        first_zero_frac = 0.0
        rounds = drawn = 0
        while True:
            need = B if not kept else B - sum(1 for k in kept if not k[4])
            problems = self.dist.share(self.stream.take(need * self.dist.world_size))
            prompts = [build_prompt(self.tokenizer, p.question, c.data.prompt_template, c.data.system_prompt) for p in problems]
            # score completions in a background thread as the engine finishes them
            scoring = None
            if c.rollout.overlap_rewards:
                scoring = OverlappedScoring(self.reward_fn, lambda row, text, n: self._sample(prompts, problems, G, row,
                                                                                             text, n), min_batch=max(G, len(prompts) * G // 4))
            t0 = time.perf_counter()
            batch = self.engine.generate(prompts, sampling, on_finished=None if scoring is None else scoring.submit)
            rollout_s += time.perf_counter() - t0
            drawn += len(batch.texts)
            samples = self._samples(prompts, problems, batch, G)
            if scoring is None:
                scored = self.reward_fn(samples)
            else:
                scored, overlapped = scoring.result(len(samples))
                overlap_s += overlapped
            reward_s += scored.seconds
            for name, counts in scored.failures.items():
                for kind, n in counts.items():
                    failures.setdefault(name, {}).setdefault(kind, 0)
                    failures[name][kind] += n
            groups = []
            for g in range(len(problems)):
                r = scored.rewards[g * G : (g + 1) * G]
                rows = list(range(g * G, (g + 1) * G))
                groups.append((select_rows(batch, rows), problems[g], samples[g * G : (g + 1) * G],
                               _slice_rewards(scored, g * G, (g + 1) * G), max(r) == min(r)))
            if rounds == 0:
                first_zero_frac = sum(g[4] for g in groups) / len(groups)
            if not c.algo.drop_zero_std:
                kept = groups
                break
            informative = [g for g in kept if not g[4]] + [g for g in groups if not g[4]]
            degenerate = [g for g in kept if g[4]] + [g for g in groups if g[4]]
            kept = informative[:B] + degenerate[: max(0, B - len(informative))]
            if len(informative) >= B or rounds >= c.algo.max_resample_rounds:
                break
            rounds += 1
        batch = concat_batches([k[0] for k in kept], self.tokenizer.pad_token_id)
        rewards = _concat_rewards([k[3] for k in kept], failures)
        problems = [k[1] for k in kept]
        baseline = None
        if self.estimator == "remax":
            t0 = time.perf_counter()
            baseline = self.greedy_baseline(problems)
            rollout_s += time.perf_counter() - t0
        return Rollout(batch, problems, [s for k in kept for s in k[2]], rewards,
                       first_zero_frac, rounds, rollout_s, reward_s, drawn, baseline, overlap_s)

    def greedy_baseline(self, problems: list[Problem]) -> list[float]:
        """ReMax's baseline: the reward of each prompt's greedy completion, repeated on the
        G rows of its group."""
        c = self.config
        prompts = [build_prompt(self.tokenizer, p.question, c.data.prompt_template, c.data.system_prompt) for p in problems]
        greedy = self.engine.generate(prompts, SamplingConfig(1, c.rollout.max_new_tokens, 0.0, 1.0))
        scored = self.reward_fn(self._samples(prompts, problems, greedy, 1))
        return [r for r in scored.rewards for _ in range(c.rollout.group_size)]

    def _samples(self, prompts: list[str], problems: list[Problem], batch: RolloutBatch, n: int) -> list[Sample]:
        """The verifiers' view of a rollout of ``n`` completions per prompt."""
        lengths = batch.num_tokens.tolist()
        return [self._sample(prompts, problems, n, i, text, int(lengths[i])) for i, text in enumerate(batch.texts)]

    def _sample(self, prompts: list[str], problems: list[Problem], n: int, row: int, text: str,
                num_tokens: int) -> Sample:
        """Completion ``row`` of a rollout of ``n`` completions per prompt, as the verifiers see it."""
        problem = problems[row // n]
        return Sample(prompt=prompts[row // n], completion=text, answer=problem.answer, row=problem.row,
                      num_tokens=num_tokens, max_tokens=self.config.rollout.max_new_tokens)

    def place_steps(self, batch: RolloutBatch, steps: list[list[Step]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each completion's steps as ``[N, K]`` tensors: their rewards, the index of the
        token holding each step's last character (:func:`step_token_indices`), and a
        mask of which entries are steps (K: the most steps of any completion). Every step
        stays a reward of its own, also when two end on one token."""
        N = batch.completion_mask.shape[0]
        K = max((len(s) for s in steps), default=0)
        rewards = torch.zeros(N, K)
        index = torch.zeros(N, K, dtype=torch.long)
        present = torch.zeros(N, K)
        lengths = batch.completion_mask.sum(-1).tolist()
        for i, sample_steps in enumerate(steps):
            if not sample_steps or lengths[i] == 0:
                continue
            ids = batch.completion_ids[i, : lengths[i]].tolist()
            ends = step_token_indices(self.tokenizer, ids, [s.char_end for s in sample_steps])
            for j, (step, t) in enumerate(zip(sample_steps, ends)):
                rewards[i, j], index[i, j], present[i, j] = step.reward, t, 1.0
        return rewards.to(self.device), index.to(self.device), present.to(self.device)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor | None:
        """``log π_ref`` ``[N, T]`` when the run has a KL term: the frozen reference model's,
        or with LoRA the base model's (the same model with its adapters switched off)."""
        if not self.uses_reference:
            return None
        if self.lora is None:
            return self.logprobs(self.ref_model, batch)
        with self.lora.disable_adapter():
            return self.logprobs(self.model, batch)

    @torch.no_grad()
    def logprobs(self, model: Any, batch: RolloutBatch) -> torch.Tensor:
        """``log π(a_t|s_t)`` ``[N, T]`` of the sampled tokens at the rollout temperature."""
        was_training = model.training
        model.eval()
        out = []
        micro = self.config.algo.micro_batch_size or self.config.algo.minibatch_size or batch.completion_ids.shape[0]
        for rows in chunks(range(batch.completion_ids.shape[0]), micro):
            part = trim_padding(select_rows(batch, rows))
            with self.autocast():
                logits = completion_logits(model, part.prompt_ids, part.prompt_mask, part.completion_ids,
                                           part.completion_mask, self.config.rollout.temperature,
                                           share_prompts=self.config.model.share_prompt_forward)
            logp = losses.token_logprobs(logits, part.completion_ids) * part.completion_mask
            out.append(torch.nn.functional.pad(logp, (0, batch.completion_ids.shape[1] - logp.shape[1])))
        model.train(was_training)
        return torch.cat(out)

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, old_logp: torch.Tensor | None,
               ref_logp: torch.Tensor | None, loss_mask: torch.Tensor) -> dict[str, float]:
        """μ epochs over shuffled minibatches of the GRPO objective
        (:func:`verirl.policy_losses.grpo_loss`); returns the stats of :class:`UpdateStats`.

        Each micro-batch's loss is divided by the counts of its whole minibatch
        (:class:`verirl.losses.LossScale`), so the accumulated gradient is that of one
        backward over the minibatch, however it is split and whichever rows are skipped.
        Over several ranks those counts are the global minibatch's (each rank holds its
        share of it) and the loss is multiplied by the world size, which DDP's and FSDP2's
        averaging of the gradients divides back out.
        """
        c = self.config
        a = c.algo
        N = batch.completion_ids.shape[0]
        minibatch = a.minibatch_size // self.dist.world_size or N
        micro = a.micro_batch_size or minibatch
        acc = UpdateStats()
        grad_norms = []
        # With one minibatch and no term that a zero advantage leaves standing (KL, entropy
        # bonus, a token selection across rows), a completion whose advantages are all
        # zero adds exactly nothing to the loss or its gradient: leave it out of the
        # forward/backward. The minibatch's counts still include it. policy/* stats then
        # cover the completions that were updated.
        carries_signal = (advantages != 0).any(-1).tolist()
        skipped = 0  # optimizer steps left out for a NaN/inf loss or gradient
        skip_zero = (a.skip_zero_advantage and minibatch == N and ref_logp is None and a.ent_coef == 0
                     and a.policy_loss not in BATCH_COUPLED_LOSSES and a.top_entropy_quantile == 1)
        # FSDP2 gathers the parameters at every forward, so every rank must run as many: one
        # forward per micro-batch (no shared-prompt pass, whose forward count depends on the rows)
        share_prompts = c.model.share_prompt_forward and self.dist.parallel != "fsdp2"
        forward = self.train_policy or functools.partial(completion_logits, self.model)
        prompt_lens, completion_lens = batch.prompt_mask.sum(-1).tolist(), batch.completion_mask.sum(-1).tolist()
        for mb in minibatches(N, minibatch, a.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            scale = self.dist.global_scale(losses.LossScale.of(loss_mask[mb], c.rollout.max_new_tokens))
            mb_losses = []
            runs = distributed.micro_batches(self.dist, micro_batch_rows(
                rows_to_run(mb, carries_signal, skip_zero), micro, a.micro_batch_tokens, prompt_lens, completion_lens))
            for k, (rows, weight) in enumerate(runs):
                part = trim_padding(select_rows(batch, rows))
                idx = torch.as_tensor(rows, device=self.device)
                T = part.completion_mask.shape[1]
                m = loss_mask[idx, :T]
                with distributed.sync_on_last(forward, k == len(runs) - 1):
                    loss, stats, filter_stats = self._micro_batch_loss(
                        forward, part, idx, m, advantages, old_logp, ref_logp, scale, share_prompts)
                    (loss * (weight * self.dist.grad_factor)).backward()
                if weight:
                    mb_losses.append(stats["loss"])
                    acc.add({**stats, **filter_stats})
            # the minibatch's loss over all ranks: all skip the step, or none does
            mb_total = self.dist.sum([float(sum(mb_losses))])
            # clip, then the optimizer and the LR schedule, unless the loss or a gradient is NaN/inf
            done = guard_step([self.model.parameters()], c.optim.max_grad_norm,
                              [self.optimizer.step, self.scheduler.step], mb_total)
            if done.taken:
                grad_norms.append(done.grad_norms[0])
            skipped += not done.taken
            acc.end_minibatch()
        out = {f"policy/{k}": v for k, v in acc.means().items()}
        if grad_norms:
            out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["optim/skipped_updates"] = skipped
        out.setdefault("policy/kl", 0.0)
        if a.mask_truncated:
            out["filter/truncated_frac"] = 1.0 - float(batch.finished.float().mean())
        return out

    def _micro_batch_loss(self, forward: Any, part: RolloutBatch, idx: torch.Tensor, m: torch.Tensor,
                          advantages: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
                          scale: losses.LossScale, share_prompts: bool) -> tuple[torch.Tensor, dict, dict]:
        """One micro-batch's GRPO loss (over the minibatch's ``scale``), its stats and the
        token filters' stats."""
        c = self.config
        a = c.algo
        T = m.shape[1]
        with self.autocast():
            logits = forward(part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask,
                             c.rollout.temperature, share_prompts=share_prompts)
        logp = losses.token_logprobs(logits, part.completion_ids)
        old = logp.detach() if old_logp is None else old_logp[idx, :T]
        adv = advantages[idx, :T]
        entropy = _entropy(logits, with_grad=a.ent_coef > 0)
        weights, filter_stats = token_filter_weights(logp, old, adv, m, entropy, a.off_policy_mask_delta,
                                                     a.top_entropy_quantile, part.logprobs, a.rollout_is,
                                                     a.rollout_is_cap)
        loss, stats = grpo_loss(
            logp, old, None if ref_logp is None else ref_logp[idx, :T], adv, m,
            policy_loss=a.policy_loss, params=self.loss_params,
            beta=a.beta if ref_logp is not None else 0.0, kl_estimator=a.kl_estimator,
            loss_agg=a.loss_agg, scale=scale, token_weights=weights,
            entropy=entropy if a.ent_coef > 0 else None, ent_coef=a.ent_coef,
        )
        with torch.no_grad():
            cm = part.completion_mask
            stats["entropy"] = (entropy.detach() * cm).sum() / cm.sum().clamp(min=1)
        stats["loss"] = loss.detach()
        return loss, stats, filter_stats

    # ------------------------------------------------------------------ eval, checkpoints

    def evaluate(self) -> dict[str, float]:
        c = self.config
        prompts = [build_prompt(self.tokenizer, p.question, c.data.prompt_template, c.data.system_prompt) for p in self.eval_problems]
        t0 = time.perf_counter()
        with self.autocast():
            result = evaluate(
                self.engine, self.eval_problems, prompts, lambda s: self.eval_reward_fn(s).rewards,
                temperature=0.0 if c.train.eval_greedy else c.rollout.temperature, top_p=c.rollout.top_p,
                max_new_tokens=c.rollout.max_new_tokens, batch_size=c.train.eval_batch_size,
            )
        return {"eval/accuracy": result.metrics["accuracy"], "perf/eval_s": time.perf_counter() - t0}

    def save(self) -> Path:
        """Write a checkpoint (every rank calls this; rank 0 writes). It is the
        single-process format whatever the world size: the whole model and the plain
        optimizer state (FSDP2's gathered by torch.distributed.checkpoint's state-dict
        API), so it resumes on any number of processes."""
        if self.rollout_model is not None:
            models = {"": self.rollout_model}  # FSDP2: the whole weights, refreshed after every update
            optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        else:
            models = {"": self.model} if self.lora is None else {ADAPTER_DIR: self.lora}
            optimizer_state = self.optimizer.state_dict()  # DDP: the same on every rank
        if self.ref_model is not None and self.config.algo.ref_reset_every:
            models["ref"] = self.ref_model
        rngs = self.dist.gather(rng_state())
        state = {
            "step": self.step,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs[0],
            "rng_by_rank": rngs,
            "data": self.stream.state(),
            "bad_updates": self.bad_updates,
            "config": self.config.to_dict(),
        }
        if self.ppo is not None:
            models["critic"] = self.ppo.saved_critic()
            state["ppo"] = self.ppo.state_dict()
        path = self.out / "checkpoints" / f"step_{self.step:06d}"
        if self.dist.is_main:
            path = save_checkpoint(self.out, self.step, models, self.tokenizer, state,
                                   self.config.train.keep_checkpoints)
        self.dist.barrier()
        return path

    def _restore(self, checkpoint: Path) -> None:
        state = load_state(checkpoint)
        self.step = int(state["step"])
        if self.rollout_model is not None:
            distributed.load_full_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state(state["data"])
        self.bad_updates = int(state.get("bad_updates", 0))
        if self.ppo is not None:
            if "ppo" not in state:
                raise ConfigError(f"{checkpoint} holds no PPO state (critic optimizer, KL controller): "
                                  "it was written by a GRPO run; resume it with algo.name=grpo")
            self.ppo.load_state_dict(state["ppo"])
        # each rank its own sampling RNG: as saved when the world size is the same, else
        # rank 0 continues rank 0's stream and the others start fresh ones
        by_rank = state.get("rng_by_rank") or [state["rng"]]
        if self.dist.rank < len(by_rank):
            set_rng_state(by_rank[self.dist.rank])
        else:
            seed_everything(self.config.train.seed + self.dist.rank + 7919 * self.step)
        log.info("resumed from %s (step %d)", checkpoint, self.step)

    def _show_samples(self, rollout: Rollout) -> None:
        """The on-screen table: the first completion of each of the first
        ``train.show_samples`` groups, printed above the progress bar."""
        from tqdm import tqdm

        G = self.config.rollout.group_size
        rows = [{"question": rollout.problems[i // G].question, "completion": s.completion, "answer": s.answer,
                 "reward": rollout.rewards.rewards[i], "scores": rollout.rewards.scores[i]}
                for i, s in enumerate(rollout.samples) if i % G == 0][: self.config.train.show_samples]
        tqdm.write(sample_table(self.step + 1, rows, len(rollout.samples)), file=sys.stderr)

    def _log_samples(self, rollout: Rollout) -> None:
        k = self.config.train.log_samples
        if k <= 0:
            return
        with self.samples_path.open("a") as fh:
            for i in range(min(k, len(rollout.samples))):
                s = rollout.samples[i]
                fh.write(json.dumps({
                    "step": self.step + 1, "prompt": s.prompt, "completion": s.completion, "answer": s.answer,
                    "reward": rollout.rewards.rewards[i],
                    "scores": {n: _jsonable_score(v) for n, v in rollout.rewards.scores[i].items()},
                }) + "\n")


# ---------------------------------------------------------------------- helpers


def _entropy(logits: torch.Tensor, with_grad: bool) -> torch.Tensor:
    """Per-token entropy of π_θ ``[n, T]``; with its gradient only when a loss term needs it."""
    if with_grad:
        return losses.entropy_from_logits(logits)
    with torch.no_grad():
        return losses.entropy_from_logits(logits.detach())


@torch.no_grad()
def sync_reference(ref_model: Any, model: Any, alpha: float) -> None:
    """Reference sync: ``π_ref ← α·π_θ + (1 − α)·π_ref`` on every weight (TR-DPO's mix-up,
    arXiv 2404.09656); ``α = 1`` is iterative GRPO's hard reset ``π_ref ← π_θ``."""
    ref_params = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        target = ref_params[name]
        if alpha == 1.0:
            target.copy_(p)
        else:
            target.mul_(1.0 - alpha).add_(p.to(target.dtype), alpha=alpha)


def _to_device(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return RolloutBatch(move(batch.prompt_ids), move(batch.prompt_mask), move(batch.completion_ids),
                        move(batch.completion_mask), move(batch.logprobs), batch.texts, move(batch.finished))


def _slice_rewards(r: RewardBatch, start: int, end: int) -> RewardBatch:
    return RewardBatch(r.rewards[start:end], r.scores[start:end], r.steps[start:end], {}, 0.0)


def _concat_rewards(parts: list[RewardBatch], failures: dict[str, dict[str, int]]) -> RewardBatch:
    return RewardBatch([x for p in parts for x in p.rewards], [x for p in parts for x in p.scores],
                       [x for p in parts for x in p.steps], failures, sum(p.seconds for p in parts))


def _score_value(score: Any) -> float | None:
    if score is None:
        return None
    if isinstance(score, list):
        return sum(s.reward for s in score) / len(score) if score else 0.0
    return float(score)


def _per_verifier_means(scores: list[dict[str, Any]]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for row in scores:
        for name, score in row.items():
            v = _score_value(score)
            if v is not None:
                values.setdefault(name, []).append(v)
    return {n: sum(v) / len(v) for n, v in values.items() if v}


def _jsonable_score(score: Any) -> Any:
    if isinstance(score, list):
        return [list(s) for s in score]
    return score
