"""Losses: token log-probs, entropy, KL estimators, the clipped policy and value losses.

Pure tensor math: tensors in, tensors out; no model, no I/O, no config object.

Conventions (every function): completions are rows of right-padded ``[N, T]`` tensors
with a ``mask`` ``[N, T]`` (1 on completion tokens, 0 on padding; bool or numeric).
Padding values (even ``nan``) never reach a loss or a statistic, and per-token losses
are exactly 0 on padding. Statistics are detached 0-d tensors (call ``.item()`` when
logging; keeping them tensors avoids a device sync per stat).

Registries, each selected once by config name:
- :data:`KL_ESTIMATORS` (``k3``, ``k1``, ``k2``, ``abs``, ``low_var_kl``, ``k3+``) via
  :func:`get_kl_estimator`;
- :data:`LOSS_AGGREGATIONS` (``seq-mean-token-mean``, ``token-mean``, ``seq-mean-token-sum``,
  ``seq-mean-token-sum-norm``) via :func:`get_loss_aggregation`, each dividing by the
  counts of a :class:`LossScale` so micro-batches add up to their minibatch exactly.

The policy losses (the clipped surrogate and its relatives) and the whole GRPO
objective are in :mod:`verirl.policy_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from verirl.advantages import check_same_2d_shape
from verirl.registry import lookup, registrar

KLEstimator = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
Aggregation = Callable[[Tensor, Tensor, "LossScale"], Tensor]

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
# All take (logp = log π_θ, ref_logp = log π_ref, old_logp = log π_old) on the sampled
# tokens, with x = log π_ref − log π_θ. Samples come from π_old; only k3+ uses old_logp.


@register_kl_estimator("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """``k3 = exp(x) − x − 1`` with ``x = log π_ref − log π_θ`` (DeepSeekMath's default).

    Unbiased for KL(π_θ ‖ π_ref) and always ≥ 0. Computed as ``expm1(x) − x`` to keep
    precision when the two policies are close.
    Convention: veRL's ``k3`` is clamped (the same function as its ``low_var_kl``); here
    that is :func:`kl_low_var`, and ``k3`` is the unclamped formula (TRL's and DeepSeekMath's).
    """
    x = ref_logp - logp
    return torch.expm1(x) - x


@register_kl_estimator("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """``k1 = −x`` with ``x = log π_ref − log π_θ``: unbiased, high variance, can be negative."""
    return logp - ref_logp


@register_kl_estimator("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """``k2 = x² / 2`` with ``x = log π_ref − log π_θ``: low variance, biased, ≥ 0.

    Its gradient, ``(log π_θ − log π_ref) ∇log π_θ``, is the unbiased gradient of
    KL(π_θ ‖ π_ref) for on-policy samples (Schulman's note on KL approximations)."""
    return 0.5 * (ref_logp - logp) ** 2


@register_kl_estimator("abs")
def kl_abs(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """``|x|`` with ``x = log π_ref − log π_θ`` (veRL's ``abs``): biased, ≥ 0."""
    return (logp - ref_logp).abs()


@register_kl_estimator("low_var_kl")
def kl_low_var(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """k3 with both ends clamped, veRL's ``low_var_kl``: ``clamp(exp(x̃) − x̃ − 1, −10, 10)``
    with ``x̃ = clamp(log π_ref − log π_θ, −20, 20)``. Equal to k3 wherever ``k3 ≤ 10``;
    bounds the penalty (and its gradient) of tokens the reference finds very unlikely."""
    x = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.expm1(x) - x, -10.0, 10.0)


@register_kl_estimator("k3+")
def kl_k3_importance_weighted(logp: Tensor, ref_logp: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """Importance-weighted k3, ``ρ · (exp(x) − x − 1)`` with ``ρ = π_θ / π_old`` (with its
    gradient) and ``x = log π_ref − log π_θ``: DeepSeek-V3.2's unbiased KL estimate (TRL's
    ``use_bias_correction_kl``).

    Why: the tokens were sampled from π_old, and ``∇ E_{π_old}[k3]`` is not ``∇ KL(π_θ‖π_ref)``.
    With the weight, ``∇(ρ·k3) = ρ (log π_θ − log π_ref) ∇log π_θ``, which is the
    importance-sampled gradient of the KL. At ρ = 1 the value equals k3.
    Convention: veRL's ``k3+`` is different (k3's value with k2's gradient through a
    straight-through trick); for on-policy samples both gradients coincide.
    """
    if old_logp is None:
        raise ValueError("the k3+ KL estimator needs old_logp (log π_old, the sampling policy)")
    ratio = torch.exp(torch.clamp(logp - old_logp.detach(), -20.0, 20.0))
    return ratio * kl_k3(logp, ref_logp)


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class LossScale:
    """The denominators of the loss aggregations, counted over the whole minibatch.

    A minibatch split into micro-batches (or left partly out of the backward, or spread
    over ranks) must give the gradient of one backward over all of it. Each aggregation
    is a sum of per-token terms over one denominator; when every micro-batch divides
    its own sum by the *minibatch's* counts, the micro-batch losses add up to the
    minibatch loss exactly, and so do their gradients.

    - ``num_seqs``: completions in the minibatch (rows left out of the backward included);
    - ``num_tokens``: valid (loss-mask) tokens in those completions;
    - ``max_len``: the generation limit, the constant of ``seq-mean-token-sum-norm``.

    ``None`` means "this batch's own count" (one backward over the whole minibatch).
    """

    num_seqs: float | None = None
    num_tokens: float | None = None
    max_len: int | None = None

    @staticmethod
    def of(mask: Tensor, max_len: int | None = None) -> "LossScale":
        """The counts of a whole minibatch given its ``[N, T]`` loss mask."""
        return LossScale(float(mask.shape[0]), float(mask.bool().sum()), max_len)


def _per_seq_sum(per_token: Tensor, valid: Tensor) -> Tensor:
    return _zero_padding(per_token, valid).sum(dim=1)


def _over(total: Tensor, count: float | Tensor) -> Tensor:
    """``total / count``, and 0 (not nan) when the count is 0."""
    count = torch.as_tensor(count, dtype=total.dtype, device=total.device)
    return total / count.clamp(min=1)


@register_loss_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, scale: LossScale = LossScale()) -> Tensor:
    """``L = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}`` (DeepSeekMath): mean over each completion's
    tokens, then over the N (``scale.num_seqs``) completions. A completion with no valid
    token contributes 0 and still counts in N."""
    valid = mask.bool()
    per_seq = _per_seq_sum(per_token, valid) / valid.sum(dim=1).clamp(min=1)
    return _over(per_seq.sum(), per_token.shape[0] if scale.num_seqs is None else scale.num_seqs)


@register_loss_aggregation("token-mean")
def token_mean(per_token: Tensor, mask: Tensor, scale: LossScale = LossScale()) -> Tensor:
    """``L = Σ_i Σ_t ℓ_{i,t} / Σ_i |o_i|`` (DAPO): every valid token of the minibatch weighs
    the same; the denominator is ``scale.num_tokens``. No valid token at all gives 0."""
    valid = mask.bool()
    total = _zero_padding(per_token, valid).sum()
    return _over(total, valid.sum() if scale.num_tokens is None else scale.num_tokens)


@register_loss_aggregation("seq-mean-token-sum")
def seq_mean_token_sum(per_token: Tensor, mask: Tensor, scale: LossScale = LossScale()) -> Tensor:
    """``L = (1/N) Σ_i Σ_t ℓ_{i,t}``: each completion's token sum, then the mean over the N
    completions (veRL's ``seq-mean-token-sum``; with GSPO it is TRL's ``luspo``, which
    weighs each sequence's loss by its length)."""
    return _over(_per_seq_sum(per_token, mask.bool()).sum(),
                 per_token.shape[0] if scale.num_seqs is None else scale.num_seqs)


@register_loss_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, scale: LossScale = LossScale()) -> Tensor:
    """``L = (1/N) Σ_i Σ_t ℓ_{i,t} / max_len`` (Dr. GRPO): each completion's token sum
    over a constant (the generation limit ``scale.max_len``), then the mean over the N
    completions. ``max_len`` is required; it must be ≥ the row length T so no completion
    is longer."""
    max_len = scale.max_len
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
    return seq_mean_token_sum(per_token, mask, scale) / max_len


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str = "seq-mean-token-mean", scale: LossScale = LossScale()
) -> Tensor:
    """Reduce a per-token loss ``[N, T]`` to a scalar with the aggregation ``mode`` from
    :data:`LOSS_AGGREGATIONS` (formulas in each one's docstring), over the denominators
    of ``scale``. Padding never counts; completions with zero valid tokens never produce
    ``nan``."""
    check_same_2d_shape(per_token=per_token, mask=mask)
    return get_loss_aggregation(mode)(per_token, mask, scale)


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
