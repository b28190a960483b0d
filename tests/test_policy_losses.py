"""The policy losses and token filters against plain Python loops, gradients, and the
formulas of TRL and veRL read off their documentation (conventions noted where they differ)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from verirl.losses import LossScale, aggregate_loss
from verirl.policy_losses import (
    POLICY_LOSSES,
    ROLLOUT_CORRECTIONS,
    PolicyLossParams,
    get_policy_loss,
    grpo_loss,
    off_policy_sequence_mask,
    rollout_importance_weights,
    token_filter_weights,
    top_entropy_mask,
)

SEEDS = [0, 1, 2, 3]


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.tensor([[1 if j < n else 0 for j in range(t)] for n in lengths], dtype=torch.long)


def _case(seed: int, spread: float = 0.8):
    """Random log-probs with ratios far outside the clip range, padding full of garbage."""
    rng = random.Random(seed)
    n, t = rng.randint(3, 6), rng.randint(2, 7)
    lengths = [t] + [rng.randint(1, t) for _ in range(n - 1)]
    mask = _mask(lengths, t)
    old = torch.tensor([[rng.uniform(-4, -0.1) for _ in range(t)] for _ in range(n)], dtype=torch.float64)
    logp = old + torch.tensor([[rng.uniform(-spread, spread) for _ in range(t)] for _ in range(n)],
                              dtype=torch.float64)
    adv = torch.tensor([[rng.uniform(-2, 2) for _ in range(t)] for _ in range(n)], dtype=torch.float64)
    garbage = ~mask.bool()
    logp = torch.where(garbage, torch.tensor(float("nan"), dtype=torch.float64), logp).requires_grad_(True)
    old = torch.where(garbage, torch.tensor(float("inf"), dtype=torch.float64), old)
    return logp, old, adv, mask, lengths


def _valid(lengths: list[int]):
    return [(i, j) for i, n in enumerate(lengths) for j in range(n)]


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _check(per_token: torch.Tensor, want: dict[tuple[int, int], float], mask: torch.Tensor, tol: float = 1e-9):
    for (i, j), w in want.items():
        assert abs(per_token[i, j].item() - w) <= tol * (1 + abs(w)), ((i, j), per_token[i, j].item(), w)
    assert bool((per_token[~mask.bool()] == 0).all())  # exactly 0 on padding, never nan


# --------------------------------------------------------------------------- value loops


def _token_reference(name: str, lp: float, old: float, a: float, p: PolicyLossParams) -> float:
    rho = math.exp(lp - old)
    lo, hi = 1 - p.eps_low, 1 + p.eps_high
    if name == "vanilla":
        return -min(rho * a, _clip(rho, lo, hi) * a)
    if name == "dual_clip":
        v = -min(rho * a, _clip(rho, lo, hi) * a)
        return min(v, -p.dual_clip_c * a) if a < 0 else v
    if name == "cispo":
        return -_clip(rho, lo, hi) * a * lp
    if name == "sapo":
        tau = p.sapo_tau_pos if a > 0 else p.sapo_tau_neg
        return -(1 / (1 + math.exp(-tau * (rho - 1)))) * 4 / tau * a
    if name == "gpg":
        return -a * lp
    raise AssertionError(name)


@pytest.mark.parametrize("params", [PolicyLossParams(), PolicyLossParams(eps_low=0.1, eps_high=0.28, dual_clip_c=1.5,
                                                                         sapo_tau_pos=2.0, sapo_tau_neg=3.0)])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["vanilla", "dual_clip", "cispo", "sapo", "gpg"])
def test_token_level_losses_match_loops(name: str, seed: int, params: PolicyLossParams) -> None:
    logp, old, adv, mask, lengths = _case(seed)
    per_token, stats = get_policy_loss(name)(logp, old, adv, mask, params)
    want = {(i, j): _token_reference(name, logp[i, j].item(), old[i, j].item(), adv[i, j].item(), params)
            for i, j in _valid(lengths)}
    _check(per_token, want, mask)
    per_token.sum().backward()
    assert torch.isfinite(logp.grad).all() and bool((logp.grad[~mask.bool()] == 0).all())
    ratios = [math.exp(logp[i, j].item() - old[i, j].item()) for i, j in _valid(lengths)]
    assert stats["ratio_max"].item() == pytest.approx(max(ratios))
    assert stats["approx_kl"].item() == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / len(ratios))
    assert 0.0 <= stats["clip_frac"].item() <= 1.0


def _seq_reference(name: str, logp, old, adv, lengths, p: PolicyLossParams) -> dict[tuple[int, int], float]:
    want = {}
    for i, n in enumerate(lengths):
        lr = [logp[i, j].item() - old[i, j].item() for j in range(n)]
        a = [adv[i, j].item() for j in range(n)]
        if name == "gspo":
            s = math.exp(min(sum(lr) / n, 10.0))
            for j in range(n):
                want[(i, j)] = -min(s * a[j], _clip(s, 1 - p.eps_low, 1 + p.eps_high) * a[j])
        elif name == "gmpo":
            kept = []
            for x, aa in zip(lr, a):
                sgn = (aa > 0) - (aa < 0)
                kept.append(sgn * min(sgn * x, sgn * _clip(x, -p.eps_low, p.eps_high)))
            loss = -(sum(a) / n) * math.exp(sum(kept) / n)
            for j in range(n):
                want[(i, j)] = loss
        elif name == "vespo":
            log_w = _clip(sum(_clip(x, -20, 20) for x in lr), math.log(1e-8), 20.0)
            for j in range(n):
                k, lam = (p.vespo_k_pos, p.vespo_lambda_pos) if a[j] >= 0 else (p.vespo_k_neg, p.vespo_lambda_neg)
                phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
                want[(i, j)] = -phi * a[j] * logp[i, j].item()
    return want


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["gspo", "gmpo", "vespo"])
def test_sequence_level_losses_match_loops(name: str, seed: int) -> None:
    logp, old, adv, mask, lengths = _case(seed, spread=0.3)
    params = PolicyLossParams(eps_low=0.05, eps_high=0.08)
    per_token, _ = get_policy_loss(name)(logp, old, adv, mask, params)
    _check(per_token, _seq_reference(name, logp, old, adv, lengths, params), mask)


def test_every_registered_loss_is_tested_here() -> None:
    assert set(POLICY_LOSSES) == {"vanilla", "dual_clip", "cispo", "sapo", "gpg", "gspo", "gmpo", "vespo",
                                  "clip_cov", "kl_cov"}


# --------------------------------------------------------------------------- gradients that define a loss


def test_gspo_gradient_is_the_sequence_objectives_gradient() -> None:
    """GSPO-token with a per-sequence advantage, aggregated seq-mean-token-mean, has the
    gradient of GSPO's own objective (1/N) Σ_i −min(s_i Â_i, clip(s_i) Â_i) with the true
    s_i = exp(mean_t log ρ_{i,t})."""
    logp, old, _, mask, lengths = _case(5, spread=0.1)
    seq_adv = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7, -0.2][: mask.shape[0]], dtype=torch.float64)
    adv = seq_adv.unsqueeze(1).expand_as(old) * mask
    params = PolicyLossParams(eps_low=0.03, eps_high=0.04)
    per_token, _ = get_policy_loss("gspo")(logp, old, adv, mask, params)
    (g_token,) = torch.autograd.grad(aggregate_loss(per_token, mask), logp)
    terms = []
    for i, n in enumerate(lengths):
        s = torch.exp((logp[i, :n] - old[i, :n]).sum() / n)
        terms.append(-torch.minimum(s * seq_adv[i], torch.clamp(s, 1 - 0.03, 1 + 0.04) * seq_adv[i]))
    (g_seq,) = torch.autograd.grad(torch.stack(terms).mean(), logp)
    valid = mask.bool()
    torch.testing.assert_close(g_token[valid], g_seq[valid])
    assert g_token[valid].abs().max() > 0


def test_cispo_keeps_a_bounded_gradient_on_every_token() -> None:
    logp, old, adv, mask, lengths = _case(2)
    per_token, stats = get_policy_loss("cispo")(logp, old, adv, mask, PolicyLossParams())
    per_token.sum().backward()
    for i, j in _valid(lengths):
        w = _clip(math.exp(logp[i, j].item() - old[i, j].item()), 0.8, 1.2)
        assert logp.grad[i, j].item() == pytest.approx(-w * adv[i, j].item())  # clipped tokens keep it too
    assert stats["clip_frac"].item() > 0


def test_sapo_is_the_policy_gradient_on_policy() -> None:
    logp, _, adv, mask, lengths = _case(3)
    per_token, _ = get_policy_loss("sapo")(logp, logp.detach(), adv, mask, PolicyLossParams(sapo_tau_neg=4.0))
    per_token.sum().backward()
    for i, j in _valid(lengths):
        assert logp.grad[i, j].item() == pytest.approx(-adv[i, j].item())  # f'(1) = 1 for any τ


def test_gmpo_clips_in_log_space() -> None:
    # one sequence, Â = 1 on both tokens, log ρ = (0.5, −0.5), ε = 0.4 in log space:
    # sgn = 1, l̃ = min(l, clip(l)) = (0.4, −0.5): loss = −1 · exp(−0.05)
    logp = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    per_token, stats = get_policy_loss("gmpo")(logp, torch.zeros_like(logp), torch.ones_like(logp),
                                               torch.ones(1, 2), PolicyLossParams(eps_low=0.4, eps_high=0.4))
    assert per_token[0].tolist() == pytest.approx([-math.exp(-0.05)] * 2)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


# --------------------------------------------------------------------------- covariance-selected tokens


def _covariances(logp, adv, lengths):
    cells = _valid(lengths)
    ma = sum(adv[i, j].item() for i, j in cells) / len(cells)
    ml = sum(logp[i, j].item() for i, j in cells) / len(cells)
    return {(i, j): (adv[i, j].item() - ma) * (logp[i, j].item() - ml) for i, j in cells}


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_cov_penalises_the_top_covariance_tokens(seed: int) -> None:
    logp, old, adv, mask, lengths = _case(seed)
    params = PolicyLossParams(cov_frac=0.25, kl_cov_coef=0.7)
    per_token, stats = get_policy_loss("kl_cov")(logp, old, adv, mask, params)
    cov = _covariances(logp, adv, lengths)
    k = max(1, int(len(cov) * 0.25))
    top = set(sorted(cov, key=cov.get, reverse=True)[:k])
    want = {}
    for i, j in cov:
        lr = logp[i, j].item() - old[i, j].item()
        want[(i, j)] = -math.exp(lr) * adv[i, j].item() + (0.7 * abs(lr) if (i, j) in top else 0.0)
    _check(per_token, want, mask)
    assert stats["kl_cov_frac"].item() == pytest.approx(k / len(cov))


@pytest.mark.parametrize("seed", SEEDS)
def test_clip_cov_cuts_the_gradient_of_k_unclipped_tokens_in_the_covariance_band(seed: int) -> None:
    logp, old, adv, mask, lengths = _case(seed, spread=0.15)
    params = PolicyLossParams(cov_frac=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0)
    torch.manual_seed(seed)
    per_token, stats = get_policy_loss("clip_cov")(logp, old, adv, mask, params)
    per_token.sum().backward()
    cells = _valid(lengths)
    clipped = {c for c in cells
               if _clip(math.exp(logp[c].item() - old[c].item()), 0.8, 1.2) * adv[c].item()
               < math.exp(logp[c].item() - old[c].item()) * adv[c].item()}
    cut = {c for c in cells if c not in clipped and logp.grad[c].item() == 0.0 and adv[c].item() != 0}
    candidates = [c for c in cells if c not in clipped]
    assert len(cut) == min(max(1, int(0.2 * len(cells))), len(candidates))
    for c in cells:
        if c in cut:
            assert per_token[c].item() == 0.0
        else:
            want = _token_reference("vanilla", logp[c].item(), old[c].item(), adv[c].item(), params)
            assert per_token[c].item() == pytest.approx(want)
    assert stats["cov_clip_frac"].item() == pytest.approx(len(cut) / len(cells))


def test_clip_cov_takes_only_tokens_in_the_band() -> None:
    logp, old, adv, mask, lengths = _case(1, spread=0.1)
    cov = _covariances(logp, adv, lengths)
    lb, ub = sorted(cov.values())[-3] - 1e-9, 1e9  # only the top 3 covariances are in the band
    params = PolicyLossParams(cov_frac=1.0, clip_cov_lb=lb, clip_cov_ub=ub, eps_low=1.0, eps_high=10.0)
    per_token, _ = get_policy_loss("clip_cov")(logp, old, adv, mask, params)
    zeroed = {c for c in cov if per_token[c].item() == 0.0}
    assert zeroed == {c for c, v in cov.items() if v > lb}


# --------------------------------------------------------------------------- TRL's and veRL's conventions


def test_trl_two_sided_delta_is_dual_clip_with_c_delta() -> None:
    """TRL (INTELLECT-2) caps ρ at δ in the unclipped term: −min(min(ρ, δ)Â, clip(ρ)Â)."""
    logp, old, adv, mask, lengths = _case(4, spread=2.0)
    delta = 1.6
    per_token, _ = get_policy_loss("dual_clip")(logp, old, adv, mask, PolicyLossParams(dual_clip_c=delta))
    for i, j in _valid(lengths):
        rho, a = math.exp(logp[i, j].item() - old[i, j].item()), adv[i, j].item()
        assert per_token[i, j].item() == pytest.approx(-min(min(rho, delta) * a, _clip(rho, 0.8, 1.2) * a))


def test_trl_cispo_upper_only_clip_is_eps_low_one() -> None:
    """TRL's cispo weight is min(ρ, ε_max); here eps_low = 1, eps_high = ε_max − 1."""
    logp, old, adv, mask, lengths = _case(6, spread=2.5)
    per_token, _ = get_policy_loss("cispo")(logp, old, adv, mask, PolicyLossParams(eps_low=1.0, eps_high=4.0))
    for i, j in _valid(lengths):
        rho = math.exp(logp[i, j].item() - old[i, j].item())
        assert per_token[i, j].item() == pytest.approx(-min(rho, 5.0) * adv[i, j].item() * logp[i, j].item())


def test_verl_sapo_gate_by_hand() -> None:
    # veRL/TRL: gate = sigmoid(τ(ρ − 1)) · 4/τ; at ρ = 1.5, τ = 1: σ(0.5)·4 = 2.4491866...
    logp = torch.tensor([[math.log(1.5), math.log(1.5)]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    per_token, _ = get_policy_loss("sapo")(logp, torch.zeros_like(logp), adv, torch.ones(1, 2),
                                           PolicyLossParams(sapo_tau_pos=1.0, sapo_tau_neg=2.0))
    assert per_token[0, 0].item() == pytest.approx(-4 / (1 + math.exp(-0.5)))
    assert per_token[0, 1].item() == pytest.approx(4 / (1 + math.exp(-1.0)) / 2.0)


def _by_hand(name: str, logp: list[list[float]], log_ratio: list[list[float]], adv: list[list[float]],
             lengths: list[int], **params: float):
    """``(per_token, stats, logp)`` of the loss ``name`` on literal numbers (``old = logp − log ρ``),
    ``logp`` a leaf with the gradient of ``per_token.sum()``."""
    lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    old = lp.detach() - torch.tensor(log_ratio, dtype=torch.float64)
    per_token, stats = get_policy_loss(name)(lp, old, torch.tensor(adv, dtype=torch.float64),
                                             _mask(lengths, lp.shape[1]), PolicyLossParams(**params))
    per_token.sum().backward(retain_graph=True)
    return per_token, stats, lp


def _near(got: torch.Tensor, want: list[list[float]]) -> None:
    torch.testing.assert_close(got.detach(), torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_verl_gspo_by_hand_one_clipped_ratio_per_sequence() -> None:
    # s_i = exp(mean_t log ρ), ε = 0.2 on s. Row 0: log ρ (0.2, 0.4) → s = e^0.3 = 1.34986 > 1.2, Â = 1:
    # clipped, −1.2 on both tokens, no gradient. Row 1: same s, Â = −1: the unclipped −sÂ = 1.34986 is the
    # larger loss, gradient −Â·s = 1.34986 per token. Row 2: log ρ (0.5, −0.5) → s = 1, Â = 2: −2, gradient
    # −2 per token (token-level clipping would have clipped its first token, ρ = e^0.5 = 1.65).
    s = math.exp(0.3)
    per_token, stats, lp = _by_hand("gspo", [[-1.0, -2.0]] * 3, [[0.2, 0.4], [0.2, 0.4], [0.5, -0.5]],
                                    [[1, 1], [-1, -1], [2, 2]], [2, 2, 2])
    _near(per_token, [[-1.2, -1.2], [s, s], [-2.0, -2.0]])
    _near(lp.grad, [[0.0, 0.0], [s, s], [-2.0, -2.0]])
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    # veRL aggregates GSPO with seq-mean-token-mean whatever its loss_agg_mode: (−1.2 + 1.34986 − 2)/3
    assert aggregate_loss(per_token, torch.ones(3, 2)).item() == pytest.approx((-1.2 + s - 2.0) / 3)


def test_verl_geo_mean_by_hand_sequence_losses_averaged() -> None:
    # GMPO, ε = 0.4 in log space. Row A: log ρ (0.5, −0.5, 0), Â = −1, sgn −1 keeps the larger of l and
    # clip(l): (0.5, −0.4, 0), mean 0.1/3 → L_A = −(−1)·e^(1/30) = 1.033895. Row B: log ρ 0.1, Â = 2:
    # L_B = −2·e^0.1 = −2.210342. Row C: Â = 0, L_C = 0. veRL's geo_mean is the mean over sequences,
    # (L_A + L_B + 0)/3 = our seq-mean-token-mean of L_i put on each token.
    la, lb = math.exp(1 / 30), -2 * math.exp(0.1)
    per_token, stats, lp = _by_hand("gmpo", [[-1.0, -1.0, -1.0]] * 3, [[0.5, -0.5, 0.0], [0.1, 0, 0], [0.3, -0.2, 0]],
                                    [[-1, -1, -1], [2, 0, 0], [0, 0, 0]], [3, 1, 2], eps_low=0.4, eps_high=0.4)
    _near(per_token, [[la] * 3, [lb, 0, 0], [0, 0, 0]])
    mask = _mask([3, 1, 2], 3)
    loss = aggregate_loss(per_token, mask)
    assert loss.item() == pytest.approx((la + lb) / 3)
    (grad,) = torch.autograd.grad(loss, lp)
    # dL_A/dl_t = −Â·e^(mean l̃)/3 where l̃_t = l_t (tokens 0 and 2), 0 where clipped;
    # dL_B/dl = −2e^0.1; then /3 rows
    _near(grad, [[la / 9, 0, la / 9], [lb / 3, 0, 0], [0, 0, 0]])
    # ours: the one token whose clipped log-ratio is used, of 6 (veRL's pg_clipfrac_lower counts every Â < 0
    # token outside the range, 2 of 6); the Â = 0 row counts as nothing
    assert stats["clip_frac"].item() == pytest.approx(1 / 6)


def test_verl_clip_cov_by_hand_cuts_the_one_token_in_the_band() -> None:
    # log π (−1, −2, −3, −2), Â (2, 1, −1, −2): mean Â 0, mean log π −2,
    # cov = Â·(log π + 2) = (2, 0, 1, 0).
    # veRL's band (1, 5) holds token 0 alone (cov 1 is not > 1); cov_frac 0.25 → k = max(1, ⌊0.25·4⌋) = 1.
    # On-policy (ρ = 1): token 0 cut to 0 with no gradient, the rest −Â = (−1, 1, 2), gradient −Â.
    logp, adv = [[-1.0, -2.0, -3.0, -2.0]], [[2, 1, -1, -2]]
    per_token, stats, lp = _by_hand("clip_cov", logp, [[0.0] * 4], adv, [4], cov_frac=0.25)
    _near(per_token, [[0.0, -1.0, 1.0, 2.0]])
    _near(lp.grad, [[0.0, -1.0, 1.0, 2.0]])
    assert stats["cov_clip_frac"].item() == pytest.approx(1 / 4)  # veRL's pg_clipfrac
    # token 0 at ρ = e^0.5 = 1.65 > 1.2 with Â > 0 is clipped (−1.2·2 = −2.4) and so leaves the band: no cut
    per_token, stats, _ = _by_hand("clip_cov", logp, [[0.5, 0, 0, 0]], adv, [4], cov_frac=0.25)
    _near(per_token, [[-2.4, -1.0, 1.0, 2.0]])
    assert stats["cov_clip_frac"].item() == 0.0 and stats["clip_frac"].item() == pytest.approx(1 / 4)


def test_verl_kl_cov_by_hand_penalises_the_top_covariances() -> None:
    # The same covariances (2, 0, 1, 0); cov_frac 0.5 → k = 2: tokens 0 and 2 get + 1·|log ρ|.
    # log ρ (0.1, 0.2, −0.3, 0): −ρÂ = (−2e^0.1, −e^0.2, e^−0.3, 2), so
    # ℓ = (−2.210342 + 0.1, −1.221403, 0.740818 + 0.3, 2); gradient −ρÂ + sign(log ρ) on the two picked
    per_token, stats, lp = _by_hand("kl_cov", [[-1.0, -2.0, -3.0, -2.0]], [[0.1, 0.2, -0.3, 0.0]],
                                    [[2, 1, -1, -2]], [4], cov_frac=0.5, kl_cov_coef=1.0)
    e1, e2, e3 = math.exp(0.1), math.exp(0.2), math.exp(-0.3)
    _near(per_token, [[-2 * e1 + 0.1, -e2, e3 + 0.3, 2.0]])
    _near(lp.grad, [[-2 * e1 + 1, -e2, e3 - 1, 2.0]])
    assert stats["kl_cov_frac"].item() == pytest.approx(0.5)


def test_verl_gpg_loss_by_hand_ignores_the_ratio() -> None:
    # ℓ = −Â log π: log π (ln 0.5, ln 0.25), Â (2, −1) → (2 ln 2, −2 ln 2) = (1.386294, −1.386294),
    # gradient −Â = (−2, 1), whatever π_old (log ρ 3 and −2 here)
    per_token, stats, lp = _by_hand("gpg", [[math.log(0.5), math.log(0.25)]], [[3.0, -2.0]], [[2, -1]], [2])
    _near(per_token, [[2 * math.log(2), -2 * math.log(2)]])
    _near(lp.grad, [[-2.0, 1.0]])
    assert stats["clip_frac"].item() == 0.0


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize("seed", SEEDS)
def test_off_policy_sequence_mask_matches_loop(seed: int) -> None:
    logp, old, adv, mask, lengths = _case(seed)
    delta = 0.05
    keep = off_policy_sequence_mask(logp.detach(), old, adv, mask, delta)
    for i, n in enumerate(lengths):
        kl = sum(old[i, j].item() - logp[i, j].item() for j in range(n)) / n
        a = sum(adv[i, j].item() for j in range(n)) / n
        assert keep[i, 0].item() == (0.0 if (a < 0 and kl > delta) else 1.0)


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_top_entropy_mask_matches_numpy_quantile(seed: int, quantile: float) -> None:
    rng = random.Random(seed)
    lengths = [5, 3, 4]
    mask = _mask(lengths, 5)
    entropy = torch.tensor([[rng.uniform(0, 3) for _ in range(5)] for _ in range(3)])
    keep = top_entropy_mask(entropy, mask, quantile)
    values = [entropy[i, j].item() for i, j in _valid(lengths)]
    threshold = np.quantile(np.array(values, dtype=np.float32), 1.0 - quantile)
    for i in range(3):
        for j in range(5):
            want = 1.0 if (j < lengths[i] and (quantile == 1.0 or entropy[i, j].item() >= threshold - 1e-6)) else 0.0
            assert keep[i, j].item() == want
    if quantile == 0.0:
        assert keep.sum().item() == 1.0  # only the highest


def test_grpo_loss_composes_filters_kl_and_entropy_bonus() -> None:
    logp, old, adv, mask, lengths = _case(7)
    ref = old + 0.3
    entropy = torch.rand(old.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights, fstats = token_filter_weights(logp, old, adv, mask, entropy, 0.01, 0.5)
    assert weights is not None and {"off_policy_masked_frac", "entropy_kept_frac"} <= set(fstats)
    beta, c = 0.1, 0.05
    loss, stats = grpo_loss(logp, old, ref, adv, mask, policy_loss="dual_clip", beta=beta, kl_estimator="k3+",
                            loss_agg="token-mean", token_weights=weights, entropy=entropy, ent_coef=c,
                            scale=LossScale(num_tokens=100.0))
    total = 0.0
    for i, j in _valid(lengths):
        lp, o = logp[i, j].item(), old[i, j].item()
        pg = _token_reference("dual_clip", lp, o, adv[i, j].item(), PolicyLossParams())
        x = ref[i, j].item() - lp
        kl = math.exp(lp - o) * (math.exp(x) - x - 1)
        total += weights[i, j].item() * pg + beta * kl - c * entropy[i, j].item()
    assert loss.item() == pytest.approx(total / 100.0)
    assert "entropy_bonus" in stats and "kl" in stats
    assert token_filter_weights(logp, old, adv, mask, entropy, None, 1.0) == (None, {})


# --------------------------------------------------------------------------- engine/trainer mismatch


def _engine_case(seed: int, spread: float):
    """π_old (trainer) and π_engine log-probs whose gap reaches past the caps, padding garbage."""
    rng = random.Random(100 + seed)
    n, t = rng.randint(3, 7), rng.randint(2, 8)
    lengths = [t] + [rng.randint(0, t) for _ in range(n - 1)]  # a row may be all padding
    mask = _mask(lengths, t)
    old = torch.tensor([[rng.uniform(-4, -0.1) for _ in range(t)] for _ in range(n)], dtype=torch.float64)
    engine = old + torch.tensor([[rng.uniform(-spread, spread) for _ in range(t)] for _ in range(n)],
                                dtype=torch.float64)
    garbage = ~mask.bool()
    engine = torch.where(garbage, torch.tensor(float("-inf"), dtype=torch.float64), engine)
    old = torch.where(garbage, torch.tensor(float("nan"), dtype=torch.float64), old)
    return old, engine, mask, lengths


def _loop_is(old, engine, lengths, mode: str, cap: float):
    """Plain-Python weights and statistics of the rollout IS correction."""
    diffs = [old[i, j].item() - engine[i, j].item() for i, n in enumerate(lengths) for j in range(n)]
    stats = {"rollout_is_logp_diff_mean": sum(abs(d) for d in diffs) / max(len(diffs), 1),
             "rollout_is_logp_diff_max": max((abs(d) for d in diffs), default=0.0)}
    if mode == "none":
        return None, stats
    weights = {}
    if mode == "token_truncate":
        cut = 0
        for i, n in enumerate(lengths):
            for j in range(n):
                ratio = math.exp(old[i, j].item() - engine[i, j].item())
                weights[i, j] = min(ratio, cap)
                cut += ratio > cap
        stats["rollout_is_truncated_frac"] = cut / max(len(diffs), 1)
    else:
        masked = rows = 0
        for i, n in enumerate(lengths):
            seq = math.exp(sum(old[i, j].item() - engine[i, j].item() for j in range(n)))
            keep = 1.0 if 1.0 / cap <= seq <= cap else 0.0
            for j in range(n):
                weights[i, j] = keep
            if n:
                rows += 1
                masked += keep == 0.0
        stats["rollout_is_masked_frac"] = masked / max(rows, 1)
    stats["rollout_is_weight_mean"] = sum(weights.values()) / max(len(weights), 1)
    return weights, stats


@pytest.mark.parametrize("cap", [1.0, 1.3, 2.0, 10.0])
@pytest.mark.parametrize("mode", ["none", *ROLLOUT_CORRECTIONS])
@pytest.mark.parametrize("seed", SEEDS)
def test_rollout_importance_weights_match_a_loop(seed: int, mode: str, cap: float) -> None:
    old, engine, mask, lengths = _engine_case(seed, spread=1.2)
    weights, stats = rollout_importance_weights(old, engine, mask, mode, cap)
    want_weights, want_stats = _loop_is(old, engine, lengths, mode, cap)
    assert set(stats) == set(want_stats)
    for key, value in want_stats.items():
        assert stats[key].item() == pytest.approx(value, rel=1e-9, abs=1e-12), key
    if mode == "none":
        assert weights is None
        return
    full = weights.expand_as(old)
    assert weights.shape == ((old.shape[0], 1) if mode == "sequence_mask" else old.shape)
    for (i, j), w in want_weights.items():
        assert full[i, j].item() == pytest.approx(w, rel=1e-12)
    assert bool(torch.isfinite(full).all())


def test_rollout_is_truncates_and_masks_what_it_should() -> None:
    mask = torch.ones(2, 3, dtype=torch.long)
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], dtype=torch.float64))
    engine = torch.log(torch.tensor([[0.1, 0.4, 0.5], [0.5, 0.5, 0.45]], dtype=torch.float64))
    weights, stats = rollout_importance_weights(old, engine, mask, "token_truncate", 2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 1.25, 1.0], [1.0, 1.0, 0.5 / 0.45]], dtype=torch.float64))
    assert stats["rollout_is_truncated_frac"].item() == pytest.approx(1 / 6)
    # row 0's sequence ratio 5 · 1.25 = 6.25 > 2: masked; row 1's 1.11: kept
    weights, stats = rollout_importance_weights(old, engine, mask, "sequence_mask", 2.0)
    assert weights.flatten().tolist() == [0.0, 1.0]
    assert stats["rollout_is_masked_frac"].item() == 0.5
    # the same engine as the trainer: weight 1 everywhere, no mismatch
    weights, stats = rollout_importance_weights(old, old.clone(), mask, "token_truncate", 1.0)
    assert bool((weights == 1).all()) and stats["rollout_is_logp_diff_max"].item() == 0.0


def test_rollout_is_refuses_a_cap_below_one_and_a_missing_engine() -> None:
    old, engine, mask, _ = _engine_case(0, spread=0.5)
    with pytest.raises(ValueError, match="cap C must be >= 1"):
        rollout_importance_weights(old, engine, mask, "token_truncate", 0.5)
    with pytest.raises(ValueError, match="unknown rollout IS mode 'tis'; valid names: sequence_mask, token_truncate"):
        rollout_importance_weights(old, engine, mask, "tis", 2.0)
    entropy = torch.zeros_like(old)
    with pytest.raises(ValueError, match="needs the engine's log-probs"):
        token_filter_weights(old, old, old, mask, entropy, None, 1.0, None, "sequence_mask")


@pytest.mark.parametrize("mode", list(ROLLOUT_CORRECTIONS))
def test_rollout_is_weight_multiplies_the_other_filters(mode: str) -> None:
    logp, old, adv, mask, lengths = _case(5)
    engine = torch.where(mask.bool(), old.detach() + 0.4 * torch.sin(torch.arange(old.numel(), dtype=torch.float64)
                                                                          ).reshape(old.shape), old)
    entropy = torch.rand(old.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    filters, _ = token_filter_weights(logp, old, adv, mask, entropy, 0.01, 0.5)
    is_weights, _ = rollout_importance_weights(old, engine, mask, mode, 1.5)
    both, stats = token_filter_weights(logp, old, adv, mask, entropy, 0.01, 0.5, engine, mode, 1.5)
    valid = mask.bool()
    torch.testing.assert_close(both[valid], (filters * is_weights).expand_as(old)[valid])
    assert "rollout_is_weight_mean" in stats and "entropy_kept_frac" in stats
