"""Advantages: the critic-free estimators (GRPO and its relatives, outcome and process),
GAE, whitening, PPO's per-token rewards.

Pure tensor math: tensors in, tensors out; no model, no I/O, no config object.

Conventions (every function):
- completions are rows of right-padded tensors ``[N, T]``; ``mask`` ``[N, T]`` is 1 on
  completion tokens and 0 on padding (bool or any numeric dtype);
- ``G = group_size`` consecutive rows share a prompt, so ``N = num_groups * G``;
- whatever sits in padding positions (even ``nan`` or ``inf``) never reaches a result,
  and outputs are exactly 0 on padding.

Standard deviations are *sample* standard deviations (Bessel's ``n - 1`` divisor, as
``torch.std`` computes by default and as DeepSeekMath / TRL / veRL use); a set with a
single element has standard deviation 0 here rather than ``nan``.

The critic-free estimators are registered by name in :data:`ADVANTAGE_ESTIMATORS`
(``algo.advantage``), all with one signature, ``estimator(AdvantageInputs) -> [N, T]``
token advantages; each one's docstring gives its formula, its paper and the inputs it
reads. GAE (:func:`gae`) is PPO's, computed from the critic's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from verirl.registry import lookup, registrar

SCALES: tuple[str, ...] = ("group_std", "none", "batch_std")


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything a critic-free estimator may read (each uses the fields its docstring names)."""

    rewards: Tensor  # [N] outcome rewards R_i (the weighted sum of the verifiers)
    mask: Tensor  # [N, T] completion-token mask
    group_size: int  # G
    eps: float = 1e-6  # ε_std added to standard deviations
    scale: str = "group_std"  # grpo: group_std | none | batch_std
    gamma: float = 1.0  # reinforce_plus_plus: discount γ
    step_rewards: Tensor | None = None  # [N, K] process: reward of step j of completion i
    step_index: Tensor | None = None  # [N, K] process: the index of step j's last token
    step_mask: Tensor | None = None  # [N, K] process: 1 where completion i has a step j
    baseline: Tensor | None = None  # [N] remax: the reward of the greedy completion of each row's prompt
    term_rewards: Tensor | None = None  # [N, K] gdpo: each reward term's unweighted score (nan: does not apply)
    term_weights: Tensor | None = None  # [K] gdpo: the terms' weights


AdvantageEstimator = Callable[[AdvantageInputs], Tensor]
#: a sum over every process of a run (all-reduce); within one process, the identity
AllSum = Callable[[Tensor], Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
#: Estimators of process supervision (step rewards); the others take outcome rewards.
PROCESS_ESTIMATORS: frozenset[str] = frozenset({"grpo_process", "dr_grpo_process"})

register_advantage_estimator = registrar(ADVANTAGE_ESTIMATORS, "advantage estimator")
"""Decorator: ``@register_advantage_estimator(name)`` adds a function to :data:`ADVANTAGE_ESTIMATORS`."""


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The advantage estimator registered as ``name``; unknown names raise ``ValueError``."""
    return lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


# --------------------------------------------------------------------------- checks


def check_same_2d_shape(**tensors: Tensor) -> None:
    """ValueError naming the offenders unless every tensor is 2-D ``[N, T]`` of one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{name} must be a 2-D [N, T] tensor, got shape {shape}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n}{list(s)}" for n, s in shapes.items())
        raise ValueError(f"these tensors must all have the same [N, T] shape: {listed}")


def _check_right_padded(mask: Tensor) -> None:
    """Each row of ``mask`` must be ones then zeros: the last valid token is ``count - 1``."""
    m = mask.bool()
    if m.shape[1] > 1 and bool((m[:, 1:] & ~m[:, :-1]).any()):
        row = int((m[:, 1:] & ~m[:, :-1]).any(dim=1).nonzero()[0])
        raise ValueError(
            f"mask row {row} is not right-padded (a valid token follows padding); "
            "each row must be 1 on the completion tokens then 0 on the padding"
        )


def _check_groups(n: int, group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if n % group_size != 0:
        raise ValueError(
            f"the batch has {n} rows, not a multiple of group_size={group_size}: "
            "rows must come in whole groups of group_size completions per prompt"
        )
    return n // group_size


def _check_finite(name: str, x: Tensor, where: Tensor | None = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be finite; found {x[index].item()} at index {index}")


def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


# --------------------------------------------------------------------------- masked stats


def local_sum(total: Tensor) -> Tensor:
    """The :data:`AllSum` of a single process: the sum as it is."""
    return total


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None, all_sum: AllSum = local_sum) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is nonzero.

    ``mean = Σ_t m_t x_t / Σ_t m_t``, over all positions (``dim=None``, a 0-d tensor)
    or along ``dim``. Padding values never enter (not even ``nan``); an empty selection
    has mean 0 (the denominator is clamped to at least 1). ``all_sum`` (``dim=None``
    only) adds each sum over processes, so the mean is over every process's positions.
    """
    m = mask.bool()
    x = _float(x)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return all_sum(total.sum()) / all_sum(m.sum()).clamp(min=1)
    return total.sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True, all_sum: AllSum = local_sum) -> Tensor:
    """Variance of ``x`` over the valid positions of ``mask`` (a 0-d tensor).

    ``var = Σ_t m_t (x_t − mean)² / (n − 1)`` with ``n = Σ_t m_t`` (``n`` when
    ``unbiased=False``). With fewer than 2 valid positions the variance is 0. ``all_sum``:
    as in :func:`masked_mean`.
    """
    m = mask.bool()
    mean = masked_mean(x, m, all_sum=all_sum)
    sq = torch.where(m, (_float(x) - mean) ** 2, torch.zeros((), dtype=mean.dtype, device=x.device))
    n = all_sum(m.sum())
    denom = (n - 1) if unbiased else n
    return all_sum(sq.sum()) / denom.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True,
                  all_sum: AllSum = local_sum) -> Tensor:
    """Whiten ``x`` with the mean and (sample) variance of its valid positions.

    ``x̂ = (x − mean) / sqrt(var + eps)`` (PPO normalises its advantages this way over
    the batch's valid tokens); with ``shift_mean=False`` the mean is added back,
    ``x̂ = (x − mean) / sqrt(var + eps) + mean``, so only the scale changes. Padding does
    not enter the statistics, and the result is 0 on padding. ``all_sum``: as in
    :func:`masked_mean` (several processes whiten over all their positions).
    """
    m = mask.bool()
    mean = masked_mean(x, m, all_sum=all_sum)
    var = masked_var(x, m, all_sum=all_sum)
    whitened = (_float(x) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


# --------------------------------------------------------------------------- GRPO


def _sample_std(x: Tensor, dim: int) -> Tensor:
    """Sample std along ``dim``; 0 (not nan) where there is a single element."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.select(dim, 0))
    return x.std(dim=dim, unbiased=True)


def group_normalized_advantages(
    rewards: Tensor, group_size: int, scale: str = "group_std", eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """GRPO outcome-supervision advantages (DeepSeekMath §4.1.2), one per completion.

    ``Â_{i,t} = (R_i − mean(R_1..R_G)) / (std(R_1..R_G) + ε_std)`` for every token t of
    completion i; this returns the per-completion value, to be broadcast to its tokens
    with :func:`broadcast_to_tokens`.

    Args:
        rewards: ``[N]`` outcome rewards ``R_i``, ``N = num_groups * group_size``, groups
            of ``group_size`` consecutive rows sharing a prompt; must be finite.
        group_size: ``G``.
        scale: ``group_std`` (divide by the group's std + eps), ``none`` (Dr. GRPO: only
            subtract the group mean) or ``batch_std`` (subtract the group mean, divide by
            the std of all N rewards + eps).
        eps: ``ε_std``.

    The std is the *sample* std (divisor ``G − 1``; 0 for a single element).

    Returns:
        ``(advantages [N] float, zero_std [num_groups] bool)``: ``zero_std[g]`` is True
        where every reward of group g is equal (so it carries no learning signal); those
        groups' advantages are exactly 0.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D [N] tensor, got shape {tuple(rewards.shape)}")
    num_groups = _check_groups(rewards.shape[0], group_size)
    rewards = _float(rewards)
    _check_finite("rewards", rewards)

    grouped = rewards.view(num_groups, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    # Exact equality, not std < tol: "all rewards equal" is the DAPO drop criterion.
    zero_std = grouped.amax(dim=1) == grouped.amin(dim=1)
    centered = grouped - mean
    if scale == "group_std":
        adv = centered / (_sample_std(grouped, dim=1).unsqueeze(1) + eps)
    elif scale == "batch_std":
        adv = centered / (_sample_std(rewards, dim=0) + eps)
    else:
        adv = centered
    adv = torch.where(zero_std.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.reshape(-1), zero_std


def _check_steps(step_rewards: Tensor, step_index: Tensor, step_mask: Tensor, mask: Tensor) -> Tensor:
    """The step mask as bool, after checking the three ``[N, K]`` step tensors against
    ``mask`` ``[N, T]``: every step's last token is a completion token of its row."""
    check_same_2d_shape(step_rewards=step_rewards, step_index=step_index, step_mask=step_mask)
    if mask.dim() != 2 or step_mask.shape[0] != mask.shape[0]:
        raise ValueError(f"step tensors [N, K] and mask [N, T] need the same N; got {tuple(step_mask.shape)} "
                         f"and {tuple(mask.shape)}")
    if step_index.is_floating_point():
        raise ValueError(f"step_index must hold integer token indices, got dtype {step_index.dtype}")
    steps = step_mask.bool()
    t = mask.shape[1]
    index = step_index.long()
    outside = steps & ((index < 0) | (index >= t))
    if not bool(outside.any()):
        outside = steps & ~mask.bool().gather(1, index.clamp(0, max(t - 1, 0)))
    if bool(outside.any()):
        row, k = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"step {k} of row {row} ends at token {int(index[row, k])}, a padding position of mask; a step's "
            "reward must sit on its last completion token"
        )
    _check_finite("step_rewards", _float(step_rewards), where=steps)
    return steps


def steps_to_tokens(step_rewards: Tensor, step_index: Tensor, step_mask: Tensor, mask: Tensor) -> Tensor:
    """Dense ``[N, T]`` per-token rewards from a step list: each step's reward added on its
    last token, ``r_t = Σ_{j : e(j) = t} r^{(j)}`` (PPO's per-token rewards, where two steps
    ending on one token give that token both rewards). The step tensors are ``[N, K]`` as in
    :func:`process_advantages`."""
    steps = _check_steps(step_rewards, step_index, step_mask, mask)
    values = torch.where(steps, _float(step_rewards), torch.zeros((), dtype=_float(step_rewards).dtype))
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    return dense.scatter_add(1, step_index.long().clamp(0, max(mask.shape[1] - 1, 0)), values)


def process_advantages(
    step_rewards: Tensor, step_index: Tensor, step_mask: Tensor, mask: Tensor, group_size: int,
    eps: float = 1e-6, scale: str = "group_std",
) -> Tensor:
    """GRPO process-supervision advantages (DeepSeekMath §4.1.3), per token.

    Step j of completion i has reward ``r_i^{(j)}`` and ends on token ``e(j)``. All step
    rewards ``R`` of the group are normalised together, then each token gets the sum of
    its own and all later steps':

    ``r̃_i^{(j)} = (r_i^{(j)} − mean(R)) / (std(R) + ε)``,
    ``Â_{i,t} = Σ_{j : e(j) ≥ t} r̃_i^{(j)}``.

    Every step is a reward of its own: two steps whose ends fall on one token are two
    members of ``R`` (the group's mean and std count both) and both add to that token's
    and the earlier tokens' advantages.

    Args:
        step_rewards: ``[N, K]`` ``r_i^{(j)}``, K the most steps of any completion (values
            where ``step_mask`` is 0 are ignored, even ``nan``).
        step_index: ``[N, K]`` integer ``e(j)``, the index of step j's last completion token.
        step_mask: ``[N, K]``, 1 where completion i has a step j.
        mask: ``[N, T]`` completion-token mask; every step must end on a valid token.
        group_size: ``G``; ``N = num_groups * G``.
        eps: ``ε`` added to the (sample) std.
        scale: ``group_std`` (the formula above) or ``none`` (Dr. GRPO's choice: only
            subtract the mean, ``r̃ = r − mean(R)``).

    Groups with fewer than 2 step rewards, or whose step rewards are all equal, carry no
    signal: all their advantages are 0. A completion with no step, and the tokens after a
    completion's last step (the EOS token, when the last step ends on the last word), get
    0: no step ends at or after them. Padding is 0.

    Returns:
        ``[N, T]`` float advantages.
    """
    if scale not in ("group_std", "none"):
        raise ValueError(f"process advantages scale must be group_std or none, got {scale!r}")
    steps = _check_steps(step_rewards, step_index, step_mask, mask)
    n, t = mask.shape
    k = steps.shape[1]
    num_groups = _check_groups(n, group_size)
    r = _float(step_rewards).reshape(num_groups, group_size * k)
    s = steps.reshape(num_groups, group_size * k)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    count = s.sum(dim=1, keepdim=True)
    mean = torch.where(s, r, zero).sum(dim=1, keepdim=True) / count.clamp(min=1)
    var = torch.where(s, (r - mean) ** 2, zero).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
    all_equal = torch.where(s, r, -inf).amax(dim=1, keepdim=True) == torch.where(
        s, r, inf
    ).amin(dim=1, keepdim=True)
    has_signal = (count >= 2) & ~all_equal
    spread = var.sqrt() + eps if scale == "group_std" else torch.ones_like(var)
    normalized = torch.where(s & has_signal, (r - mean) / spread, zero).reshape(n, k)
    # each step's r̃ on its last token (steps sharing a token add up), then a reverse
    # cumulative sum: position t collects the steps ending at or after t
    at_token = torch.zeros((n, t), dtype=r.dtype, device=r.device).scatter_add(
        1, step_index.long().clamp(0, max(t - 1, 0)), normalized)
    adv = at_token.flip(1).cumsum(1).flip(1)
    return torch.where(mask.bool(), adv, zero)


def broadcast_to_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    """Broadcast per-completion advantages to their tokens: ``Â_{i,t} = Â_i · m_{i,t}``.

    ``adv`` is ``[N]``, ``mask`` ``[N, T]``; returns ``[N, T]``, 0 on padding.
    """
    if adv.dim() != 1 or mask.dim() != 2 or adv.shape[0] != mask.shape[0]:
        raise ValueError(
            f"adv must be [N] and mask [N, T] with the same N; got adv {tuple(adv.shape)}, "
            f"mask {tuple(mask.shape)}"
        )
    adv = _float(adv)
    return torch.where(mask.bool(), adv.unsqueeze(1), torch.zeros((), dtype=adv.dtype, device=adv.device))


# --------------------------------------------------------------------------- the estimators


def _grouped_rewards(x: AdvantageInputs) -> Tensor:
    """``[B, G]`` float rewards, checked: 1-D, finite, whole groups."""
    if x.rewards.dim() != 1 or x.mask.dim() != 2 or x.rewards.shape[0] != x.mask.shape[0]:
        raise ValueError(
            f"rewards must be [N] and mask [N, T] with the same N; got rewards {tuple(x.rewards.shape)}, "
            f"mask {tuple(x.mask.shape)}"
        )
    num_groups = _check_groups(x.rewards.shape[0], x.group_size)
    rewards = _float(x.rewards)
    _check_finite("rewards", rewards)
    return rewards.view(num_groups, x.group_size)


def _needs_pairs(name: str, group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"the {name} advantage needs group_size >= 2 (a baseline from the other samples)")


@register_advantage_estimator("grpo")
def grpo_advantages(x: AdvantageInputs) -> Tensor:
    """GRPO (DeepSeekMath §4.1.2, arXiv 2402.03300): ``Â_{i,t} = (R_i − mean_g R) / (std_g R + ε)``
    on every token (:func:`group_normalized_advantages`, with ``x.scale`` choosing
    ``group_std``, ``batch_std`` or ``none``). Reads ``rewards``, ``group_size``, ``eps``, ``scale``."""
    seq, _ = group_normalized_advantages(x.rewards, x.group_size, x.scale, x.eps)
    return broadcast_to_tokens(seq, x.mask)


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(x: AdvantageInputs) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): ``Â_{i,t} = R_i − mean_g R``, no division
    by the std (which biases toward questions of low or high difficulty). Pair it with the
    ``seq-mean-token-sum-norm`` aggregation for the paper's whole recipe."""
    grouped = _grouped_rewards(x)
    return broadcast_to_tokens((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1), x.mask)


@register_advantage_estimator("rloo")
def rloo_advantages(x: AdvantageInputs) -> Tensor:
    """RLOO (Ahmadian et al. 2024, arXiv 2402.14740): each sample's baseline is the mean of
    the group's *other* samples, ``Â_i = R_i − (1/(G−1)) Σ_{j≠i} R_j = G/(G−1) · (R_i − mean_g R)``."""
    grouped = _grouped_rewards(x)
    _needs_pairs("rloo", x.group_size)
    G = x.group_size
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (G - 1)
    return broadcast_to_tokens((grouped - others).reshape(-1), x.mask)


@register_advantage_estimator("opo")
def opo_advantages(x: AdvantageInputs) -> Tensor:
    """OPO (On-Policy RL with Optimal reward baseline, arXiv 2505.23585): a length-weighted
    group baseline, ``Â_i = R_i − Σ_j |o_j| R_j / Σ_j |o_j|``."""
    grouped = _grouped_rewards(x)
    lengths = x.mask.bool().sum(dim=1).to(grouped.dtype).view_as(grouped)
    baseline = (lengths * grouped).sum(dim=1, keepdim=True) / lengths.sum(dim=1, keepdim=True).clamp(min=1)
    return broadcast_to_tokens((grouped - baseline).reshape(-1), x.mask)


@register_advantage_estimator("gpg")
def gpg_advantages(x: AdvantageInputs) -> Tensor:
    """GPG (Group Policy Gradient, arXiv 2504.02546): the group-centred reward scaled up by
    the share of samples with a nonzero reward, ``Â_i = α (R_i − mean_g R)``,
    ``α = N / max(1, #{i : R_i ≠ 0})`` (veRL's ``gpg`` with ``f_norm = 1``)."""
    grouped = _grouped_rewards(x)
    alpha = grouped.numel() / max(int((grouped != 0).sum()), 1)
    return broadcast_to_tokens((alpha * (grouped - grouped.mean(dim=1, keepdim=True))).reshape(-1), x.mask)


@register_advantage_estimator("grpo_passk")
def grpo_passk_advantages(x: AdvantageInputs) -> Tensor:
    """Pass@k training (Chen et al. 2025, arXiv 2503.19595, veRL's ``grpo_passk``): only the
    best completion of each group learns, ``Â_best = (r_max − r_second) / (std_g R + ε)``
    (no division with ``scale: none``); every other completion gets 0. Ties go to the
    first of the best."""
    grouped = _grouped_rewards(x)
    _needs_pairs("grpo_passk", x.group_size)
    top = torch.topk(grouped, 2, dim=1)
    gap = top.values[:, 0] - top.values[:, 1]
    if x.scale != "none":
        gap = gap / (_sample_std(grouped, dim=1) + x.eps)
    adv = torch.zeros_like(grouped)
    adv[torch.arange(grouped.shape[0], device=grouped.device), top.indices[:, 0]] = gap
    return broadcast_to_tokens(adv.reshape(-1), x.mask)


@register_advantage_estimator("reinforce_plus_plus")
def reinforce_plus_plus_advantages(x: AdvantageInputs) -> Tensor:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): the discounted return of each token,
    whitened over all valid tokens of the batch (no group baseline).

    The reward ``R_i`` sits on the last token, so ``G_{i,t} = γ^{|o_i|−1−t} R_i``, then
    ``Â = (G − mean G) / sqrt(var G + 1e−8)`` over the batch's valid tokens
    (:func:`masked_whiten`). Reads ``rewards``, ``mask``, ``gamma``. In GRPO mode the KL
    to π_ref is in the loss, so it is not in these returns.
    """
    if not 0.0 <= float(x.gamma) <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {x.gamma!r}")
    _check_right_padded(x.mask)
    rewards = _float(x.rewards)
    _check_finite("rewards", rewards)
    valid = x.mask.bool()
    lengths = valid.sum(dim=1, keepdim=True)
    steps_to_end = (lengths - 1 - torch.arange(valid.shape[1], device=valid.device)).clamp(min=0)
    returns = rewards.unsqueeze(1) * torch.pow(torch.tensor(float(x.gamma), dtype=rewards.dtype), steps_to_end)
    return masked_whiten(torch.where(valid, returns, torch.zeros_like(returns)), valid)


@register_advantage_estimator("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline_advantages(x: AdvantageInputs) -> Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262): the group-centred reward on every token,
    whitened over all valid tokens of the batch: ``Â = whiten(R_i − mean_g R)``."""
    grouped = _grouped_rewards(x)
    centred = broadcast_to_tokens((grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1), x.mask)
    return masked_whiten(centred, x.mask)


@register_advantage_estimator("remax")
def remax_advantages(x: AdvantageInputs) -> Tensor:
    """ReMax (Li et al. 2023, arXiv 2310.10505): the baseline is the reward of the greedy
    completion of the same prompt, ``Â_i = R_i − R(greedy_i)`` (``baseline`` ``[N]``, the
    greedy reward repeated on each row of its group). The trainer samples the greedy
    completions when this estimator is chosen."""
    if x.baseline is None:
        raise ValueError("the remax advantage needs baseline: the reward of each prompt's greedy completion")
    rewards = _float(x.rewards)
    baseline = _float(x.baseline).to(rewards.dtype)
    if baseline.shape != rewards.shape:
        raise ValueError(f"baseline must be [N] like rewards, got {tuple(baseline.shape)} vs {tuple(rewards.shape)}")
    _check_finite("rewards", rewards)
    _check_finite("baseline", baseline)
    return broadcast_to_tokens(rewards - baseline, x.mask)


@register_advantage_estimator("gdpo")
def gdpo_advantages(x: AdvantageInputs) -> Tensor:
    """GDPO (group reward-decoupled normalisation, arXiv 2601.05242; TRL's
    ``multi_objective_aggregation="normalize_then_sum"``): normalise each reward term
    within the group first, then sum with the weights, then normalise over the batch.

    With ``s_{i,k}`` term k's unweighted score and ``w_k`` its weight:
    ``ŝ_{i,k} = (s_{i,k} − mean_g s_k) / (std_g s_k + ε)``, ``S_i = Σ_k w_k ŝ_{i,k}``,
    ``Â_i = (S_i − mean S) / (std S + ε)`` over all N. A score that does not apply
    (``nan``) is left out of its term's group statistics and adds 0. With one term this is
    GRPO followed by a batch normalisation. Reads ``term_rewards``, ``term_weights``.
    """
    if x.term_rewards is None or x.term_weights is None:
        raise ValueError("the gdpo advantage needs term_rewards [N, K] and term_weights [K]")
    scores = _float(x.term_rewards)
    if scores.dim() != 2 or scores.shape[0] != x.mask.shape[0] or x.term_weights.shape != (scores.shape[1],):
        raise ValueError(
            f"term_rewards must be [N, K] and term_weights [K]; got {tuple(scores.shape)} and "
            f"{tuple(x.term_weights.shape)} for N={x.mask.shape[0]}"
        )
    num_groups = _check_groups(scores.shape[0], x.group_size)
    grouped = scores.view(num_groups, x.group_size, -1)
    present = ~torch.isnan(grouped)
    _check_finite("term_rewards", torch.where(present, grouped, torch.zeros_like(grouped)))
    count = present.sum(dim=1, keepdim=True)
    filled = torch.where(present, grouped, torch.zeros_like(grouped))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    var = torch.where(present, (grouped - mean) ** 2, torch.zeros_like(grouped)).sum(dim=1, keepdim=True)
    std = (var / (count - 1).clamp(min=1)).sqrt()
    normalised = torch.where(present, (grouped - mean) / (std + x.eps), torch.zeros_like(grouped))
    summed = (normalised * x.term_weights.to(normalised.dtype)).sum(dim=-1).reshape(-1)
    adv = (summed - summed.mean()) / (_sample_std(summed, dim=0) + x.eps)
    return broadcast_to_tokens(adv, x.mask)


def _process_inputs(x: AdvantageInputs) -> tuple[Tensor, Tensor, Tensor]:
    if x.step_rewards is None or x.step_index is None or x.step_mask is None:
        raise ValueError("process advantages need step_rewards, step_index and step_mask (algo.reward_mode=process)")
    return x.step_rewards, x.step_index, x.step_mask


@register_advantage_estimator("grpo_process")
def grpo_process_advantages(x: AdvantageInputs) -> Tensor:
    """GRPO with process supervision (DeepSeekMath §4.1.3): every step reward of the group
    normalised together, each token gets the sum of its own and all later steps'
    normalised rewards (:func:`process_advantages`)."""
    return process_advantages(*_process_inputs(x), x.mask, x.group_size, x.eps)


@register_advantage_estimator("dr_grpo_process")
def dr_grpo_process_advantages(x: AdvantageInputs) -> Tensor:
    """Process supervision without the std division (Dr. GRPO's choice applied to
    DeepSeekMath §4.1.3): ``r̃ = r − mean(R)`` over the group's step rewards, summed over
    each token's own and later steps (:func:`process_advantages` with ``scale="none"``)."""
    return process_advantages(*_process_inputs(x), x.mask, x.group_size, x.eps, scale="none")


# --------------------------------------------------------------------------- PPO


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, computed backwards over each completion.

    ``δ_t = r_t + γ V_old(s_{t+1}) − V_old(s_t)``, with ``V_old(s_{T+1}) = 0``
    (past each row's last valid token), ``A_t = δ_t + γ λ A_{t+1}``, and the critic's
    target (the λ-return) ``G_t = A_t + V_old(s_t)``.

    Args:
        rewards: ``[N, T]`` per-token rewards ``r_t`` (see :func:`per_token_rewards_for_ppo`).
        values: ``[N, T]`` ``V_old(s_t)`` from the critic at rollout time.
        mask: ``[N, T]`` right-padded completion-token mask.
        gamma: discount ``γ`` in [0, 1]; lam: ``λ`` in [0, 1].

    Returns:
        ``(advantages, returns)``, both ``[N, T]``, detached, 0 on padding. Padding
        values of ``rewards``/``values`` never leak into valid positions.
    """
    check_same_2d_shape(rewards=rewards, values=values, mask=mask)
    for name, v in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    _check_right_padded(mask)
    valid = mask.bool()
    zero = torch.zeros((), dtype=_float(rewards).dtype, device=rewards.device)
    r = torch.where(valid, _float(rewards), zero)
    v = torch.where(valid, _float(values).to(r.dtype), zero)
    n, t_len = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(n, dtype=r.dtype, device=r.device)
    next_adv = torch.zeros(n, dtype=r.dtype, device=r.device)
    for t in reversed(range(t_len)):
        # next_value / next_adv are 0 past the last valid token (right padding zeroed them).
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = torch.where(valid[:, t], delta + gamma * lam * next_adv, zero)
        adv[:, t] = a_t
        next_value = v[:, t]
        next_adv = a_t
    returns = torch.where(valid, adv + v, zero)
    return adv, returns


def per_token_rewards_for_ppo(
    scores: Tensor,
    logp_old: Tensor | None,
    logp_ref: Tensor | None,
    mask: Tensor,
    beta_r: float,
) -> Tensor:
    """PPO's per-token rewards: a KL penalty on every token plus the verifier scores.

    ``r_t = −β_r · (log π_old(a_t|s_t) − log π_ref(a_t|s_t))`` for every valid token, plus
    the outcome reward ``R`` on the last valid token (process rewards: each step reward
    on its step's last token). The KL goes into the reward here, not the loss.

    Args:
        scores: either ``[N]`` outcome rewards, placed on each row's last valid token, or
            ``[N, T]`` dense scores already placed (e.g. step rewards on each step's last
            token); a dense score on a padding position is an error.
        logp_old, logp_ref: ``[N, T]`` log-probs of the sampled tokens under ``π_old`` and
            ``π_ref``; both may be ``None`` when ``beta_r == 0`` (no reference model).
        mask: ``[N, T]`` right-padded completion-token mask.
        beta_r: ``β_r`` ≥ 0.

    Returns:
        ``[N, T]`` float rewards, detached, 0 on padding.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be a 2-D [N, T] tensor, got shape {tuple(mask.shape)}")
    if float(beta_r) < 0:
        raise ValueError(f"beta_r must be >= 0, got {beta_r!r}")
    _check_right_padded(mask)
    valid = mask.bool()
    n = mask.shape[0]
    scores = _float(scores.detach())
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    if scores.dim() == 1:
        if scores.shape[0] != n:
            raise ValueError(f"outcome scores must be [N]={n}, got shape {tuple(scores.shape)}")
        _check_finite("scores", scores)
        lengths = valid.sum(dim=1)
        if bool((lengths == 0).any()):
            row = int((lengths == 0).nonzero()[0])
            raise ValueError(
                f"row {row} has no valid token, so its outcome reward has nowhere to go; "
                "every completion needs at least one token in mask"
            )
        placed = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        placed[torch.arange(n, device=scores.device), lengths - 1] = scores
    elif scores.dim() == 2:
        check_same_2d_shape(scores=scores, mask=mask)
        off = (scores != 0) & ~valid
        if bool(off.any()):
            index = tuple(int(i) for i in off.nonzero()[0])
            raise ValueError(
                f"dense scores are nonzero at {index}, a padding position of mask; "
                "place each reward on a completion token"
            )
        _check_finite("scores", scores, where=valid)
        placed = torch.where(valid, scores, zero)
    else:
        raise ValueError(f"scores must be [N] or [N, T], got shape {tuple(scores.shape)}")

    if float(beta_r) == 0.0:
        return placed
    if logp_old is None or logp_ref is None:
        raise ValueError("beta_r > 0 needs both logp_old and logp_ref (pass beta_r=0 without a reference)")
    check_same_2d_shape(logp_old=logp_old, logp_ref=logp_ref, mask=mask)
    kl = _float(logp_old.detach()).to(scores.dtype) - _float(logp_ref.detach()).to(scores.dtype)
    return placed + torch.where(valid, -float(beta_r) * kl, zero)
