"""Losses: token log-probs, entropy, KL estimators, the clipped policy and value losses.

Pure tensor math: tensors in, tensors out; no model, no I/O, no config object.

Conventions (every function): completions are rows of right-padded ``[N, T]`` tensors
with a ``mask`` ``[N, T]`` (1 on completion tokens, 0 on padding; bool or numeric).
Padding values (even ``nan``) never reach a loss or a statistic, and per-token losses
are exactly 0 on padding. Statistics are detached 0-d tensors (call ``.item()`` when
logging; keeping them tensors avoids a device sync per stat).

Registries, each selected once by config name:
- :data:`KL_ESTIMATORS` (``k3``, ``k1``, ``k2``) via :func:`get_kl_estimator`;
- :data:`LOSS_AGGREGATIONS` (``seq-mean-token-mean``, ``token-mean``,
  ``seq-mean-token-sum-norm``) via :func:`get_loss_aggregation`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from verirl.advantages import check_same_2d_shape
from verirl.registry import lookup, registrar

KLEstimator = Callable[[Tensor, Tensor], Tensor]
Aggregation = Callable[[Tensor, Tensor, "int | None"], Tensor]

KL_ESTIMATORS: dict[str, KLEstimator] = {}
LOSS_AGGREGATIONS: dict[str, Aggregation] = {}


register_kl_estimator = registrar(KL_ESTIMATORS, "KL estimator")
register_loss_aggregation = registrar(LOSS_AGGREGATIONS, "loss aggregation")


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator registered as ``name``; unknown names raise ``ValueError``."""
    return lookup(KL_ESTIMATORS, "KL estimator", name)


def get_loss_aggregation(name: str) -> Aggregation:
    """The loss aggregation registered as ``name``; unknown names raise ``ValueError``."""
    return lookup(LOSS_AGGREGATIONS, "loss aggregation", name)


# --------------------------------------------------------------------------- helpers


def _zero_padding(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid positions; 0 when there are none (this module stays self-contained)."""
    return _zero_padding(x, valid).sum() / valid.sum().clamp(min=1)


# --------------------------------------------------------------------------- log-probs


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each sampled token: ``log π(a_t|s_t) = z_{t,a_t} − logsumexp_v z_{t,v}``.

    Args:
        logits: ``[N, T, V]``; position t's logits predict ``tokens[:, t]`` (shift them
            before calling if they come straight from a causal LM).
        tokens: ``[N, T]`` integer token ids in ``[0, V)`` (padding too: use the pad id).

    Returns:
        ``[N, T]`` float32 (float64 if the logits are) log-probs, differentiable w.r.t.
        ``logits``. Rows are processed one at a time so the peak extra memory is one
        ``[T, V]`` float32 slice rather than a full ``[N, T, V]`` log-softmax.
    """
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits must be [N, T, V] and tokens [N, T] with the same N, T; got logits "
            f"{tuple(logits.shape)}, tokens {tuple(tokens.shape)}"
        )
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    vocab = logits.shape[-1]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"token ids must be in [0, {vocab}) (the logits' vocabulary); got ids from "
            f"{int(tokens.min())} to {int(tokens.max())}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):
        z = row_logits.to(dtype)
        picked = z.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(z, dim=-1))
    if not rows:
        return logits.new_zeros(tokens.shape, dtype=dtype)
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position.

    ``H[π](s_t) = −Σ_v π_v log π_v = logsumexp(z) − Σ_v softmax(z)_v z_v``.

    ``logits`` ``[N, T, V]`` → ``[N, T]`` float32 (float64 for float64 logits),
    differentiable; rows are processed one at a time to bound memory.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, T, V], got shape {tuple(logits.shape)}")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row_logits in logits:
        z = row_logits.to(dtype)
        rows.append(torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1))
    if not rows:
        return logits.new_zeros(logits.shape[:2], dtype=dtype)
    return torch.stack(rows)


# --------------------------------------------------------------------------- KL estimators
# All take (logp = log π_θ, ref_logp = log π_ref) on the sampled tokens, with
# x = log π_ref − log π_θ; samples come from π_θ (≈ π_old), so E[k] ≈ KL(π_θ ‖ π_ref).


@register_kl_estimator("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k3 = exp(x) − x − 1`` with ``x = log π_ref − log π_θ`` (DeepSeekMath's default).

    Unbiased for KL(π_θ ‖ π_ref) and always ≥ 0. Computed as ``expm1(x) − x`` to keep
    precision when the two policies are close.
    """
    x = ref_logp - logp
    return torch.expm1(x) - x


@register_kl_estimator("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k1 = −x`` with ``x = log π_ref − log π_θ``: unbiased, high variance, can be negative."""
    return logp - ref_logp


@register_kl_estimator("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``k2 = x² / 2`` with ``x = log π_ref − log π_θ``: low variance, biased, ≥ 0."""
    return 0.5 * (ref_logp - logp) ** 2


# --------------------------------------------------------------------------- policy loss


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate, per token (PPO / GRPO; ``eps_high > eps_low`` is DAPO's clip-higher).

    ``ℓ_{i,t} = −min(ρ_{i,t} Â_{i,t}, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_{i,t})``, with
    ``ρ_{i,t} = exp(log π_θ − log π_old)``. ``old_logp`` is detached here: π_old is a
    constant of the update.

    Args:
        logp, old_logp, advantages, mask: ``[N, T]``.
        eps_low, eps_high: ``ε_low`` in [0, 1), ``ε_high`` ≥ 0.

    Returns:
        ``(per_token_loss [N, T], stats)``; the loss is 0 on padding. ``stats`` (detached
        0-d tensors, over valid tokens only; 0 when there are none):

        - ``clip_frac``: fraction of tokens where the clipped term is the smaller one
          (there the token contributes no gradient);
        - ``clip_frac_low`` / ``clip_frac_high``: the part of it with ``ρ < 1−ε_low``
          (``Â < 0``) / ``ρ > 1+ε_high`` (``Â > 0``);
        - ``ratio_mean``, ``ratio_max``: of ``ρ``;
        - ``approx_kl``: KL(π_old ‖ π_θ) estimated with k3 on the π_old samples,
          ``mean(ρ − 1 − log ρ)``.
    """
    check_same_2d_shape(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(
            f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low!r}, eps_high={eps_high!r}"
        )
    valid = mask.bool()
    # Zero the log-ratio on padding first, so padding garbage cannot make nan gradients.
    log_ratio = _zero_padding(logp - old_logp.detach(), valid)
    ratio = torch.exp(log_ratio)
    adv = _zero_padding(advantages.detach().to(ratio.dtype), valid)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = _zero_padding(-torch.minimum(unclipped, clipped), valid)

    with torch.no_grad():
        binds = valid & (clipped < unclipped)
        stats = {
            "clip_frac": _masked_mean(binds.to(ratio.dtype), valid),
            "clip_frac_low": _masked_mean((binds & (ratio < 1.0 - eps_low)).to(ratio.dtype), valid),
            "clip_frac_high": _masked_mean((binds & (ratio > 1.0 + eps_high)).to(ratio.dtype), valid),
            "ratio_mean": _masked_mean(ratio, valid),
            # ρ > 0, so zeros on padding never win the max; an empty batch gives 0.
            "ratio_max": _zero_padding(ratio, valid).max() if ratio.numel() else ratio.new_zeros(()),
            "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, valid),
        }
    return per_token, {k: v.detach() for k, v in stats.items()}


# --------------------------------------------------------------------------- aggregation


@register_loss_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """``L = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}`` (DeepSeekMath): mean over each completion's
    tokens, then over the N completions. A completion with no valid token contributes
    0 and still counts in N. ``max_len`` is unused."""
    valid = mask.bool()
    per_seq = _zero_padding(per_token, valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return per_seq.mean() if per_seq.numel() else per_token.new_zeros(())


@register_loss_aggregation("token-mean")
def token_mean(per_token: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """``L = Σ_i Σ_t ℓ_{i,t} / Σ_i |o_i|`` (DAPO): every valid token of the batch weighs
    the same. No valid token at all gives 0. ``max_len`` is unused."""
    return _masked_mean(per_token, mask.bool())


@register_loss_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, max_len: int | None = None) -> Tensor:
    """``L = (1/N) Σ_i Σ_t ℓ_{i,t} / max_len`` (Dr. GRPO): each completion's token sum
    over a constant (the generation limit), then the mean over the N completions.
    ``max_len`` is required; it must be ≥ the row length T so no completion is longer."""
    if max_len is None or isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(
            "loss aggregation 'seq-mean-token-sum-norm' needs max_len, a positive int (the "
            f"generation limit, max completion tokens); got {max_len!r}"
        )
    if per_token.shape[1] > max_len:
        raise ValueError(
            f"rows have T={per_token.shape[1]} positions, more than max_len={max_len}; "
            "max_len must be the longest possible completion"
        )
    per_seq = _zero_padding(per_token, mask.bool()).sum(dim=1) / max_len
    return per_seq.mean() if per_seq.numel() else per_token.new_zeros(())


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "seq-mean-token-mean", max_len: int | None = None
) -> Tensor:
    """Reduce a per-token loss ``[N, T]`` to a scalar with the aggregation ``mode`` from
    :data:`LOSS_AGGREGATIONS` (formulas in each one's docstring). Padding never counts;
    completions with zero valid tokens never produce ``nan``."""
    check_same_2d_shape(per_token=per_token, mask=mask)
    return get_loss_aggregation(mode)(per_token, mask, max_len)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    kl_estimator: str | KLEstimator = "k3",
    loss_agg: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO objective: the clipped surrogate plus β times the KL to the reference.

    ``ℓ_{i,t} = −min(ρ_{i,t} Â_{i,t}, clip(ρ_{i,t}, 1−ε_low, 1+ε_high) Â_{i,t}) + β · KL_{i,t}``,
    aggregated with ``loss_agg`` (see :func:`aggregate_loss`). ``KL_{i,t}`` is the named
    (or given) estimator of :data:`KL_ESTIMATORS` on ``(logp, ref_logp)``; ``ref_logp``
    is detached.

    With ``ref_logp=None`` or ``beta=0`` there is no KL term. Returns ``(loss, stats)``:
    the stats of :func:`clipped_policy_loss` plus ``pg_loss`` (the aggregated surrogate
    alone) and, whenever ``ref_logp`` is given, ``kl`` (mean over valid tokens).
    """
    if float(beta) < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if float(beta) > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference log-probs); pass beta=0 to train without a KL term")
    estimator = get_kl_estimator(kl_estimator) if isinstance(kl_estimator, str) else kl_estimator
    aggregate = get_loss_aggregation(loss_agg)  # fail on a bad name before any math

    per_token, stats = clipped_policy_loss(logp, old_logp, advantages, mask, eps_low, eps_high)
    valid = mask.bool()
    stats["pg_loss"] = aggregate(per_token, mask, max_len).detach()
    if ref_logp is not None:
        check_same_2d_shape(logp=logp, ref_logp=ref_logp)
        # Zero the inputs on padding too: exp() of padding garbage would put nan in the gradient.
        kl = estimator(_zero_padding(logp, valid), _zero_padding(ref_logp.detach().to(logp.dtype), valid))
        kl = _zero_padding(kl, valid)
        stats["kl"] = _masked_mean(kl, valid).detach()
        if float(beta) > 0:
            per_token = per_token + float(beta) * kl
    return aggregate(per_token, mask, max_len), stats


# --------------------------------------------------------------------------- value loss


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    eps_v: float = 0.2,
    clip: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The critic's loss per token.

    ``L_V = max((V_φ(s_t) − G_t)², (V_old(s_t) + clip(V_φ(s_t) − V_old(s_t), −ε_v, ε_v) − G_t)²)``;
    with ``clip=False``, the unclipped MSE ``(V_φ(s_t) − G_t)²``.

    Args:
        values: ``[N, T]`` ``V_φ(s_t)`` (with gradient); old_values: ``V_old(s_t)`` and
            returns: ``G_t`` (both detached here); mask: ``[N, T]``; eps_v: ``ε_v`` ≥ 0.

    Returns:
        ``(per_token_loss [N, T], stats)``, 0 on padding; ``stats["vf_clip_frac"]`` is
        the fraction of valid tokens where the clipped term is the larger one (its
        gradient is then 0); 0 when ``clip=False``.
    """
    check_same_2d_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if eps_v < 0:
        raise ValueError(f"eps_v must be >= 0, got {eps_v!r}")
    valid = mask.bool()
    returns = _zero_padding(returns.detach().to(values.dtype), valid)
    old = _zero_padding(old_values.detach().to(values.dtype), valid)
    v = _zero_padding(values, valid)
    unclipped = (v - returns) ** 2
    if not clip:
        return _zero_padding(unclipped, valid), {"vf_clip_frac": values.new_zeros((), dtype=torch.float32)}
    clipped_v = old + torch.clamp(v - old, -eps_v, eps_v)
    clipped = (clipped_v - returns) ** 2
    per_token = _zero_padding(torch.maximum(unclipped, clipped), valid)
    with torch.no_grad():
        frac = _masked_mean((valid & (clipped > unclipped)).to(unclipped.dtype), valid)
    return per_token, {"vf_clip_frac": frac.detach()}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the critic explains, over valid tokens.

    ``EV = 1 − Var[G − V] / Var[G]`` (1: perfect; 0: no better than a constant; < 0:
    worse). A 0-d detached tensor; 0 when ``Var[G] = 0`` (nothing to explain) so logs
    never see ``nan``.
    """
    check_same_2d_shape(values=values, returns=returns, mask=mask)
    valid = mask.bool()
    g = returns.to(torch.float64)
    diff = g - values.to(torch.float64)

    def var(x: Tensor) -> Tensor:
        mean = _masked_mean(x, valid)
        return _masked_mean((x - mean) ** 2, valid)

    var_g = var(g)
    ev = torch.where(var_g > 0, 1.0 - var(diff) / torch.where(var_g > 0, var_g, 1.0), 0.0)
    return ev.to(torch.float32)
