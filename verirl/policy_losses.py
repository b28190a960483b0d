"""Policy losses: the clipped surrogate and its relatives, token filters, and the GRPO objective.

Pure tensor math: tensors in, tensors out; no model, no I/O, no config object. The
conventions of :mod:`verirl.losses` hold: right-padded ``[N, T]`` rows with a ``mask``,
per-token losses exactly 0 on padding, statistics as detached 0-d tensors.

Every policy loss is registered by name in :data:`POLICY_LOSSES` (``algo.policy_loss``)
and has one signature::

    loss(logp, old_logp, advantages, mask, params) -> (per_token_loss [N, T], stats)

with ``ρ_{i,t} = exp(log π_θ − log π_old)`` and ``Â_{i,t}`` the advantages (constants of
the update; ``old_logp`` and ``advantages`` are detached inside). Sequence-level losses
(GMPO) put their one value per completion on each of its tokens, so that the
``seq-mean-token-mean`` aggregation gives their mean over completions. Every loss
reports ``ratio_mean``, ``ratio_max``, ``approx_kl`` (k3 estimate of KL(π_old ‖ π_θ),
``mean(ρ − 1 − log ρ)``) and ``clip_frac`` (the fraction of valid tokens whose gradient
the loss cuts or bounds; 0 for losses that never do).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from verirl.advantages import check_same_2d_shape
from verirl.losses import LossScale, _masked_mean, _zero_padding, get_kl_estimator, get_loss_aggregation
from verirl.registry import lookup, registrar


@dataclass(frozen=True)
class PolicyLossParams:
    """The hyperparameters of the policy losses (each loss reads the ones it names)."""

    eps_low: float = 0.2  # ratio clip, lower side: clip(ρ, 1−ε_low, ·)
    eps_high: float = 0.2  # ratio clip, upper side (ε_high > ε_low: DAPO's clip-higher)
    dual_clip_c: float = 3.0  # dual-clip: a negative-advantage token's loss is at most −c·Â (c > 1)
    sapo_tau_pos: float = 1.0  # SAPO gate temperature for Â > 0
    sapo_tau_neg: float = 1.05  # SAPO gate temperature for Â ≤ 0
    cov_frac: float = 2e-4  # Clip-Cov / KL-Cov: fraction of the valid tokens selected by covariance
    clip_cov_lb: float = 1.0  # Clip-Cov: a selectable token's covariance is in (lb, ub)
    clip_cov_ub: float = 5.0
    kl_cov_coef: float = 1.0  # KL-Cov: coefficient of |log ρ| on the selected tokens
    vespo_k_pos: float = 2.0  # VESPO: φ(w) = exp(λ + k log w − λ w), k and λ for Â ≥ 0 ...
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0  # ... and for Â < 0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_low <= 1.0 or self.eps_high < 0.0:
            raise ValueError(
                f"need 0 <= eps_low <= 1 and eps_high >= 0, got eps_low={self.eps_low!r}, eps_high={self.eps_high!r}"
            )
        if self.dual_clip_c <= 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (a bound above the clip), got {self.dual_clip_c!r}")
        if self.sapo_tau_pos <= 0 or self.sapo_tau_neg <= 0:
            raise ValueError(f"SAPO temperatures must be > 0, got {self.sapo_tau_pos!r}, {self.sapo_tau_neg!r}")
        if not 0.0 < self.cov_frac <= 1.0:
            raise ValueError(f"cov_frac must be in (0, 1], got {self.cov_frac!r}")

    @classmethod
    def from_fields(cls, source: object) -> "PolicyLossParams":
        """The params read by name from any object with these attributes (``algo`` config)."""
        return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})


PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, PolicyLossParams], "tuple[Tensor, dict[str, Tensor]]"]
POLICY_LOSSES: dict[str, PolicyLoss] = {}
register_policy_loss = registrar(POLICY_LOSSES, "policy loss")


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name``; unknown names raise ``ValueError``."""
    return lookup(POLICY_LOSSES, "policy loss", name)


# --------------------------------------------------------------------------- shared pieces


def _inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(valid, log ρ, Â, log π_θ)``, each zeroed on padding so that padding garbage (even
    ``inf``) reaches neither a loss nor a gradient; ``old_logp`` and ``Â`` detached."""
    check_same_2d_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    valid = mask.bool()
    lp = _zero_padding(logp, valid)
    log_ratio = _zero_padding(logp - old_logp.detach(), valid)
    adv = _zero_padding(advantages.detach().to(log_ratio.dtype), valid)
    return valid, log_ratio, adv, lp


@torch.no_grad()
def _ratio_stats(log_ratio: Tensor, valid: Tensor, cut: Tensor) -> dict[str, Tensor]:
    ratio = torch.exp(log_ratio)
    return {
        "clip_frac": _masked_mean(cut.to(ratio.dtype), valid),
        "ratio_mean": _masked_mean(ratio, valid),
        # ρ > 0, so zeros on padding never win the max; an empty batch gives 0.
        "ratio_max": _zero_padding(ratio, valid).max() if ratio.numel() else ratio.new_zeros(()),
        "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, valid),
    }


@torch.no_grad()
def _clip_binds(log_ratio: Tensor, adv: Tensor, valid: Tensor, params: PolicyLossParams) -> Tensor:
    """Where the clipped term ``clip(ρ, 1−ε_low, 1+ε_high) Â`` is below ``ρ Â`` (it is the
    one the surrogate takes, and the token has no gradient)."""
    ratio = torch.exp(log_ratio)
    return valid & (torch.clamp(ratio, 1.0 - params.eps_low, 1.0 + params.eps_high) * adv < ratio * adv)


def _seq_mean(x: Tensor, valid: Tensor) -> Tensor:
    """``[N]``: the mean of each row over its valid tokens (0 for a row with none)."""
    return _zero_padding(x, valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)


# --------------------------------------------------------------------------- the clipped family


@register_policy_loss("vanilla")
def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate, per token (PPO, Schulman et al. 2017; GRPO; with
    ``ε_high > ε_low`` DAPO's clip-higher, arXiv 2503.14476).

    ``ℓ_{i,t} = −min(ρ_{i,t} Â_{i,t}, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_{i,t})``.

    Stats besides the common ones: ``clip_frac`` is the fraction of tokens where the
    clipped term is the smaller one (there the token contributes no gradient), split
    into ``clip_frac_low`` (``ρ < 1−ε_low``, ``Â < 0``) and ``clip_frac_high``
    (``ρ > 1+ε_high``, ``Â > 0``).

    Convention: veRL's ``vanilla`` always applies the dual clip too (c = 3); here that is
    the separate loss ``dual_clip``.
    """
    valid, log_ratio, adv, _ = _inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - params.eps_low, 1.0 + params.eps_high) * adv
    per_token = _zero_padding(-torch.minimum(unclipped, clipped), valid)
    with torch.no_grad():
        binds = _clip_binds(log_ratio, adv, valid, params)
        stats = _ratio_stats(log_ratio, valid, binds)
        stats["clip_frac_low"] = _masked_mean((binds & (ratio < 1.0 - params.eps_low)).to(ratio.dtype), valid)
        stats["clip_frac_high"] = _masked_mean((binds & (ratio > 1.0 + params.eps_high)).to(ratio.dtype), valid)
    return per_token, stats


@register_policy_loss("dual_clip")
def dual_clip_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dual-clip PPO (Ye et al. 2020, arXiv 1912.09729): the clipped surrogate, and for a
    negative advantage a lower bound ``c`` on how much a large ratio can cost.

    ``ℓ_{i,t} = −min(ρ Â, clip(ρ, 1−ε_low, 1+ε_high) Â)`` for ``Â ≥ 0``;
    ``ℓ_{i,t} = min(−min(ρ Â, clip(ρ, 1−ε_low, 1+ε_high) Â), −c Â)`` for ``Â < 0``
    (``c = dual_clip_c > 1``), so a token with ``ρ > c`` and ``Â < 0`` adds ``−c Â`` and no
    gradient. TRL's ``delta`` (INTELLECT-2's two-sided clip, ``ρ`` capped at δ in the
    unclipped term) gives the same loss with ``c = δ``.

    ``clip_frac`` counts both bounds; ``clip_frac_dual`` the tokens where ``c`` binds.
    """
    per_token, stats = clipped_policy_loss(logp, old_logp, advantages, mask, params)
    valid, log_ratio, adv, _ = _inputs(logp, old_logp, advantages, mask)
    bound = -params.dual_clip_c * adv
    dual = valid & (adv < 0) & (per_token > bound)
    per_token = torch.where(dual, bound, per_token)
    with torch.no_grad():
        stats["clip_frac"] = _masked_mean((_clip_binds(log_ratio, adv, valid, params) | dual).to(adv.dtype), valid)
        stats["clip_frac_dual"] = _masked_mean(dual.to(adv.dtype), valid)
    return per_token, stats


@register_policy_loss("gspo")
def gspo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, arXiv 2507.18071): one length-normalised importance ratio
    per sequence, clipped as a whole.

    ``s_i = exp((1/|o_i|) Σ_t log ρ_{i,t})``, and per token
    ``ℓ_{i,t} = −min(s_{i,t} Â_{i,t}, clip(s_{i,t}, 1−ε_low, 1+ε_high) Â_{i,t})`` with
    ``s_{i,t} = sg(s_i) · π_θ(a_t|s_t) / sg(π_θ(a_t|s_t))``: its value is ``s_i``, its
    gradient ``s_i ∇log π_θ(a_t|s_t)`` (GSPO-token, which equals GSPO when the advantage
    is the same on every token of a sequence). ``log s`` is capped at 10 for stability.
    The paper's clip range is far narrower than PPO's (about 3e-4 / 4e-4).

    ``clip_frac``: tokens whose sequence ratio is clipped; ``seq_ratio_mean``: mean of ``s_i``.

    Conventions: veRL's ``gspo`` always aggregates with ``seq-mean-token-mean``, whatever its
    ``loss_agg_mode``; here ``algo.loss_agg`` applies (``seq-mean-token-sum`` is TRL's
    ``luspo``). TRL's ``importance_sampling_level="sequence"`` takes the gradient through
    ``s_i`` itself (one value per sequence) rather than GSPO-token's; with one advantage per
    sequence and ``seq-mean-token-mean`` the two gradients are equal.
    """
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    seq_log_ratio = _seq_mean(log_ratio, valid).detach()
    log_s = torch.clamp(lp - lp.detach() + seq_log_ratio.unsqueeze(1), max=10.0)
    s = torch.exp(log_s)
    unclipped = s * adv
    clipped = torch.clamp(s, 1.0 - params.eps_low, 1.0 + params.eps_high) * adv
    per_token = _zero_padding(-torch.minimum(unclipped, clipped), valid)
    with torch.no_grad():
        stats = _ratio_stats(log_ratio, valid, valid & (clipped < unclipped))
        stats["seq_ratio_mean"] = torch.exp(seq_log_ratio).mean() if seq_log_ratio.numel() else log_s.new_zeros(())
    return per_token, stats


@register_policy_loss("cispo")
def cispo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, not the update.

    ``ℓ_{i,t} = −sg(clip(ρ_{i,t}, 1−ε_low, 1+ε_high)) · Â_{i,t} · log π_θ(a_t|s_t)``: every
    token keeps a gradient ``w Â ∇log π_θ``, with its weight ``w`` bounded.

    Convention: TRL's ``cispo`` clips only from above, ``min(ρ, ε_max)`` with ``ε_max = 5``
    recommended; here that is ``eps_low = 1`` (no lower bound) with ``eps_high = ε_max − 1``.
    ``clip_frac``: tokens whose weight was clipped.
    """
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1.0 - params.eps_low, 1.0 + params.eps_high).detach()
    per_token = _zero_padding(-weight * adv * lp, valid)
    stats = _ratio_stats(log_ratio, valid, valid & (weight != ratio.detach()))
    return per_token, stats


@register_policy_loss("sapo")
def sapo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347): a smooth gate instead
    of the hard clip.

    ``ℓ_{i,t} = −f(ρ_{i,t}) Â_{i,t}`` with ``f(ρ) = σ(τ (ρ − 1)) · 4/τ``, ``τ = τ_pos`` where
    ``Â > 0`` and ``τ_neg`` elsewhere. ``f'(1) = 1``, so on-policy the gradient is the plain
    policy gradient; far from ρ = 1 the gate's slope fades smoothly. Nothing is cut:
    ``clip_frac`` is 0.
    """
    valid, log_ratio, adv, _ = _inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    tau = torch.where(adv > 0, torch.full_like(adv, params.sapo_tau_pos), torch.full_like(adv, params.sapo_tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    per_token = _zero_padding(-gate * adv, valid)
    return per_token, _ratio_stats(log_ratio, valid, torch.zeros_like(valid))


@torch.no_grad()
def _covariance(adv: Tensor, lp: Tensor, valid: Tensor) -> Tensor:
    """Per-token ``(Â_t − mean Â)(log π_θ,t − mean log π_θ)``, means over the valid tokens."""
    return (adv - _masked_mean(adv, valid)) * (lp.detach() - _masked_mean(lp.detach(), valid))


@register_policy_loss("clip_cov")
def clip_cov_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv
    2505.22617): the clipped surrogate, plus the gradient of a few high-covariance tokens cut.

    Tokens with large ``cov_t = (Â_t − mean Â)(log π_t − mean log π)`` drive the entropy
    collapse. Among the valid tokens the clip leaves alone whose ``cov_t`` lies in
    ``(clip_cov_lb, clip_cov_ub)``, ``max(1, ⌊cov_frac · #valid⌋)`` are chosen at random
    (torch's RNG, seeded with the run) and their loss is multiplied by 0 (no gradient);
    elsewhere ``ℓ`` is the clipped surrogate. The selection is over the tokens of the call
    (one micro-batch), as in veRL.

    ``cov_clip_frac``: the fraction of valid tokens so cut (veRL's ``pg_clipfrac`` for this
    loss); ``clip_frac``: cut or clipped.
    """
    per_token, stats = clipped_policy_loss(logp, old_logp, advantages, mask, params)
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    with torch.no_grad():
        clipped = _clip_binds(log_ratio, adv, valid, params)
        cov = _covariance(adv, lp, valid)
        candidates = (valid & ~clipped & (cov > params.clip_cov_lb) & (cov < params.clip_cov_ub)).nonzero()
        k = max(int(params.cov_frac * int(valid.sum())), 1)
        chosen = candidates[torch.randperm(len(candidates), device=candidates.device)[:k]]
        cut = torch.zeros_like(valid)
        cut[chosen[:, 0], chosen[:, 1]] = True
    per_token = torch.where(cut, per_token * 0.0, per_token)
    stats["cov_clip_frac"] = _masked_mean(cut.to(adv.dtype), valid)
    stats["clip_frac"] = _masked_mean((clipped | cut).to(adv.dtype), valid)
    return per_token, stats


@register_policy_loss("kl_cov")
def kl_cov_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): the unclipped surrogate, and a KL penalty
    on the tokens of highest covariance.

    ``ℓ_{i,t} = −ρ_{i,t} Â_{i,t}`` everywhere, plus ``kl_cov_coef · |log ρ_{i,t}|`` on the
    ``max(1, ⌊cov_frac · #valid⌋)`` valid tokens with the largest
    ``cov_t = (Â_t − mean Â)(log π_t − mean log π)`` (over the tokens of the call).
    Nothing is clipped; ``kl_cov_frac`` is the fraction of valid tokens penalised.
    """
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        n_valid = int(valid.sum())
        picked = torch.zeros_like(valid)
        if n_valid:
            cov = torch.where(valid, _covariance(adv, lp, valid), torch.full_like(adv, -math.inf))
            k = max(int(n_valid * params.cov_frac), 1)
            flat = torch.topk(cov.reshape(-1), k).indices
            picked.view(-1)[flat] = True
    per_token = -ratio * adv + torch.where(picked, params.kl_cov_coef * log_ratio.abs(), torch.zeros_like(adv))
    per_token = _zero_padding(per_token, valid)
    stats = _ratio_stats(log_ratio, valid, torch.zeros_like(valid))
    stats["kl_cov_frac"] = _masked_mean(picked.to(ratio.dtype), valid)
    return per_token, stats


@register_policy_loss("gmpo")
def gmpo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673): the geometric mean of the
    token ratios, clipped token by token in log space; a sequence-level loss.

    With ``sgn = sign(Â_{i,t})`` and ``l_t = log ρ_{i,t}``:
    ``l̃_t = sgn · min(sgn · l_t, sgn · clip(l_t, −ε_low, ε_high))``,
    ``L_i = −Â_i · exp((1/|o_i|) Σ_t l̃_t)``, ``Â_i = (1/|o_i|) Σ_t Â_{i,t}``.
    ``L_i`` is put on each token of completion i, so ``seq-mean-token-mean`` gives
    ``(1/N) Σ_i L_i`` (veRL's ``geo_mean``). The clip range is in log space: the paper
    uses ε = 0.4, i.e. ratios within (e^−0.4, e^0.4).
    ``clip_frac``: tokens with ``Â ≠ 0`` where the clipped log-ratio is the one used.

    Conventions: veRL's ``geo_mean`` returns ``(1/N) Σ_i L_i`` whatever its
    ``loss_agg_mode``; here ``algo.loss_agg`` applies, and only ``seq-mean-token-mean``
    gives that mean (``token-mean`` weighs each ``L_i`` by ``|o_i|``). veRL's
    ``pg_clipfrac`` / ``pg_clipfrac_lower`` count every token whose log-ratio lies outside
    the range (split by the sign of Â), also where the min keeps the unclipped one.
    """
    valid, log_ratio, adv, _ = _inputs(logp, old_logp, advantages, mask)
    sgn = torch.sign(adv)
    clamped = torch.clamp(log_ratio, -params.eps_low, params.eps_high)
    kept = sgn * torch.minimum(sgn * log_ratio, sgn * clamped)
    seq_loss = -_seq_mean(adv, valid) * torch.exp(_seq_mean(kept, valid))
    per_token = _zero_padding(seq_loss.unsqueeze(1).expand_as(log_ratio), valid)
    # Â = 0 drops the token's log-ratio from the mean (sgn = 0): nothing is clipped there
    stats = _ratio_stats(log_ratio, valid, valid & (sgn != 0) & (kept != log_ratio))
    return per_token, stats


@register_policy_loss("gpg")
def gpg_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """The plain policy gradient, no ratio and no clip (GPG, arXiv 2504.02546; REINFORCE):
    ``ℓ_{i,t} = −Â_{i,t} · log π_θ(a_t|s_t)``. Its gradient equals the clipped surrogate's
    at ρ = 1 (one update per rollout); off-policy it ignores π_old."""
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    return _zero_padding(-adv * lp, valid), _ratio_stats(log_ratio, valid, torch.zeros_like(valid))


@register_policy_loss("vespo")
def vespo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, params: PolicyLossParams = PolicyLossParams()
) -> tuple[Tensor, dict[str, Tensor]]:
    """VESPO (arXiv 2602.10693, TRL's ``vespo``): a smooth Gamma-shaped weight of the
    sequence's importance ratio on a REINFORCE term.

    ``w_i = exp(Σ_t log ρ_{i,t})`` (the product of token ratios; log clamped to
    [log 1e−8, 20]), ``φ(w) = exp(λ + k log w − λ w)`` (so ``φ(1) = 1``), with ``(k, λ)``
    = ``(vespo_k_pos, vespo_lambda_pos)`` where ``Â ≥ 0`` else the ``_neg`` pair, and
    ``ℓ_{i,t} = −sg(φ(w_i)) · Â_{i,t} · log π_θ(a_t|s_t)``. ``clip_frac`` is 0.
    """
    valid, log_ratio, adv, lp = _inputs(logp, old_logp, advantages, mask)
    with torch.no_grad():
        log_w = torch.clamp(_zero_padding(torch.clamp(log_ratio, -20.0, 20.0), valid).sum(1, keepdim=True),
                            math.log(1e-8), 20.0)
        nonneg = adv >= 0
        k = torch.where(nonneg, torch.full_like(adv, params.vespo_k_pos), torch.full_like(adv, params.vespo_k_neg))
        lam = torch.where(nonneg, torch.full_like(adv, params.vespo_lambda_pos),
                          torch.full_like(adv, params.vespo_lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
    per_token = _zero_padding(-phi * adv * lp, valid)
    return per_token, _ratio_stats(log_ratio, valid, torch.zeros_like(valid))


# --------------------------------------------------------------------------- sample and token filters


@torch.no_grad()
def off_policy_sequence_mask(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, delta: float
) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence mask: ``[N, 1]``, 0 for a completion that is both
    harmful and stale, 1 otherwise.

    Keep completion i unless ``Â_i < 0`` and ``(1/|o_i|) Σ_t (log π_old − log π_θ) > δ``:
    a negative-advantage sequence the policy has already moved away from (its KL to the
    sampling policy past δ) teaches more noise than signal. ``Â_i`` is the completion's
    mean advantage over its tokens.
    """
    check_same_2d_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    valid = mask.bool()
    kl = _seq_mean(old_logp - logp, valid)
    harmful = _seq_mean(advantages.to(kl.dtype), valid) < 0
    return (~(harmful & (kl > delta))).to(kl.dtype).unsqueeze(1)


@torch.no_grad()
def top_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Keep the highest-entropy tokens ("Beyond the 80/20 rule", arXiv 2506.01939): ``[N, T]``,
    1 on valid tokens whose entropy is ≥ the ``(1 − ρ)`` quantile of the valid tokens'
    entropies (``ρ = quantile``; ρ = 0.2 keeps the top 20 %), 0 elsewhere. ``ρ = 1`` keeps
    every valid token; ``ρ = 0`` only the highest. The quantile is over the tokens of the
    call (one micro-batch), as TRL takes it over one device's batch."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    check_same_2d_shape(entropy=entropy, mask=mask)
    valid = mask.bool()
    values = entropy[valid].float()
    if values.numel() == 0 or quantile >= 1.0:
        return valid.to(entropy.dtype)
    threshold = torch.quantile(values, 1.0 - quantile)
    return (valid & (entropy >= threshold)).to(entropy.dtype)


def token_filter_weights(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, entropy: Tensor,
    off_policy_delta: float | None, top_entropy_quantile: float,
    engine_logp: Tensor | None = None, rollout_is: str = "none", rollout_is_cap: float = 2.0,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The product of the enabled filters and corrections, ``[N, T]`` or ``[N, 1]`` (None
    when none is on): :func:`off_policy_sequence_mask` when ``off_policy_delta`` is set,
    :func:`top_entropy_mask` when ``top_entropy_quantile < 1``, and the engine/trainer
    mismatch weight :func:`rollout_importance_weights` (``rollout_is``, cap
    ``rollout_is_cap``) when ``engine_logp`` is given; with the fraction of completions
    (``off_policy_masked_frac``) and of valid tokens (``entropy_kept_frac``) each filter
    keeps or drops, and the ``rollout_is_*`` statistics."""
    weights: Tensor | None = None
    stats: dict[str, Tensor] = {}
    valid = mask.bool()
    if off_policy_delta is not None:
        keep = off_policy_sequence_mask(logp.detach(), old_logp, advantages, mask, off_policy_delta)
        stats["off_policy_masked_frac"] = 1.0 - keep.mean() if keep.numel() else keep.new_zeros(())
        weights = keep
    if top_entropy_quantile < 1.0:
        keep_tokens = top_entropy_mask(entropy.detach(), mask, top_entropy_quantile)
        stats["entropy_kept_frac"] = _masked_mean(keep_tokens, valid)
        weights = keep_tokens if weights is None else weights * keep_tokens
    if engine_logp is not None:
        is_weights, is_stats = rollout_importance_weights(old_logp, engine_logp, mask, rollout_is, rollout_is_cap)
        stats.update(is_stats)
        if is_weights is not None:
            weights = is_weights if weights is None else weights * is_weights
    elif rollout_is != "none":
        raise ValueError(f"rollout_is={rollout_is!r} needs the engine's log-probs of the sampled tokens "
                         "(engine_logp); this rollout has none")
    return weights, stats


# --------------------------------------------------------------------------- engine/trainer mismatch

RolloutCorrection = Callable[[Tensor, Tensor, float], "tuple[Tensor, dict[str, Tensor]]"]
ROLLOUT_CORRECTIONS: dict[str, RolloutCorrection] = {}
register_rollout_correction = registrar(ROLLOUT_CORRECTIONS, "rollout IS mode")
#: the largest |log ρ| that enters exp(): e^20 ≈ 4.9e8, far past any sensible cap
_MAX_LOG_RATIO = 20.0


@register_rollout_correction("token_truncate")
def truncated_token_weights(log_ratio: Tensor, valid: Tensor, cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance sampling per token (TIS; Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training"; the truncation of IMPALA's
    V-trace, Espeholt et al. 2018): ``w_{i,t} = min(π_old(a_t|s_t) / π_engine(a_t|s_t), C)``
    ``[N, T]``, 0 on padding. ``truncated_frac``: valid tokens whose ratio exceeded C."""
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    weights = _zero_padding(torch.clamp(ratio, max=cap), valid)
    return weights, {"truncated_frac": _masked_mean((ratio > cap).to(ratio.dtype), valid)}


@register_rollout_correction("sequence_mask")
def masked_sequence_weights(log_ratio: Tensor, valid: Tensor, cap: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Sequence-level rejection (Liu, Li et al. 2025, "When Speed Kills Stability:
    Demystifying RL Collapse from the Training-Inference Mismatch"; veRL's ``seq_sum_k1``
    rejection with bounds ``(1/C, C)``): ``w_i = 1`` if the sequence's importance ratio
    ``∏_t π_old/π_engine = exp(Σ_t log ρ_{i,t})`` lies in ``[1/C, C]``, else 0 (the whole
    completion leaves the loss), ``[N, 1]``. ``masked_frac``: completions masked, among
    those with at least one valid token."""
    seq_log_ratio = _zero_padding(log_ratio, valid).sum(dim=1, keepdim=True)
    keep = (seq_log_ratio.abs() <= math.log(cap)).to(log_ratio.dtype)
    return keep, {"masked_frac": _masked_mean(1.0 - keep, valid.any(dim=1, keepdim=True))}


@torch.no_grad()
def rollout_importance_weights(
    old_logp: Tensor, engine_logp: Tensor, mask: Tensor, mode: str, cap: float
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The engine/trainer mismatch correction (ALGORITHMS.md, Importance sampling): the
    rollout engine (vLLM, or any sampler whose numerics differ from the trainer's) drew
    the completions from ``π_engine``, while the loss's ratio ρ is taken against ``π_old``,
    the trainer's own recomputation. The weight ``w`` of :data:`ROLLOUT_CORRECTIONS`
    ``[mode]`` on ``log ρ^{eng}_{i,t} = log π_old − log π_engine`` corrects the gap; it
    multiplies the policy term (``grpo_loss(..., token_weights=w)``) and is a constant
    of the update. ``mode="none"`` gives ``None`` (no correction) with the same statistics.

    ``old_logp``, ``engine_logp``, ``mask``: ``[N, T]``; ``cap``: C ≥ 1. Statistics
    (detached, over valid tokens): ``rollout_is_logp_diff_mean`` and
    ``rollout_is_logp_diff_max`` (mean and max ``|log π_old − log π_engine|``), and for a
    correction its ``rollout_is_truncated_frac`` or ``rollout_is_masked_frac`` and
    ``rollout_is_weight_mean`` (mean weight over valid tokens).
    """
    check_same_2d_shape(old_logp=old_logp, engine_logp=engine_logp, mask=mask)
    if cap < 1.0:
        raise ValueError(f"the rollout IS cap C must be >= 1 (a ratio of 1 is no mismatch), got {cap!r}")
    valid = mask.bool()
    dtype = torch.promote_types(torch.promote_types(old_logp.dtype, engine_logp.dtype), torch.float32)
    log_ratio = _zero_padding(old_logp.detach().to(dtype) - engine_logp.detach().to(dtype), valid)
    diff = log_ratio.abs()
    stats = {
        "rollout_is_logp_diff_mean": _masked_mean(diff, valid),
        "rollout_is_logp_diff_max": diff.max() if diff.numel() else diff.new_zeros(()),
    }
    if mode == "none":
        return None, stats
    weights, own = lookup(ROLLOUT_CORRECTIONS, "rollout IS mode", mode)(log_ratio, valid, cap)
    stats.update({f"rollout_is_{k}": v for k, v in own.items()})
    stats["rollout_is_weight_mean"] = _masked_mean(weights.expand_as(log_ratio), valid)
    return weights, stats


# --------------------------------------------------------------------------- the GRPO objective


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    policy_loss: str = "vanilla",
    params: PolicyLossParams = PolicyLossParams(),
    beta: float = 0.04,
    kl_estimator: str = "k3",
    loss_agg: str = "seq-mean-token-mean",
    scale: LossScale = LossScale(),
    token_weights: Tensor | None = None,
    entropy: Tensor | None = None,
    ent_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO objective: a policy loss, β times the KL to the reference, an entropy bonus.

    ``ℓ_{i,t} = w_{i,t} · ℓ^{pg}_{i,t} + β · KL_{i,t} − c_H · H_{i,t}``, aggregated with
    ``loss_agg`` over the denominators of ``scale`` (:func:`verirl.losses.aggregate_loss`).

    - ``ℓ^{pg}``: the policy loss ``policy_loss`` of :data:`POLICY_LOSSES` (default the
      clipped surrogate ``−min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â)``);
    - ``w``: ``token_weights`` ``[N, T]`` or ``[N, 1]`` (the filters: off-policy sequence
      mask, top-entropy tokens), 1 when None; it scales the policy term only;
    - ``KL``: the estimator ``kl_estimator`` of :data:`verirl.losses.KL_ESTIMATORS` on
      ``(log π_θ, log π_ref, log π_old)``; with ``ref_logp=None`` or ``β = 0`` there is none;
    - ``H``: ``entropy`` ``[N, T]`` of π_θ (with gradient), needed when ``ent_coef > 0``.

    ``mask`` is the loss mask: completion tokens, less any the run filters out (truncated
    completions). Returns ``(loss, stats)``: the policy loss's stats plus ``pg_loss`` (the
    aggregated policy term), ``kl`` (mean over valid tokens, whenever ``ref_logp`` is given)
    and ``entropy_bonus`` when ``ent_coef > 0``.
    """
    if float(beta) < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if float(beta) > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference log-probs); pass beta=0 to train without a KL term")
    if ent_coef > 0 and entropy is None:
        raise ValueError("ent_coef > 0 needs the entropy of π_θ at each token")
    estimator = get_kl_estimator(kl_estimator)
    aggregate = get_loss_aggregation(loss_agg)  # fail on a bad name before any math
    per_token, stats = get_policy_loss(policy_loss)(logp, old_logp, advantages, mask, params)
    valid = mask.bool()
    if token_weights is not None:
        per_token = per_token * token_weights.to(per_token.dtype)
    stats["pg_loss"] = aggregate(per_token, mask, scale).detach()
    if ref_logp is not None:
        check_same_2d_shape(logp=logp, ref_logp=ref_logp)
        # Zero the inputs on padding too: exp() of padding garbage would put nan in the gradient.
        kl = estimator(_zero_padding(logp, valid), _zero_padding(ref_logp.detach().to(logp.dtype), valid),
                       _zero_padding(old_logp.detach().to(logp.dtype), valid))
        kl = _zero_padding(kl, valid)
        stats["kl"] = _masked_mean(kl, valid).detach()
        if float(beta) > 0:
            per_token = per_token + float(beta) * kl
    if ent_coef > 0:
        check_same_2d_shape(logp=logp, entropy=entropy)
        bonus = _zero_padding(entropy.to(per_token.dtype), valid)
        stats["entropy_bonus"] = aggregate(bonus, mask, scale).detach()
        per_token = per_token - float(ent_coef) * bonus
    return aggregate(per_token, mask, scale), stats
