"""Advantages: GRPO group normalisation (outcome and process), GAE, whitening, PPO rewards.

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

Estimators are registered by name in :data:`ADVANTAGE_ESTIMATORS` so the trainer picks
one once from its config (:func:`get_advantage_estimator`):
``grpo`` (outcome), ``grpo_process`` (process supervision), ``gae`` (PPO with a critic).
Their signatures differ by kind; each one's docstring is its contract.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from verirl.registry import lookup, registrar

ADVANTAGE_ESTIMATORS: dict[str, Callable[..., object]] = {}

SCALES: tuple[str, ...] = ("group_std", "none", "batch_std")


register_advantage_estimator = registrar(ADVANTAGE_ESTIMATORS, "advantage estimator")
"""Decorator: ``@register_advantage_estimator(name)`` adds a function to :data:`ADVANTAGE_ESTIMATORS`."""


def get_advantage_estimator(name: str) -> Callable[..., object]:
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


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is nonzero.

    ``mean = Σ_t m_t x_t / Σ_t m_t``, over all positions (``dim=None``, a 0-d tensor)
    or along ``dim``. Padding values never enter (not even ``nan``); an empty selection
    has mean 0 (the denominator is clamped to at least 1).
    """
    m = mask.bool()
    x = _float(x)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return total.sum() / m.sum().clamp(min=1)
    return total.sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the valid positions of ``mask`` (a 0-d tensor).

    ``var = Σ_t m_t (x_t − mean)² / (n − 1)`` with ``n = Σ_t m_t`` (``n`` when
    ``unbiased=False``). With fewer than 2 valid positions the variance is 0.
    """
    m = mask.bool()
    mean = masked_mean(x, m)
    sq = torch.where(m, (_float(x) - mean) ** 2, torch.zeros((), dtype=mean.dtype, device=x.device))
    n = m.sum()
    denom = (n - 1) if unbiased else n
    return sq.sum() / denom.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """Whiten ``x`` with the mean and (sample) variance of its valid positions.

    ``x̂ = (x − mean) / sqrt(var + eps)`` (PPO normalises its advantages this way over
    the batch's valid tokens); with ``shift_mean=False`` the mean is added back,
    ``x̂ = (x − mean) / sqrt(var + eps) + mean``, so only the scale changes. Padding does
    not enter the statistics, and the result is 0 on padding.
    """
    m = mask.bool()
    mean = masked_mean(x, m)
    var = masked_var(x, m)
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


@register_advantage_estimator("grpo")
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


@register_advantage_estimator("grpo_process")
def process_advantages(
    step_rewards: Tensor, step_mask: Tensor, mask: Tensor, group_size: int, eps: float = 1e-6
) -> Tensor:
    """GRPO process-supervision advantages (DeepSeekMath §4.1.3), per token.

    The reward of step j of completion i sits at ``e(j)``, the index of the step's last
    token (``step_mask`` is 1 exactly there). All step rewards ``R`` of the group are
    normalised together, then each token gets the sum of its own and all later steps':

    ``r̃_i^{(j)} = (r_i^{(j)} − mean(R)) / (std(R) + ε)``,
    ``Â_{i,t} = Σ_{j : e(j) ≥ t} r̃_i^{(j)}``.

    Args:
        step_rewards: ``[N, T]`` step rewards placed at each step's last token (values
            elsewhere are ignored).
        step_mask: ``[N, T]``, 1 at each step's last token; must lie inside ``mask``.
        mask: ``[N, T]`` completion-token mask.
        group_size: ``G``; ``N = num_groups * G``.
        eps: ``ε`` added to the (sample) std.

    Groups with fewer than 2 step rewards, or whose step rewards are all equal, carry no
    signal: all their advantages are 0. Tokens after a completion's last step get 0
    (no later step), and padding is 0.

    Returns:
        ``[N, T]`` float advantages.
    """
    check_same_2d_shape(step_rewards=step_rewards, step_mask=step_mask, mask=mask)
    n, t = mask.shape
    num_groups = _check_groups(n, group_size)
    valid = mask.bool()
    steps = step_mask.bool()
    if bool((steps & ~valid).any()):
        index = tuple(int(i) for i in (steps & ~valid).nonzero()[0])
        raise ValueError(
            f"step_mask is 1 at {index}, a padding position of mask; a step's reward must "
            "sit on its last completion token"
        )
    step_rewards = _float(step_rewards)
    _check_finite("step_rewards", step_rewards, where=steps)

    r = step_rewards.reshape(num_groups, group_size * t)
    s = steps.reshape(num_groups, group_size * t)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    count = s.sum(dim=1, keepdim=True)
    mean = torch.where(s, r, zero).sum(dim=1, keepdim=True) / count.clamp(min=1)
    var = torch.where(s, (r - mean) ** 2, zero).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    inf = torch.tensor(float("inf"), dtype=r.dtype, device=r.device)
    all_equal = torch.where(s, r, -inf).amax(dim=1, keepdim=True) == torch.where(
        s, r, inf
    ).amin(dim=1, keepdim=True)
    has_signal = (count >= 2) & ~all_equal
    normalized = torch.where(s & has_signal, (r - mean) / (var.sqrt() + eps), zero)
    normalized = normalized.reshape(n, t)
    # Reverse cumulative sum: position t collects the steps ending at or after t.
    adv = normalized.flip(1).cumsum(1).flip(1)
    return torch.where(valid, adv, zero)


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


# --------------------------------------------------------------------------- PPO


@register_advantage_estimator("gae")
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
