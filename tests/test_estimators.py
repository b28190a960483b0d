"""The critic-free advantage estimators against plain Python loops and hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest
import torch

from verirl.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    get_advantage_estimator,
    process_advantages,
)

SEEDS = [0, 1, 2, 3]


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.tensor([[1 if j < n else 0 for j in range(t)] for n in lengths], dtype=torch.long)


def _batch(seed: int, groups: int = 3, g: int = 4, t: int = 6) -> tuple[list[float], list[int], torch.Tensor]:
    """Rewards with an all-equal group among them, unequal lengths, and the mask."""
    rng = random.Random(seed)
    rewards = [float(rng.choice([0, 0.5, 1, 2])) for _ in range(groups * g)]
    rewards[:g] = [1.0] * g  # an all-equal group
    lengths = [rng.randint(1, t) for _ in range(groups * g)]
    return rewards, lengths, _mask(lengths, t)


def _run(name: str, rewards: list[float], mask: torch.Tensor, g: int, **kw) -> torch.Tensor:
    x = AdvantageInputs(torch.tensor(rewards, dtype=torch.float64), mask, g, **kw)
    out = get_advantage_estimator(name)(x)
    assert out.shape == mask.shape
    assert bool((out[~mask.bool()] == 0).all())  # exactly 0 on padding
    return out


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _broadcast(seq: list[float], lengths: list[int], t: int) -> list[list[float]]:
    return [[seq[i] if j < lengths[i] else 0.0 for j in range(t)] for i in range(len(seq))]


def _whiten_tokens(values: list[list[float]], lengths: list[int]) -> list[list[float]]:
    flat = [values[i][j] for i in range(len(values)) for j in range(lengths[i])]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    return [[(v - mean) / math.sqrt(var + 1e-8) if j < lengths[i] else 0.0 for j, v in enumerate(row)]
            for i, row in enumerate(values)]


def _assert_rows(got: torch.Tensor, want: list[list[float]], tol: float = 1e-9) -> None:
    for i, row in enumerate(want):
        for j, w in enumerate(row):
            assert abs(got[i, j].item() - w) <= tol * (1 + abs(w)), (i, j, got[i, j].item(), w)


def _groups(xs: list[float], g: int) -> list[list[float]]:
    return [xs[k : k + g] for k in range(0, len(xs), g)]


# --------------------------------------------------------------------------- each estimator vs a loop


def _reference(name: str, rewards: list[float], lengths: list[int], g: int, t: int, eps: float,
               baseline: list[float] | None = None, gamma: float = 1.0) -> list[list[float]]:
    seq: list[float] = []
    if name == "grpo":
        for grp in _groups(rewards, g):
            m, s = sum(grp) / g, _std(grp)
            seq += [0.0 if max(grp) == min(grp) else (r - m) / (s + eps) for r in grp]
    elif name == "dr_grpo":
        for grp in _groups(rewards, g):
            seq += [r - sum(grp) / g for r in grp]
    elif name == "rloo":
        for grp in _groups(rewards, g):
            seq += [r - (sum(grp) - r) / (g - 1) for r in grp]
    elif name == "opo":
        for k, grp in enumerate(_groups(rewards, g)):
            ls = lengths[k * g : (k + 1) * g]
            b = sum(length * r for length, r in zip(ls, grp)) / sum(ls)
            seq += [r - b for r in grp]
    elif name == "gpg":
        alpha = len(rewards) / max(1, sum(1 for r in rewards if r != 0))
        for grp in _groups(rewards, g):
            seq += [alpha * (r - sum(grp) / g) for r in grp]
    elif name == "grpo_passk":
        for grp in _groups(rewards, g):
            best = max(range(g), key=lambda i: (grp[i], -i))
            second = sorted(grp, reverse=True)[1]
            seq += [(grp[best] - second) / (_std(grp) + eps) if i == best else 0.0 for i in range(g)]
    elif name == "remax":
        seq = [r - b for r, b in zip(rewards, baseline)]
    elif name == "reinforce_plus_plus":
        returns = [[rewards[i] * gamma ** (lengths[i] - 1 - j) if j < lengths[i] else 0.0 for j in range(t)]
                   for i in range(len(rewards))]
        return _whiten_tokens(returns, lengths)
    elif name == "reinforce_plus_plus_baseline":
        for grp in _groups(rewards, g):
            seq += [r - sum(grp) / g for r in grp]
        return _whiten_tokens(_broadcast(seq, lengths, t), lengths)
    else:
        raise AssertionError(name)
    return _broadcast(seq, lengths, t)


OUTCOME = ["grpo", "dr_grpo", "rloo", "opo", "gpg", "grpo_passk", "remax", "reinforce_plus_plus",
           "reinforce_plus_plus_baseline"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", OUTCOME)
def test_outcome_estimators_match_loops(name: str, seed: int) -> None:
    g, t, eps = 4, 6, 1e-6
    rewards, lengths, mask = _batch(seed, g=g, t=t)
    baseline = [rewards[(i // g) * g] * 0.5 for i in range(len(rewards))]  # any per-prompt value
    gamma = 0.9 if name == "reinforce_plus_plus" else 1.0
    got = _run(name, rewards, mask, g, eps=eps, baseline=torch.tensor(baseline, dtype=torch.float64), gamma=gamma)
    _assert_rows(got, _reference(name, rewards, lengths, g, t, eps, baseline, gamma))


def test_every_registered_estimator_is_tested_here() -> None:
    assert set(ADVANTAGE_ESTIMATORS) == set(OUTCOME) | {"gdpo", "grpo_process", "dr_grpo_process"}


def test_group_relative_estimators_give_zero_for_all_equal_groups() -> None:
    rewards, _, mask = _batch(0)
    for name in ("grpo", "dr_grpo", "rloo", "opo", "gpg", "grpo_passk"):
        assert bool((_run(name, rewards, mask, 4)[:4] == 0).all()), name


# --------------------------------------------------------------------------- hand-computed cases


def test_rloo_by_hand_from_the_formula() -> None:
    # veRL's form, R·G/(G−1) − mean·G/(G−1): rewards (1, 0, 0, 1), mean 0.5 → ±(0.5 · 4/3)
    got = _run("rloo", [1, 0, 0, 1], torch.ones(4, 1), 4)[:, 0].tolist()
    assert got == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])


def test_passk_by_hand_only_the_best_learns() -> None:
    # rewards (0, 1, 1, 0): the first 1 is best, the second-best is also 1, so the gap is 0;
    # rewards (0, 3, 1, 0): gap 2, std of (0, 3, 1, 0) = sqrt(2), advantage 2/sqrt(2)
    got = _run("grpo_passk", [0, 1, 1, 0, 0, 3, 1, 0], torch.ones(8, 1), 4, eps=0.0)[:, 0].tolist()
    assert got == pytest.approx([0, 0, 0, 0, 0, 2 / math.sqrt(2), 0, 0])
    unscaled = _run("grpo_passk", [0, 3, 1, 0], torch.ones(4, 1), 4, scale="none")[:, 0].tolist()
    assert unscaled == pytest.approx([0, 2, 0, 0])


def test_opo_by_hand_length_weighted_baseline() -> None:
    # veRL's opo: b = Σ|o_j| R_j / Σ|o_j|. Rewards (1, 0, 1), lengths (1, 3, 2):
    # b = (1·1 + 3·0 + 2·1) / 6 = 0.5 (the plain group mean would be 2/3) → Â = (0.5, −0.5, 0.5)
    got = _run("opo", [1, 0, 1], _mask([1, 3, 2], 3), 3)
    _assert_rows(got, [[0.5, 0, 0], [-0.5, -0.5, -0.5], [0.5, 0.5, 0]])


def test_gpg_by_hand_scaled_by_the_nonzero_share() -> None:
    # veRL's gpg (f_norm = 1): α = N / #{R ≠ 0} over the whole batch = 4 / 2 = 2;
    # group (1, 0): mean 0.5 → 2·(±0.5) = (1, −1); group (0.5, 0): mean 0.25 → 2·(±0.25) = (0.5, −0.5)
    got = _run("gpg", [1, 0, 0.5, 0], torch.ones(4, 1), 2)[:, 0].tolist()
    assert got == pytest.approx([1.0, -1.0, 0.5, -0.5])


def test_reinforce_plus_plus_by_hand_discounted_then_whitened() -> None:
    # veRL's reinforce_plus_plus, γ = 0.5: R on the last token, returns G_t = γ^(|o|−1−t) R.
    # Row 0: R = 2 over 2 tokens → (0.5·2, 2) = (1, 2); row 1: R = 1 over 1 token → (1).
    # Whitened over the 3 valid tokens: mean 4/3, var (1/9 + 4/9 + 1/9)/(3 − 1) = 1/3 (+1e−8),
    # so Â = (G − 4/3)·√3: (−1/√3, 2/√3), (−1/√3)
    got = _run("reinforce_plus_plus", [2, 1], _mask([2, 1], 2), 2, gamma=0.5)
    r = 1 / math.sqrt(1 / 3 + 1e-8)
    _assert_rows(got, [[-r / 3, 2 * r / 3], [-r / 3, 0]])


def test_reinforce_plus_plus_baseline_by_hand_whitened_over_tokens() -> None:
    # veRL's reinforce_plus_plus_baseline: rewards (1, 0), lengths (1, 3): R − mean = (0.5, −0.5) on
    # each token → tokens (0.5 | −0.5, −0.5, −0.5), mean −0.25, var (0.75² + 3·0.25²)/3 = 0.25: std 0.5.
    # Whitened: (0.75/0.5 | −0.25/0.5 ×3) = (1.5 | −0.5, −0.5, −0.5): the token mean weighs the long row.
    got = _run("reinforce_plus_plus_baseline", [1, 0], _mask([1, 3], 3), 2)
    s = math.sqrt(0.25 + 1e-8)
    _assert_rows(got, [[0.75 / s, 0, 0], [-0.25 / s, -0.25 / s, -0.25 / s]])


def test_remax_by_hand_greedy_baseline() -> None:
    # veRL's remax: Â = R − R(greedy of the same prompt) on every token.
    # Prompt 1: rewards (1, 0), greedy 1 → (0, −1); prompt 2: rewards (1, 1), greedy 0 → (1, 1)
    got = _run("remax", [1, 0, 1, 1], _mask([2, 1, 1, 2], 2), 2, baseline=torch.tensor([1.0, 1.0, 0.0, 0.0]))
    _assert_rows(got, [[0, 0], [-1, 0], [1, 0], [1, 1]])


def test_remax_and_process_need_their_inputs() -> None:
    with pytest.raises(ValueError, match="remax advantage needs baseline"):
        _run("remax", [1, 0], torch.ones(2, 1), 2)
    with pytest.raises(ValueError, match="process advantages need step_rewards"):
        _run("grpo_process", [1, 0], torch.ones(2, 1), 2)
    with pytest.raises(ValueError, match="rloo advantage needs group_size >= 2"):
        _run("rloo", [1, 0], torch.ones(2, 1), 1)


# --------------------------------------------------------------------------- gdpo


def _gdpo_reference(scores: list[list[float]], weights: list[float], g: int, eps: float) -> list[float]:
    n, k = len(scores), len(weights)
    normalised = [[0.0] * k for _ in range(n)]
    for start in range(0, n, g):
        for term in range(k):
            present = [scores[i][term] for i in range(start, start + g) if not math.isnan(scores[i][term])]
            if not present:
                continue
            m = sum(present) / len(present)
            s = _std(present)
            for i in range(start, start + g):
                if not math.isnan(scores[i][term]):
                    normalised[i][term] = (scores[i][term] - m) / (s + eps)
    summed = [sum(w * v for w, v in zip(weights, row)) for row in normalised]
    m = sum(summed) / n
    return [(x - m) / (_std(summed) + eps) for x in summed]


@pytest.mark.parametrize("seed", SEEDS)
def test_gdpo_matches_loop_with_terms_that_do_not_apply(seed: int) -> None:
    rng = random.Random(seed)
    g, groups = 4, 3
    n = g * groups
    scores = [[float(rng.choice([0, 1])), rng.uniform(-1, 1) if rng.random() > 0.2 else math.nan] for _ in range(n)]
    weights = [1.0, 0.3]
    x = AdvantageInputs(torch.zeros(n), torch.ones(n, 2), g, eps=1e-4,
                        term_rewards=torch.tensor(scores, dtype=torch.float64),
                        term_weights=torch.tensor(weights, dtype=torch.float64))
    got = get_advantage_estimator("gdpo")(x)[:, 0].tolist()
    assert got == pytest.approx(_gdpo_reference(scores, weights, g, 1e-4), rel=1e-9, abs=1e-12)


def test_gdpo_decouples_the_terms_by_hand() -> None:
    # A group of 2; term 1 scores (1, 0) with weight 2, term 2 scores (0, 10) with weight 1.
    # Sum-then-normalise (grpo on R = (2, 10)) lets term 2's scale decide: (−1/√2, +1/√2).
    # Normalise-then-sum gives each term its weight's say: 2·(1/√2, −1/√2) + (−1/√2, 1/√2)
    # = (1/√2, −1/√2), whose batch normalisation (std 1) leaves it as it is: term 1 decides.
    x = AdvantageInputs(torch.tensor([2.0, 10.0]), torch.ones(2, 1), 2, eps=1e-6,
                        term_rewards=torch.tensor([[1.0, 0.0], [0.0, 10.0]]), term_weights=torch.tensor([2.0, 1.0]))
    half = 1 / math.sqrt(2)
    assert get_advantage_estimator("gdpo")(x)[:, 0].tolist() == pytest.approx([half, -half], abs=1e-4)
    grpo = _run("grpo", [2.0, 10.0], torch.ones(2, 1), 2, eps=0.0)[:, 0]
    assert grpo.tolist() == pytest.approx([-half, half])


# --------------------------------------------------------------------------- process variants


@pytest.mark.parametrize("seed", SEEDS)
def test_dr_grpo_process_only_centres_the_step_rewards(seed: int) -> None:
    rng = random.Random(seed)
    g, t = 2, 5
    lengths = [5, 3, 4, 5]
    mask = _mask(lengths, t)
    ends = [sorted(rng.choices(range(n), k=rng.randint(1, n))) for n in lengths]
    values = [[rng.choice([-1.0, 0.0, 1.0, 2.0]) for _ in e] for e in ends]
    k = max(len(e) for e in ends)
    step_rewards = torch.zeros(4, k, dtype=torch.float64)
    step_index = torch.zeros(4, k, dtype=torch.long)
    step_mask = torch.zeros(4, k)
    for i in range(4):
        for j, (e, v) in enumerate(zip(ends[i], values[i])):
            step_rewards[i, j], step_index[i, j], step_mask[i, j] = v, e, 1
    got = process_advantages(step_rewards, step_index, step_mask, mask, g, scale="none")
    for start in (0, 2):
        rs = [v for i in range(start, start + g) for v in values[i]]
        m = sum(rs) / len(rs)
        signal = len(rs) >= 2 and max(rs) != min(rs)
        for i in range(start, start + g):
            for tok in range(t):
                later = [v - m for e, v in zip(ends[i], values[i]) if e >= tok]
                want = sum(later) if (signal and tok < lengths[i]) else 0.0
                assert got[i, tok].item() == pytest.approx(want, abs=1e-12)
