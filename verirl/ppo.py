"""PPO with a critic (``algo.name: ppo``): the pieces of one PPO step, as ALGORITHMS.md reads.

The trainer does the rollout and scoring exactly as for GRPO, then hands the batch to
:meth:`PPO.step`:

1. one no-grad pass over the rollout: ``log π_old(a_t|s_t)`` and ``V_old(s_t)`` (and the
   trainer passes ``log π_ref`` when ``β_r > 0``);
2. per-token rewards ``r_t = −β_r (log π_old − log π_ref) + R·[t = last]`` (process
   rewards on their steps' last tokens), :func:`verirl.advantages.per_token_rewards_for_ppo`;
3. GAE(γ, λ) once, from the stored ``V_old``, then frozen; returns ``G_t = A_t + V_old``;
   advantages whitened over the batch's valid tokens (:func:`ppo_advantages`);
4. K epochs × shuffled minibatches of ``L = L_policy + c1·L_V − c2·H`` (:func:`ppo_loss`),
   AdamW on the policy and, with its own learning rate, on the critic;
5. the KL controller sees this rollout's KL and sets ``β_r`` for the next one.

After the epochs the next rollout samples from the updated policy and reads values from
the updated critic: that is ``π_old ← π_θ``, ``V_old ← V_φ``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from verirl import advantages as adv_fns
from verirl import distributed, losses
from verirl.batching import chunks, micro_batch_rows, minibatches
from verirl.critic import Critic, SharedValueHead, build_critic
from verirl.guard import guard_step
from verirl.losses import LossScale
from verirl.metrics import UpdateStats
from verirl.models import DTYPES, _takes_logits_to_keep, completion_logits, sequence_inputs
from verirl.optim import build_optimizer
from verirl.policy_losses import PolicyLossParams, get_policy_loss, token_filter_weights
from verirl.rollout.base import RolloutBatch, select_rows, trim_padding

# --------------------------------------------------------------------------- pure math


@torch.no_grad()
def ppo_advantages(
    scores: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    old_values: Tensor,
    mask: Tensor,
    beta_r: float,
    gamma: float = 1.0,
    lam: float = 0.95,
    all_sum: adv_fns.AllSum = adv_fns.local_sum,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token rewards, whitened GAE advantages and λ-returns of one rollout, in order:
    the KL-penalised rewards ``r_t`` (:func:`verirl.advantages.per_token_rewards_for_ppo`),
    GAE from the stored ``V_old`` giving ``A_t`` and ``G_t`` (:func:`verirl.advantages.gae`),
    and ``A_t`` whitened over the batch's valid tokens (:func:`verirl.advantages.masked_whiten`,
    eps 1e-8). Each formula is in its function's docstring.

    Args:
        scores: ``[N]`` outcome rewards or ``[N, T]`` placed step rewards.
        old_logp, ref_logp, old_values, mask: ``[N, T]``; ``old_logp`` and ``ref_logp`` may
            be None when ``beta_r == 0`` (the rewards then carry no KL term).

    Returns:
        ``(token_rewards, advantages, returns)``, each ``[N, T]``, detached, 0 on padding;
        ``advantages`` are whitened, ``returns`` are the raw λ-returns (the critic's target).
        ``all_sum`` (several processes: an all-reduce) makes the whitening statistics
        those of every process's valid tokens.
    """
    rewards = adv_fns.per_token_rewards_for_ppo(scores, old_logp, ref_logp if beta_r > 0 else None, mask, beta_r)
    raw_adv, returns = adv_fns.gae(rewards, old_values, mask, gamma, lam)
    return rewards, adv_fns.masked_whiten(raw_adv, mask, all_sum=all_sum), returns


def ppo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    mask: Tensor,
    *,
    policy_loss: str = "vanilla",
    params: PolicyLossParams = PolicyLossParams(),
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    vf_clip: float | None = 0.2,
    loss_agg: str = "seq-mean-token-mean",
    scale: LossScale = LossScale(),
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The PPO objective: ``L = L_policy + c1 · L_V − c2 · H``.

    - ``L_policy``: the policy loss ``policy_loss`` of
      :data:`verirl.policy_losses.POLICY_LOSSES` per token (default the clipped surrogate),
      times ``token_weights`` (the filters) when given;
    - ``L_V``: the clipped value loss with ``ε_v = vf_clip``, or the plain MSE when
      ``vf_clip is None`` (:func:`verirl.losses.clipped_value_loss`);
    - ``H``: the per-token entropy ``H[π_θ](s_t)`` (:func:`verirl.losses.entropy_from_logits`;
      pass it with gradient when ``c2 > 0``);

    each term aggregated over tokens with ``loss_agg`` over the denominators of ``scale``
    (:func:`verirl.losses.aggregate_loss`), ``c1 = vf_coef``, ``c2 = ent_coef``. All inputs
    are ``[N, T]``; ``old_logp``, ``advantages``, ``old_values`` and ``returns`` are
    constants of the update.

    Returns ``(loss, stats)``: the policy-loss stats (``clip_frac``, ``ratio_mean``, ...),
    ``pg_loss``, ``value_loss``, ``vf_clip_frac``, ``entropy`` (mean over valid tokens)
    and, with ``c2 > 0``, ``entropy_bonus`` (the aggregated ``H``); detached 0-d tensors.
    """
    if vf_coef < 0 or ent_coef < 0:
        raise ValueError(f"vf_coef and ent_coef must be >= 0, got {vf_coef!r}, {ent_coef!r}")
    if vf_clip is not None and vf_clip < 0:
        raise ValueError(f"vf_clip must be >= 0 or None (plain MSE), got {vf_clip!r}")
    aggregate = losses.get_loss_aggregation(loss_agg)
    pg_tokens, stats = get_policy_loss(policy_loss)(logp, old_logp, advantages, mask, params)
    if token_weights is not None:
        pg_tokens = pg_tokens * token_weights.to(pg_tokens.dtype)
    vf_tokens, vf_stats = losses.clipped_value_loss(
        values, old_values, returns, mask, 0.0 if vf_clip is None else vf_clip, clip=vf_clip is not None
    )
    valid = mask.bool()
    ent_tokens = torch.where(valid, entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device))
    pg_loss = aggregate(pg_tokens, mask, scale)
    value_loss = aggregate(vf_tokens, mask, scale)
    loss = pg_loss + vf_coef * value_loss
    if ent_coef > 0:
        bonus = aggregate(ent_tokens, mask, scale)
        loss = loss - ent_coef * bonus
        stats["entropy_bonus"] = bonus.detach()
    stats.update(pg_loss=pg_loss.detach(), value_loss=value_loss.detach(), **vf_stats,
                 entropy=(ent_tokens.detach().sum() / valid.sum().clamp(min=1)))
    return loss, stats


# --------------------------------------------------------------------------- KL control


class KLController(Protocol):
    """Holds ``β_r``, the KL coefficient of the per-token reward, and adapts it."""

    value: float

    def update(self, kl: float, n_samples: int) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """``β_r`` stays at its configured value."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, kl: float, n_samples: int) -> None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """The proportional controller of Ziegler et al. 2019 (arXiv 1909.08593, §2.2).

    After a rollout of ``n`` completions whose KL is ``KL`` (per completion: the sum over
    its tokens of ``log π_old − log π_ref``, averaged over the batch):
    ``e = clip(KL / KL_target − 1, −0.2, 0.2)``, ``β_r ← β_r · (1 + e · n / horizon)``.
    KL above target raises ``β_r`` (a stronger pull towards π_ref), below lowers it; the
    clip bounds the change per rollout.
    """

    def __init__(self, init: float, target: float, horizon: int):
        if init <= 0 or target <= 0 or horizon < 1:
            raise ValueError(
                f"adaptive KL control needs beta_r > 0, target_kl > 0 and kl_horizon >= 1; "
                f"got beta_r={init!r}, target_kl={target!r}, kl_horizon={horizon!r}"
            )
        self.value = float(init)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, kl: float, n_samples: int) -> None:
        if not math.isfinite(kl):
            raise ValueError(f"the rollout's KL to the reference is {kl}; the KL controller needs a finite value")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def make_kl_controller(beta_r: float, target_kl: float | None, horizon: int) -> KLController:
    """Fixed ``β_r`` when ``target_kl`` is None, else the adaptive controller starting at ``β_r``."""
    if target_kl is None:
        return FixedKLController(beta_r)
    return AdaptiveKLController(beta_r, target_kl, horizon)


# --------------------------------------------------------------------------- model passes


def policy_forward(policy: Any, critic: Critic, part: RolloutBatch, temperature: float,
                   share_prompts: bool = False) -> tuple[Tensor, Tensor]:
    """Logits ``[n, T, V]`` (divided by ``temperature``) predicting each completion token,
    and the values ``V(s_t)`` ``[n, T]`` of the states they are predicted from.

    Both are read at input position ``P − 1 + t`` for completion token t (the last token
    of ``s_t = prompt + o_<t``). A separate critic runs its own backbone on the same
    inputs as :func:`verirl.models.completion_logits`; a shared head reads the policy's
    last hidden state from the policy's own forward, so one pass gives both.
    ``share_prompts`` (separate critic only): both run one pass per distinct prompt.
    """
    if not isinstance(critic, SharedValueHead):
        logits = completion_logits(policy, part.prompt_ids, part.prompt_mask, part.completion_ids,
                                   part.completion_mask, temperature, share_prompts=share_prompts)
        return logits, critic.completion_values(part.prompt_ids, part.prompt_mask, part.completion_ids,
                                                part.completion_mask, share_prompts=share_prompts)
    inputs = sequence_inputs(part.prompt_ids, part.prompt_mask, part.completion_ids, part.completion_mask)
    P, T = part.prompt_ids.shape[1], part.completion_ids.shape[1]
    if _takes_logits_to_keep(policy):  # the LM head on the completion positions only
        out = policy(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=T + 1)
        logits = out.logits[:, :T]
    else:
        out = policy(**inputs, use_cache=False, output_hidden_states=True)
        logits = out.logits[:, P - 1 : P + T - 1]
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    # hidden_states[-1] is the trunk's final (normed) state, the LM head's input
    values = critic(out.hidden_states[-1][:, P - 1 : P + T - 1])
    return logits, values


def _policy_critic_forward(policy: Any, critic: Critic, prompt_ids: Tensor, prompt_mask: Tensor,
                           completion_ids: Tensor, completion_mask: Tensor, temperature: float,
                           share_prompts: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`policy_forward` on plain tensors: the forward that DDP wraps, policy and
    critic in one module, so both are reduced in one backward."""
    part = RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, None, [], None)
    return policy_forward(policy, critic, part, temperature, share_prompts)


# --------------------------------------------------------------------------- the PPO step


class PPO:
    """The critic, its optimizer and the KL controller, and one PPO step on a rollout.

    The policy, its optimizer and scheduler belong to the trainer and are passed in;
    :meth:`step` updates them in place. ``config`` is the run's :class:`verirl.config.Config`.
    """

    def __init__(self, config: Any, policy: Any, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, checkpoint: Path | None = None,
                 dist: distributed.Dist | None = None, autocast: Any = contextlib.nullcontext):
        self.config = config
        self.dist = dist or distributed.Dist()
        self.autocast = autocast  # the forwards' mixed-precision context (model.fp32_master_weights)
        a, m = config.algo, config.model
        self.policy = policy
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.critic = build_critic(
            a.critic, policy, a.critic_path or m.name_or_path, checkpoint,
            dtype=m.weights_dtype, trust_remote_code=m.trust_remote_code,
            gradient_checkpointing=m.gradient_checkpointing,
        )
        # FSDP2: the critic sharded like the policy; a whole copy is gathered into for checkpoints
        self.critic_copy = None
        if self.dist.parallel == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            self.critic_copy = copy.deepcopy(self.critic).requires_grad_(False)
            # FSDP2 acts in the forward (and backward) hooks of the modules it wraps, so it wraps
            # the ones that are called: a separate critic's backbone (its layers, then its root)
            # and head; a shared head, which is called itself
            if isinstance(self.critic, SharedValueHead):
                fully_shard(self.critic)
            else:
                distributed.shard_fsdp2(self.critic.backbone, DTYPES.get(m.autocast_dtype))
                fully_shard(self.critic.head)
        # The critic's own optimizer: in shared mode it holds only the head (the trunk is
        # the policy's, trained by the policy optimizer with the value loss's gradient too).
        self.critic_optimizer, self.critic_scheduler = build_optimizer(self.critic.parameters(), a.critic_lr, config)
        self.loss_params = PolicyLossParams.from_fields(a)
        self.kl_ctl = make_kl_controller(a.beta_r, a.target_kl, a.kl_horizon)
        # the update's forward: policy and critic together, in DDP over several ranks
        self.forward: Any = functools.partial(_policy_critic_forward, policy, self.critic)
        if self.dist.parallel == "ddp":
            device = next(policy.parameters()).device
            self.forward = distributed.wrap_ddp(distributed.CallModule(_policy_critic_forward, policy, self.critic),
                                                device)

    @property
    def share_prompts(self) -> bool:
        """One forward per distinct prompt, unless FSDP2 needs every rank to run as many forwards."""
        return self.config.model.share_prompt_forward and self.dist.parallel != "fsdp2"

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything of PPO's a checkpoint needs besides the critic's weights (under FSDP2
        the critic optimizer's whole state, gathered: every rank calls this)."""
        if self.critic_copy is not None:
            optimizer_state = distributed.full_optimizer_state(self.critic, self.critic_optimizer)
        else:
            optimizer_state = self.critic_optimizer.state_dict()
        return {
            "critic_optimizer": optimizer_state,
            "critic_scheduler": self.critic_scheduler.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(),
        }

    def saved_critic(self) -> Any:
        """The critic to write into a checkpoint: itself, or under FSDP2 its whole copy with
        the gathered weights (a collective)."""
        if self.critic_copy is None:
            return self.critic
        self.critic_copy.load_state_dict(distributed.full_state_dict(self.critic))
        return self.critic_copy

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.critic_copy is not None:
            distributed.load_full_optimizer_state(self.critic, self.critic_optimizer, state["critic_optimizer"])
        else:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    # ---------------------------------------------------------------- rollout side

    @torch.no_grad()
    def rollout_pass(self, batch: RolloutBatch, with_logp: bool = True) -> tuple[Tensor | None, Tensor]:
        """``log π_old(a_t|s_t)`` and ``V_old(s_t)``, both ``[N, T]`` float32, 0 on padding:
        the policy and critic as they are before this step's update, without gradient.
        ``with_logp=False`` skips a separate critic's policy forward and returns ``None``
        for the log-probs (a shared head gets them from its one forward anyway)."""
        a = self.config.algo
        N = batch.completion_ids.shape[0]
        micro = a.micro_batch_size or a.minibatch_size or N
        was = (self.policy.training, self.critic.training)
        self.policy.eval()
        self.critic.eval()
        logps, values = [], []
        width = batch.completion_ids.shape[1]
        for rows in chunks(range(N), micro):
            # a micro-batch of short sequences pays only for its own columns; pad back to [n, T]
            part = trim_padding(select_rows(batch, rows))
            m = part.completion_mask
            pad = (0, width - m.shape[1])
            if with_logp or isinstance(self.critic, SharedValueHead):
                with self.autocast():
                    logits, v = policy_forward(self.policy, self.critic, part, self.config.rollout.temperature,
                                               share_prompts=self.share_prompts)
                logps.append(torch.nn.functional.pad(losses.token_logprobs(logits, part.completion_ids) * m, pad))
            else:
                with self.autocast():
                    v = self.critic.completion_values(part.prompt_ids, part.prompt_mask, part.completion_ids, m,
                                                      share_prompts=self.share_prompts)
            values.append(torch.nn.functional.pad(v.float() * m, pad))
        self.policy.train(was[0])
        self.critic.train(was[1])
        return (torch.cat(logps) if logps else None), torch.cat(values)

    # ---------------------------------------------------------------- one step

    def step(self, batch: RolloutBatch, scores: Tensor, ref_logp: Tensor | None,
             loss_mask: Tensor | None = None) -> dict[str, float]:
        """One PPO iteration on a scored rollout; returns its metrics.

        Args:
            batch: the rollout (on the training device).
            scores: ``[N]`` outcome rewards, or ``[N, T]`` step rewards placed on each
                step's last token (process supervision).
            ref_logp: ``log π_ref`` ``[N, T]`` of the sampled tokens; required when
                ``β_r > 0``.
            loss_mask: the tokens the losses see (default: the completion mask).
        """
        c = self.config
        a = c.algo
        mask = batch.completion_mask
        beta_r = self.kl_ctl.value
        if beta_r > 0 and ref_logp is None:
            raise ValueError("PPO with beta_r > 0 needs log π_ref: the trainer must load the reference model")

        # 1-3. frozen rollout quantities: log π_old, V_old, r_t, A_t (whitened), G_t.
        # With one update per rollout and no KL term π_θ = π_old in the update, so (as in
        # GRPO) log π_old is the update's own log π_θ detached and needs no forward here.
        N = mask.shape[0]
        single_update = a.ppo_epochs == 1 and (a.minibatch_size // self.dist.world_size or N) == N
        old_logp, old_values = self.rollout_pass(batch, with_logp=ref_logp is not None or not single_update)
        token_rewards, advantages, returns = ppo_advantages(
            scores, old_logp, ref_logp, old_values, mask, beta_r, a.gamma, a.lam, all_sum=self.dist.all_sum
        )
        raw_adv = returns - old_values  # A_t before whitening, for the logs
        with torch.no_grad():
            valid = mask.bool()
            rollout_stats: dict[str, float] = {
                "critic/explained_var": float(losses.explained_variance(old_values, returns, mask)),
                "critic/value_mean": float(adv_fns.masked_mean(old_values, valid)),
                "critic/return_mean": float(adv_fns.masked_mean(returns, valid)),
                "ppo/beta_r": beta_r,
                "ppo/advantage_mean": float(adv_fns.masked_mean(raw_adv, valid)),
                "ppo/advantage_std": float(adv_fns.masked_var(raw_adv, valid).sqrt()),
                # Σ_t r_t per completion (outcome reward minus the KL penalty), batch mean
                "ppo/token_reward_sum": float(token_rewards.sum(-1).mean()),
            }
            kl_seq = 0.0
            if ref_logp is not None:
                log_ratio = torch.where(valid, old_logp - ref_logp, torch.zeros((), device=mask.device))
                kl_seq = float(log_ratio.sum(-1).mean())
                per_token_kl = losses.get_kl_estimator(a.kl_estimator)(old_logp, ref_logp, old_logp)
                rollout_stats["policy/kl"] = float(adv_fns.masked_mean(per_token_kl, valid))
            if self.dist.enabled:  # β_r must move the same way on every rank: the global mean
                kl_seq = self.dist.sum([kl_seq])[0] / self.dist.world_size
            rollout_stats["ppo/kl_seq"] = kl_seq

        # 4. K epochs × shuffled minibatches
        stats = self.update(batch, old_logp, old_values, advantages, returns, loss_mask)
        stats.update(rollout_stats)
        stats.setdefault("policy/kl", 0.0)

        # 5. β_r for the next rollout
        if ref_logp is not None:
            self.kl_ctl.update(kl_seq, mask.shape[0])
        return stats

    def update(self, batch: RolloutBatch, old_logp: Tensor | None, old_values: Tensor, advantages: Tensor,
               returns: Tensor, loss_mask: Tensor | None = None) -> dict[str, float]:
        """K = ``algo.ppo_epochs`` passes of shuffled minibatches of :func:`ppo_loss`, AdamW
        on the policy and the critic; stats of :class:`verirl.metrics.UpdateStats`.
        ``old_logp=None`` (one update per rollout only) uses ``log π_θ`` detached: ρ = 1.
        ``loss_mask`` (default: the completion mask) is the tokens the loss sees. Each
        micro-batch's loss is divided by its whole minibatch's counts, so the accumulated
        gradient does not depend on the micro-batch size."""
        c = self.config
        a, o = c.algo, c.optim
        N = batch.completion_ids.shape[0]
        minibatch = a.minibatch_size // self.dist.world_size or N
        micro = a.micro_batch_size or minibatch
        loss_mask = batch.completion_mask if loss_mask is None else loss_mask
        acc = UpdateStats()
        grad_norms: list[float] = []
        critic_grad_norms: list[float] = []
        skipped = 0  # optimizer steps left out for a NaN/inf loss or gradient
        prompt_lens, completion_lens = batch.prompt_mask.sum(-1).tolist(), batch.completion_mask.sum(-1).tolist()
        for mb in minibatches(N, minibatch, a.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            self.critic_optimizer.zero_grad(set_to_none=True)
            # the counts of the global minibatch (every rank holds its share of it)
            scale = self.dist.global_scale(LossScale.of(loss_mask[mb], c.rollout.max_new_tokens))
            mb_losses = []
            runs = distributed.micro_batches(self.dist, micro_batch_rows(mb, micro, a.micro_batch_tokens, prompt_lens,
                                                                         completion_lens))
            for k, (rows, weight) in enumerate(runs):
                part = trim_padding(select_rows(batch, rows))
                idx = torch.as_tensor(rows, device=old_values.device)
                T = part.completion_mask.shape[1]  # trimmed: completion column t keeps its index t
                m = loss_mask[idx, :T]
                with distributed.sync_on_last(self.forward, k == len(runs) - 1):
                    loss, stats, filter_stats = self._micro_batch_loss(part, idx, m, old_logp, old_values,
                                                                       advantages, returns, scale)
                    # DDP averages the ranks' gradients: × world size gives the global batch's
                    (loss * (weight * self.dist.grad_factor)).backward()
                if weight:
                    mb_losses.append(stats["loss"])
                    acc.add({**stats, **filter_stats})
            mb_total = self.dist.sum([float(sum(mb_losses))])  # all ranks skip a step, or none
            # listed after the backward: FSDP2 swaps its root modules' parameters between their
            # unsharded forms (after a forward) and the sharded ones that hold the gradients
            policy_params = [p for p in self.policy.parameters() if p.requires_grad]
            critic_params = [p for p in self.critic.parameters() if p.requires_grad]
            # clip each, then both optimizers and schedules, unless the loss or a gradient is NaN/inf
            done = guard_step([policy_params, critic_params], o.max_grad_norm,
                              [self.optimizer.step, self.scheduler.step,
                               self.critic_optimizer.step, self.critic_scheduler.step], mb_total)
            if done.taken:
                grad_norms.append(done.grad_norms[0])
                critic_grad_norms.append(done.grad_norms[1])
            skipped += not done.taken
            acc.end_minibatch()
        critic_keys = {"value_loss", "vf_clip_frac"}
        out = {(f"critic/{k}" if k in critic_keys else f"policy/{k}"): v for k, v in acc.means().items()}
        if grad_norms:
            out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms)
            out["critic/grad_norm"] = sum(critic_grad_norms) / len(critic_grad_norms)
        out["critic/lr"] = self.critic_scheduler.get_last_lr()[0]
        out["optim/skipped_updates"] = skipped
        return out

    def _micro_batch_loss(self, part: RolloutBatch, idx: Tensor, m: Tensor, old_logp: Tensor | None,
                          old_values: Tensor, advantages: Tensor, returns: Tensor,
                          scale: LossScale) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """One micro-batch's PPO loss over the minibatch's ``scale``, its stats and the
        token filters' stats."""
        c = self.config
        a = c.algo
        T = m.shape[1]
        with self.autocast():
            logits, values = self.forward(part.prompt_ids, part.prompt_mask, part.completion_ids,
                                          part.completion_mask, c.rollout.temperature,
                                          share_prompts=self.share_prompts)
        logp = losses.token_logprobs(logits, part.completion_ids)
        # The entropy bonus needs the entropy's gradient only when c2 > 0.
        if a.ent_coef > 0:
            entropy = losses.entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = losses.entropy_from_logits(logits.detach())
        old = logp.detach() if old_logp is None else old_logp[idx, :T]
        adv = advantages[idx, :T]
        weights, filter_stats = token_filter_weights(logp, old, adv, m, entropy, a.off_policy_mask_delta,
                                                     a.top_entropy_quantile, part.logprobs, a.rollout_is,
                                                     a.rollout_is_cap)
        loss, stats = ppo_loss(
            logp, old, adv, values, old_values[idx, :T], returns[idx, :T], entropy, m,
            policy_loss=a.policy_loss, params=self.loss_params, vf_coef=a.vf_coef, ent_coef=a.ent_coef,
            vf_clip=a.vf_clip, loss_agg=a.loss_agg, scale=scale, token_weights=weights,
        )
        stats["loss"] = loss.detach()
        return loss, stats, filter_stats
