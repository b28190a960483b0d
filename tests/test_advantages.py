"""verirl.advantages against plain Python loops over floats and lists, and hand-computed cases."""

from __future__ import annotations

import math
import random

import pytest
import torch

from verirl.advantages import (
    broadcast_to_tokens,
    gae,
    group_normalized_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards_for_ppo,
    process_advantages,
)

SEEDS = [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- helpers


def _sample_std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _random_lengths(rng: random.Random, n: int, t: int, min_len: int = 0) -> list[int]:
    lengths = [rng.randint(min_len, t) for _ in range(n)]
    lengths[0] = t  # at least one full row, so the last column is exercised
    return lengths


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.tensor([[1 if j < n else 0 for j in range(t)] for n in lengths], dtype=torch.long)


def _with_padding_garbage(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.full_like(x, fill))


def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * (1 + abs(b))


# --------------------------------------------------------------------------- group normalisation


def _group_norm_reference(rewards: list[float], g: int, scale: str, eps: float) -> tuple[list[float], list[bool]]:
    out: list[float] = []
    zero: list[bool] = []
    batch_std = _sample_std(rewards)
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        mean = sum(group) / g
        all_equal = all(r == group[0] for r in group)
        zero.append(all_equal)
        for r in group:
            if all_equal:
                out.append(0.0)
            elif scale == "group_std":
                out.append((r - mean) / (_sample_std(group) + eps))
            elif scale == "batch_std":
                out.append((r - mean) / (batch_std + eps))
            else:
                out.append(r - mean)
    return out, zero


@pytest.mark.parametrize("scale", ["group_std", "none", "batch_std"])
@pytest.mark.parametrize("seed", SEEDS)
def test_group_normalized_matches_loop(seed: int, scale: str) -> None:
    rng = random.Random(seed)
    g = rng.choice([2, 4, 8])
    num_groups = rng.randint(2, 6)
    rewards = []
    for k in range(num_groups):
        if k % 3 == 0:  # a zero-std group every third
            rewards += [rng.choice([0.0, 1.0, 0.3])] * g
        elif k % 3 == 1:
            rewards += [float(rng.randint(0, 1)) for _ in range(g)]
        else:
            rewards += [rng.uniform(-2, 3) for _ in range(g)]
    adv, zero_std = group_normalized_advantages(torch.tensor(rewards), g, scale=scale)
    want, want_zero = _group_norm_reference(rewards, g, scale, 1e-6)
    assert zero_std.dtype == torch.bool and zero_std.tolist() == want_zero
    assert adv.shape == (len(rewards),)
    for got, exp in zip(adv.tolist(), want):
        assert _close(got, exp), (got, exp)
    # zero-std groups are exactly 0, not merely small
    for k, is_zero in enumerate(want_zero):
        if is_zero:
            assert adv[k * g : (k + 1) * g].eq(0).all()


def test_group_std_is_sample_std_by_hand() -> None:
    # rewards 1,0,1,0: mean 0.5; sample std sqrt(1/3) (population std would be 0.5 → ±1)
    adv, zero = group_normalized_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4, eps=0.0)
    s = math.sqrt(1 / 3)
    assert adv.tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s])
    assert zero.tolist() == [False]


def test_group_normalized_hand_cases_for_each_scale() -> None:
    rewards = torch.tensor([2.0, 0.0, 5.0, 5.0, 1.0, 3.0])
    none, zero = group_normalized_advantages(rewards, 2, scale="none")
    assert none.tolist() == [1.0, -1.0, 0.0, 0.0, -1.0, 1.0]
    assert zero.tolist() == [False, True, False]
    batch, _ = group_normalized_advantages(rewards, 2, scale="batch_std", eps=0.0)
    batch_std = torch.tensor([2.0, 0.0, 5.0, 5.0, 1.0, 3.0]).std().item()
    assert batch.tolist() == pytest.approx([1 / batch_std, -1 / batch_std, 0, 0, -1 / batch_std, 1 / batch_std])
    group, _ = group_normalized_advantages(rewards, 2, scale="group_std", eps=0.0)
    assert group.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0, -1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_group_size_one_is_all_zero_and_reported() -> None:
    adv, zero = group_normalized_advantages(torch.tensor([0.3, 1.0, -2.0]), 1)
    assert adv.tolist() == [0.0, 0.0, 0.0]
    assert zero.tolist() == [True, True, True]


def test_group_normalized_integer_rewards_become_float() -> None:
    adv, _ = group_normalized_advantages(torch.tensor([1, 0]), 2, scale="none")
    assert adv.dtype.is_floating_point and adv.tolist() == [0.5, -0.5]


def test_group_normalized_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_normalized_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=r"unknown advantage scale 'std'.*group_std, none, batch_std"):
        group_normalized_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="rewards must be finite.*index \\(2,\\)"):
        group_normalized_advantages(torch.tensor([0.0, 1.0, float("nan"), 1.0]), 2)
    with pytest.raises(ValueError, match="1-D"):
        group_normalized_advantages(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match="positive int"):
        group_normalized_advantages(torch.zeros(4), 0)


# --------------------------------------------------------------------------- process supervision


def _process_reference(
    step_ends: list[list[int]], step_rewards: list[list[float]], lengths: list[int], g: int, t: int, eps: float
) -> list[list[float]]:
    out = []
    for start in range(0, len(lengths), g):
        pooled = [r for i in range(start, start + g) for r in step_rewards[i]]
        mean = sum(pooled) / len(pooled) if pooled else 0.0
        std = _sample_std(pooled)
        signal = len(pooled) >= 2 and any(r != pooled[0] for r in pooled)
        for i in range(start, start + g):
            norm = [(r - mean) / (std + eps) if signal else 0.0 for r in step_rewards[i]]
            row = []
            for tok in range(t):
                if tok >= lengths[i]:
                    row.append(0.0)
                    continue
                # the literal sum over the steps j with e(j) >= t
                row.append(sum(norm[j] for j, e in enumerate(step_ends[i]) if e >= tok))
            out.append(row)
    return out


def _step_tensors(step_ends: list[list[int]], step_rewards: list[list[float]]):
    """``[N, K]`` rewards (nan off the steps: must be ignored), token indices and mask."""
    n, k = len(step_ends), max((len(e) for e in step_ends), default=0)
    sr = torch.full((n, k), float("nan"))
    si = torch.zeros(n, k, dtype=torch.long)
    sm = torch.zeros(n, k, dtype=torch.long)
    for i in range(n):
        for j, (e, r) in enumerate(zip(step_ends[i], step_rewards[i])):
            sr[i, j], si[i, j], sm[i, j] = r, e, 1
    return sr, si, sm


@pytest.mark.parametrize("seed", SEEDS)
def test_process_advantages_match_literal_sum_over_later_steps(seed: int) -> None:
    rng = random.Random(seed)
    g, num_groups, t = rng.choice([2, 3, 4]), rng.randint(2, 4), rng.randint(5, 12)
    n = g * num_groups
    lengths = _random_lengths(rng, n, t, min_len=1)
    step_ends: list[list[int]] = []
    step_rewards: list[list[float]] = []
    for i in range(n):
        k = rng.randint(0, min(4, lengths[i]))  # unequal step counts, some completions with none
        ends = sorted(rng.choices(range(lengths[i]), k=k))  # with repeats: steps ending on one token
        step_ends.append(ends)
        step_rewards.append([rng.choice([0.0, 1.0, rng.uniform(-1, 1)]) for _ in ends])
    step_ends[0], step_rewards[0] = [lengths[0] - 1, lengths[0] - 1], [1.0, -0.5]  # two steps, one token
    if num_groups >= 2:  # force one group with a single step in total: no signal
        for i in range(g, 2 * g):
            step_ends[i], step_rewards[i] = [], []
        step_ends[g], step_rewards[g] = [lengths[g] - 1], [0.7]
    mask = _mask(lengths, t)
    got = process_advantages(*_step_tensors(step_ends, step_rewards), mask, g)
    want = _process_reference(step_ends, step_rewards, lengths, g, t, 1e-6)
    assert got.shape == (n, t)
    for i in range(n):
        for tok in range(t):
            assert _close(got[i, tok].item(), want[i][tok]), (i, tok, got[i].tolist(), want[i])
    assert got[g : 2 * g].eq(0).all()  # the single-step group


def test_process_advantages_hand_case() -> None:
    # one group of 2; row 0 steps end at 1 (r=1) and 3 (r=0); row 1 one step at 2 (r=0).
    # R = {1, 0, 0}: mean 1/3, sample std sqrt(1/3) → r̃ computed below
    sr, si, sm = _step_tensors([[1, 3], [2]], [[1.0, 0.0], [0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    s = math.sqrt(((1 - 1 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    hi, lo = (1 - 1 / 3) / s, (0 - 1 / 3) / s
    got = process_advantages(sr, si, sm, mask, 2, eps=0.0)
    assert got[0].tolist() == pytest.approx([hi + lo, hi + lo, lo, lo])
    assert got[1].tolist() == pytest.approx([lo, lo, lo, 0.0])


def test_two_steps_ending_on_one_token_are_two_rewards() -> None:
    # row 0: steps r = 1 and r = 0 both end on token 1; row 1: one step r = 0 on token 0.
    # R = {1, 0, 0} (three rewards, not the merged {1, 0}): mean 1/3, std sqrt(1/3).
    sr, si, sm = _step_tensors([[1, 1], [0]], [[1.0, 0.0], [0.0]])
    got = process_advantages(sr, si, sm, torch.ones(2, 3), 2, eps=0.0)
    s = math.sqrt(1 / 3)
    hi, lo = (2 / 3) / s, (-1 / 3) / s
    assert got[0].tolist() == pytest.approx([hi + lo, hi + lo, 0.0])  # token 2: after the last step
    assert got[1].tolist() == pytest.approx([lo, 0.0, 0.0])
    # merged into one summed reward the statistics would be over {1, 0}: a different answer
    merged = process_advantages(*_step_tensors([[1], [0]], [[1.0], [0.0]]), torch.ones(2, 3), 2, eps=0.0)
    assert merged[0, 0].item() != pytest.approx(got[0, 0].item())


def test_steps_to_tokens_adds_steps_on_one_token() -> None:
    from verirl.advantages import steps_to_tokens

    sr, si, sm = _step_tensors([[1, 1, 3], []], [[1.0, 0.5, -1.0], []])
    dense = steps_to_tokens(sr[:, :3], si[:, :3], sm[:, :3], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert dense.tolist() == [[0.0, 1.5, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]


def test_process_advantages_all_equal_group_is_zero_and_step_on_padding_is_an_error() -> None:
    sr, si, sm = _step_tensors([[0, 1], [1]], [[1.0, 1.0], [1.0]])
    assert process_advantages(sr, si, sm, torch.ones(2, 2), 2).eq(0).all()
    with pytest.raises(ValueError, match=r"step 0 of row 1 ends at token 1, a padding position"):
        process_advantages(sr, si, sm, torch.tensor([[1, 1], [1, 0]]), 2)
    with pytest.raises(ValueError, match=r"ends at token 5"):
        process_advantages(sr, torch.tensor([[0, 5], [1, 0]]), sm, torch.ones(2, 2), 2)


# --------------------------------------------------------------------------- broadcast


def test_broadcast_to_tokens() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    got = broadcast_to_tokens(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert got.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="same N"):
        broadcast_to_tokens(torch.zeros(2), mask)


# --------------------------------------------------------------------------- GAE


def _gae_reference(
    rewards: list[list[float]], values: list[list[float]], lengths: list[int], gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    advs, rets = [], []
    for r, v, n in zip(rewards, values, lengths):
        t = len(r)
        a = [0.0] * t
        last = 0.0
        for k in reversed(range(n)):
            next_v = v[k + 1] if k + 1 < n else 0.0
            delta = r[k] + gamma * next_v - v[k]
            last = delta + gamma * lam * last
            a[k] = last
        advs.append(a)
        rets.append([a[k] + v[k] if k < n else 0.0 for k in range(t)])
    return advs, rets


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.7, 0.0)])
@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_backwards_loop(seed: int, gamma: float, lam: float) -> None:
    rng = random.Random(seed)
    n, t = rng.randint(2, 6), rng.randint(1, 10)
    lengths = _random_lengths(rng, n, t)
    rewards = [[rng.uniform(-1, 1) for _ in range(t)] for _ in range(n)]
    values = [[rng.uniform(-1, 1) for _ in range(t)] for _ in range(n)]
    mask = _mask(lengths, t)
    adv, ret = gae(torch.tensor(rewards), torch.tensor(values), mask, gamma, lam)
    want_a, want_g = _gae_reference(rewards, values, lengths, gamma, lam)
    for i in range(n):
        for k in range(t):
            assert _close(adv[i, k].item(), want_a[i][k]), (i, k)
            assert _close(ret[i, k].item(), want_g[i][k]), (i, k)


def test_gae_lambda_zero_is_td0_and_lambda_one_is_monte_carlo() -> None:
    rng = random.Random(7)
    lengths = [6, 4, 1]
    t, gamma = 6, 0.9
    mask = _mask(lengths, t)
    r = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths])
    v = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths])
    _, td = gae(r, v, mask, gamma, 0.0)
    _, mc = gae(r, v, mask, gamma, 1.0)
    for i, n in enumerate(lengths):
        for k in range(n):
            next_v = v[i, k + 1].item() if k + 1 < n else 0.0
            assert _close(td[i, k].item(), r[i, k].item() + gamma * next_v)
            discounted = sum(gamma**l * r[i, k + l].item() for l in range(n - k))
            assert _close(mc[i, k].item(), discounted)


def test_gae_hand_case() -> None:
    # one row of 3 tokens, reward 1 at the end, γ=1, λ=0.5, V = (0.2, 0.4, 0.6)
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0, 9.0]]), torch.tensor([[0.2, 0.4, 0.6, 9.0]]),
                   torch.tensor([[1, 1, 1, 0]]), 1.0, 0.5)
    a2 = 1.0 - 0.6
    a1 = (0.6 - 0.4) + 0.5 * a2
    a0 = (0.4 - 0.2) + 0.5 * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0])


def test_gae_padding_is_zero_and_does_not_leak() -> None:
    rng = random.Random(3)
    lengths, t = [5, 2, 0, 3], 5
    mask = _mask(lengths, t)
    r = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths])
    v = torch.tensor([[rng.uniform(-1, 1) for _ in range(t)] for _ in lengths])
    adv, ret = gae(r, v, mask)
    adv2, ret2 = gae(_with_padding_garbage(r, mask, 1e6), _with_padding_garbage(v, mask, float("nan")), mask)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    assert adv[~mask.bool()].eq(0).all() and ret[~mask.bool()].eq(0).all()


def test_gae_is_detached_and_checks_input() -> None:
    v = torch.ones(1, 2, requires_grad=True)
    adv, ret = gae(torch.ones(1, 2), v, torch.ones(1, 2))
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="not right-padded"):
        gae(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([[1, 1, 1], [1, 0, 1]]))
    with pytest.raises(ValueError, match="same .N, T. shape"):
        gae(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="lam must be in"):
        gae(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), lam=1.5)


# --------------------------------------------------------------------------- masked statistics


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_stats_match_loop_and_ignore_padding(seed: int) -> None:
    rng = random.Random(seed)
    n, t = rng.randint(2, 5), rng.randint(3, 8)
    lengths = _random_lengths(rng, n, t)
    mask = _mask(lengths, t)
    x = torch.tensor([[rng.uniform(-3, 3) for _ in range(t)] for _ in range(n)])
    vals = [x[i, k].item() for i in range(n) for k in range(lengths[i])]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    assert _close(masked_mean(x, mask).item(), mean)
    assert _close(masked_var(x, mask).item(), var)
    assert _close(masked_var(x, mask, unbiased=False).item(), var * (len(vals) - 1) / len(vals))
    row_means = masked_mean(x, mask, dim=1).tolist()
    for i in range(n):
        row = [x[i, k].item() for k in range(lengths[i])]
        assert _close(row_means[i], sum(row) / len(row) if row else 0.0)

    white = masked_whiten(x, mask)
    for i in range(n):
        for k in range(t):
            want = (x[i, k].item() - mean) / math.sqrt(var + 1e-8) if k < lengths[i] else 0.0
            assert _close(white[i, k].item(), want)
    assert _close(masked_mean(white, mask).item(), 0.0, 1e-5)
    assert _close(masked_var(white, mask).item(), 1.0, 1e-5)
    unshifted = masked_whiten(x, mask, shift_mean=False)
    assert _close(masked_mean(unshifted, mask).item(), mean, 1e-5)

    # whatever sits in the padding changes nothing
    for fill in (1e9, float("nan"), float("-inf")):
        y = _with_padding_garbage(x, mask, fill)
        assert torch.equal(masked_whiten(y, mask), white)
        assert torch.equal(masked_mean(y, mask), masked_mean(x, mask))
        assert torch.equal(masked_var(y, mask), masked_var(x, mask))


def test_masked_stats_on_empty_and_single_selections_are_zero_not_nan() -> None:
    x = torch.tensor([[4.0, 2.0]])
    assert masked_mean(x, torch.zeros(1, 2)).item() == 0.0
    assert masked_var(x, torch.zeros(1, 2)).item() == 0.0
    assert masked_var(x, torch.tensor([[1, 0]])).item() == 0.0
    assert masked_whiten(x, torch.tensor([[1, 0]])).tolist() == [[0.0, 0.0]]


# --------------------------------------------------------------------------- PPO per-token rewards


def test_per_token_rewards_outcome_on_last_token_plus_kl_penalty() -> None:
    rng = random.Random(5)
    lengths, t, beta = [4, 1, 3], 4, 0.1
    mask = _mask(lengths, t)
    lo = torch.tensor([[rng.uniform(-3, 0) for _ in range(t)] for _ in lengths])
    lr = torch.tensor([[rng.uniform(-3, 0) for _ in range(t)] for _ in lengths])
    scores = torch.tensor([1.0, 0.0, -0.5])
    got = per_token_rewards_for_ppo(scores, lo, lr, mask, beta)
    for i, n in enumerate(lengths):
        for k in range(t):
            want = 0.0
            if k < n:
                want = -beta * (lo[i, k].item() - lr[i, k].item())
                if k == n - 1:
                    want += scores[i].item()
            assert _close(got[i, k].item(), want), (i, k)


def test_per_token_rewards_dense_scores_and_no_reference() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    dense = torch.tensor([[0.5, 0.0, 1.0], [0.0, -1.0, 0.0]])
    assert torch.equal(per_token_rewards_for_ppo(dense, None, None, mask, 0.0), dense)
    with pytest.raises(ValueError, match=r"nonzero at \(1, 2\), a padding position"):
        per_token_rewards_for_ppo(torch.tensor([[0.0, 0, 0], [0, 0, 3.0]]), None, None, mask, 0.0)
    with pytest.raises(ValueError, match="needs both logp_old and logp_ref"):
        per_token_rewards_for_ppo(dense, None, None, mask, 0.1)
    with pytest.raises(ValueError, match="row 1 has no valid token"):
        per_token_rewards_for_ppo(torch.tensor([1.0, 1.0]), None, None, torch.tensor([[1, 0], [0, 0]]), 0.0)
    with pytest.raises(ValueError, match="beta_r must be >= 0"):
        per_token_rewards_for_ppo(dense, None, None, mask, -1.0)
