"""verirl.losses against plain Python loops, hand-computed cases, and autograd on a tiny real model."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verirl.losses import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LossScale,
    aggregate_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    get_kl_estimator,
    get_loss_aggregation,
    kl_k1,
    kl_k2,
    kl_k3,
    token_logprobs,
)
from verirl.policy_losses import PolicyLossParams, clipped_policy_loss, grpo_loss

SEEDS = [0, 1, 2, 3, 4]


def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * (1 + abs(b))


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.tensor([[1 if j < n else 0 for j in range(t)] for n in lengths], dtype=torch.long)


def _rand(rng: random.Random, n: int, t: int, lo: float, hi: float) -> torch.Tensor:
    return torch.tensor([[rng.uniform(lo, hi) for _ in range(t)] for _ in range(n)], dtype=torch.float64)


# --------------------------------------------------------------------------- registries


def test_registries_and_unknown_names() -> None:
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "abs", "low_var_kl", "k3+"}
    assert get_kl_estimator("k3") is kl_k3
    assert set(LOSS_AGGREGATIONS) == {"seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"}
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'; valid names: abs, k1, k2, k3, k3\+, low_var_kl"):
        get_kl_estimator("k4")
    with pytest.raises(ValueError, match=r"unknown loss aggregation 'mean'.*token-mean"):
        get_loss_aggregation("mean")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "sum")


# --------------------------------------------------------------------------- log-probs, entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_token_logprobs_and_entropy_match_loops(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    n, t, v = 3, 4, 7
    logits = (torch.randn(n, t, v, generator=g) * 3).to(dtype)
    tokens = torch.randint(0, v, (n, t), generator=g)
    lp = token_logprobs(logits, tokens)
    ent = entropy_from_logits(logits)
    assert lp.shape == (n, t) and ent.shape == (n, t)
    assert lp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for i in range(n):
        for k in range(t):
            z = [float(x) for x in logits[i, k].double()]
            m = max(z)
            lse = m + math.log(sum(math.exp(x - m) for x in z))
            assert _close(lp[i, k].item(), z[tokens[i, k]] - lse)
            probs = [math.exp(x - lse) for x in z]
            assert _close(ent[i, k].item(), -sum(p * math.log(p) for p in probs))


def test_token_logprobs_gradient_and_bad_input() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    token_logprobs(logits, tokens).sum().backward()
    # d/dz log softmax(z)_a = onehot(a) − softmax(z)
    want = torch.nn.functional.one_hot(tokens, 5).float() - logits.detach().softmax(-1)
    assert torch.allclose(logits.grad, want, atol=1e-6)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 5\).*from 0 to 5"):
        token_logprobs(logits, torch.tensor([[0, 5, 2], [1, 1, 3]]))
    with pytest.raises(ValueError, match="same N, T"):
        token_logprobs(logits, tokens[:, :2])
    with pytest.raises(ValueError, match="integer ids"):
        token_logprobs(logits, tokens.float())


# --------------------------------------------------------------------------- KL estimators


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_estimators_match_formulas(seed: int) -> None:
    rng = random.Random(seed)
    logp, ref = _rand(rng, 3, 5, -6, 0), _rand(rng, 3, 5, -6, 0)
    k1, k2, k3 = kl_k1(logp, ref), kl_k2(logp, ref), kl_k3(logp, ref)
    for i in range(3):
        for j in range(5):
            x = ref[i, j].item() - logp[i, j].item()
            assert _close(k1[i, j].item(), -x, 1e-12)
            assert _close(k2[i, j].item(), x * x / 2, 1e-12)
            assert _close(k3[i, j].item(), math.exp(x) - x - 1, 1e-12)


@settings(max_examples=200, deadline=None)
@given(st.floats(-30, 0, allow_nan=False), st.floats(-30, 0, allow_nan=False))
def test_k3_is_never_negative(logp: float, ref: float) -> None:
    for dtype in (torch.float32, torch.float64):
        assert kl_k3(torch.tensor(logp, dtype=dtype), torch.tensor(ref, dtype=dtype)).item() >= 0.0


def test_kl_estimators_are_unbiased_or_close_in_expectation() -> None:
    # tokens sampled from π_θ; the exact KL(π_θ ‖ π_ref) = Σ p log(p/q)
    g = torch.Generator().manual_seed(1234)
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[samples], q.log()[samples]
    assert abs(kl_k1(logp, ref).mean().item() - true_kl) < 0.1 * true_kl
    assert abs(kl_k3(logp, ref).mean().item() - true_kl) < 0.1 * true_kl
    # k2 is biased, but close when the policies are close
    assert abs(kl_k2(logp, ref).mean().item() - true_kl) < 0.2 * true_kl
    # k3's variance is below k1's (the reason it is the default)
    assert kl_k3(logp, ref).var() < kl_k1(logp, ref).var()


def _kl_by_hand(name: str, logp: list[float], ref: list[float], old: list[float]) -> tuple[list[float], list[float]]:
    """The estimator ``name`` on literal log-probs: its values and d(value)/d(log π_θ), token by token."""
    lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    kl = get_kl_estimator(name)(lp, torch.tensor(ref, dtype=torch.float64), torch.tensor(old, dtype=torch.float64))
    (grad,) = torch.autograd.grad(kl.sum(), lp)
    return kl.tolist(), grad.tolist()


def test_verl_low_var_kl_by_hand_clamps_value_and_gradient() -> None:
    # x = log π_ref − log π_θ. Token 0: x = −2 − (−1) = −1: e^−1 + 1 − 1 = 0.367879 (< 10: k3 itself),
    # d/dlog π_θ = 1 − e^x = 0.632121. Token 1: x = −1 − (−4) = 3: e^3 − 4 = 16.085537 > 10 → 10,
    # gradient 0 (k3: 16.085537, gradient 1 − e^3 = −19.085537). Token 2: x = 0 − (−800) = 800: k3
    # overflows to inf, x is clamped to 20 first → 10, gradient 0.
    logp, ref = [-1.0, -4.0, -800.0], [-2.0, -1.0, 0.0]
    value, grad = _kl_by_hand("low_var_kl", logp, ref, logp)
    assert value == pytest.approx([math.exp(-1), 10.0, 10.0]) and grad == pytest.approx([1 - math.exp(-1), 0.0, 0.0])
    value, grad = _kl_by_hand("k3", logp[:2], ref[:2], logp[:2])
    assert value == pytest.approx([math.exp(-1), math.exp(3) - 4]) and grad == pytest.approx([1 - math.exp(-1),
                                                                                              1 - math.exp(3)])


def test_k3_plus_by_hand_importance_weighted() -> None:
    # π_θ = 0.5, π_old = 0.25, π_ref = 0.25: ρ = 2, x = ln(0.25/0.5) = −ln 2,
    # k3 = 0.5 + ln 2 − 1 = 0.193147, k3+ = ρ·k3 = 2 ln 2 − 1 = 0.386294 (TRL's use_bias_correction_kl: the same).
    # Gradient ρ (log π_θ − log π_ref) = 2 ln 2 = 1.386294 (veRL's k3+ would give k3's value with k2's
    # gradient, log π_θ − log π_ref = ln 2). On-policy (π_old = π_θ) the value is k3's.
    value, grad = _kl_by_hand("k3+", [math.log(0.5)], [math.log(0.25)], [math.log(0.25)])
    assert value == pytest.approx([2 * math.log(2) - 1]) and grad == pytest.approx([2 * math.log(2)])
    value, _ = _kl_by_hand("k3+", [math.log(0.5)], [math.log(0.25)], [math.log(0.5)])
    assert value == pytest.approx([math.log(2) - 0.5])


def test_k3_plus_gradient_is_the_kl_gradient_by_enumeration() -> None:
    """On a 4-token vocabulary, E_{a∼π_old}[k3+(a)] and its gradient w.r.t. the logits θ of π_θ,
    summed exactly over a, equal KL(π_θ ‖ π_ref) = E_{π_θ}[k1] and ∇_θ KL; plain k3 has the right
    value on-policy but not the right gradient, and off-policy neither."""
    theta = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64).log()
    old = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).log()

    logp = torch.log_softmax(theta, dim=0)
    true_kl = (logp.exp() * kl_k1(logp, ref)).sum()  # Σ_a π_θ(a) (log π_θ(a) − log π_ref(a))
    (true_grad,) = torch.autograd.grad(true_kl, theta)

    def expected(name: str, sampler: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Σ_a π_s(a) · estimate(a) for tokens drawn from π_s (π_θ itself when None), and its gradient."""
        lp = torch.log_softmax(theta, dim=0)
        behaviour = lp.detach() if sampler is None else sampler
        value = (behaviour.exp() * get_kl_estimator(name)(lp, ref, behaviour)).sum()
        return value.item(), torch.autograd.grad(value, theta)[0]

    for sampler in (old, None):  # off-policy (π_old ≠ π_θ) and on-policy
        value, grad = expected("k3+", sampler)
        assert value == pytest.approx(true_kl.item(), rel=1e-12)
        torch.testing.assert_close(grad, true_grad, rtol=1e-10, atol=1e-12)
    on_value, on_grad = expected("k3", None)
    assert on_value == pytest.approx(true_kl.item(), rel=1e-12)  # k3 is unbiased in value on-policy ...
    assert (on_grad - true_grad).abs().max() > 0.01  # ... but its gradient is not the KL's
    off_value, _ = expected("k3", old)
    assert abs(off_value - true_kl.item()) > 0.01


# --------------------------------------------------------------------------- clipped policy loss


def _clipped_reference(logp, old, adv, lengths, lo, hi):
    out, clipped_count, total = [], 0, 0
    for i, n in enumerate(lengths):
        row = []
        for k in range(len(logp[i])):
            if k >= n:
                row.append(0.0)
                continue
            rho = math.exp(logp[i][k] - old[i][k])
            a = adv[i][k]
            unclipped = rho * a
            clipped = min(max(rho, 1 - lo), 1 + hi) * a
            row.append(-min(unclipped, clipped))
            clipped_count += clipped < unclipped
            total += 1
        out.append(row)
    return out, clipped_count / total


@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.3)])
@pytest.mark.parametrize("seed", SEEDS)
def test_clipped_policy_loss_matches_loop(seed: int, eps: tuple[float, float]) -> None:
    rng = random.Random(seed)
    n, t = rng.randint(2, 5), rng.randint(2, 9)
    lengths = [t] + [rng.randint(0, t) for _ in range(n - 1)]
    mask = _mask(lengths, t)
    old = _rand(rng, n, t, -4, -0.1)
    logp = old + _rand(rng, n, t, -0.6, 0.6)  # ratios well above and below the clip range
    adv = _rand(rng, n, t, -2, 2)
    per_token, stats = clipped_policy_loss(logp, old, adv, mask, PolicyLossParams(*eps))
    want, want_frac = _clipped_reference(logp.tolist(), old.tolist(), adv.tolist(), lengths, *eps)
    for i in range(n):
        for k in range(t):
            assert _close(per_token[i, k].item(), want[i][k], 1e-9)
    assert _close(stats["clip_frac"].item(), want_frac, 1e-9)
    ratios = [math.exp(logp[i, k].item() - old[i, k].item()) for i in range(n) for k in range(lengths[i])]
    assert _close(stats["ratio_max"].item(), max(ratios), 1e-9)
    assert _close(stats["ratio_mean"].item(), sum(ratios) / len(ratios), 1e-9)
    assert _close(stats["approx_kl"].item(), sum(r - 1 - math.log(r) for r in ratios) / len(ratios), 1e-9)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_clipped_policy_loss_by_hand_both_signs_inside_and_outside() -> None:
    # ρ = 1.5, 0.5, 1.1, 1.5, 0.5, 0.9 against ε = 0.2
    rho = torch.tensor([[1.5, 0.5, 1.1, 1.5, 0.5, 0.9]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, 2.0, -1.0, -1.0, -2.0]], dtype=torch.float64)
    old = torch.zeros_like(rho)
    per_token, stats = clipped_policy_loss(rho.log(), old, adv, torch.ones_like(rho))
    # Â>0, ρ>1+ε: clipped to 1.2 → −1.2; Â>0, ρ<1−ε: unclipped 0.5 is smaller → −0.5
    # Â>0 inside: −2.2; Â<0, ρ>1+ε: unclipped −1.5 → 1.5; Â<0, ρ<1−ε: clipped −0.8 → 0.8
    # Â<0 inside: −1.8 → 1.8
    assert per_token[0].tolist() == pytest.approx([-1.2, -0.5, -2.2, 1.5, 0.8, 1.8])
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert stats["ratio_max"].item() == pytest.approx(1.5)


def test_clipped_policy_loss_gradient_is_zero_where_clipped_and_padding_is_inert() -> None:
    logp = torch.tensor([[math.log(1.5), math.log(1.1), float("nan")]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, float("inf")]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    per_token, stats = clipped_policy_loss(logp, old, adv, mask)
    per_token.sum().backward()
    # d/dlogp (−ρ Â) = −ρ Â where unclipped, 0 where clipped or padding
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.1, 0.0])
    assert per_token[0, 2].item() == 0.0 and not math.isnan(stats["ratio_mean"].item())


def test_clipped_policy_loss_bad_eps() -> None:
    with pytest.raises(ValueError, match="0 <= eps_low <= 1"):
        PolicyLossParams(eps_low=1.5)
    with pytest.raises(ValueError, match="eps_high >= 0"):
        PolicyLossParams(eps_high=-0.1)


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregations_match_loops(seed: int) -> None:
    rng = random.Random(seed)
    n, t = rng.randint(2, 6), rng.randint(2, 8)
    lengths = [t, 0] + [rng.randint(0, t) for _ in range(n - 2)]  # includes an empty row
    mask = _mask(lengths, t)
    x = _rand(rng, n, t, -2, 2)
    x = torch.where(mask.bool(), x, torch.tensor(float("nan"), dtype=x.dtype))  # padding is inert
    rows = [[x[i, k].item() for k in range(lengths[i])] for i in range(n)]
    seq_mean = sum(sum(r) / len(r) if r else 0.0 for r in rows) / n
    tok_mean = sum(sum(r) for r in rows) / sum(lengths)
    max_len = t + 3
    sum_norm = sum(sum(r) / max_len for r in rows) / n
    seq_sum = sum(sum(r) for r in rows) / n
    assert _close(aggregate_loss(x, mask).item(), seq_mean, 1e-12)
    assert _close(aggregate_loss(x, mask, "seq-mean-token-mean").item(), seq_mean, 1e-12)
    assert _close(aggregate_loss(x, mask, "token-mean").item(), tok_mean, 1e-12)
    assert _close(aggregate_loss(x, mask, "seq-mean-token-sum").item(), seq_sum, 1e-12)
    assert _close(aggregate_loss(x, mask, "seq-mean-token-sum-norm", LossScale(max_len=max_len)).item(), sum_norm, 1e-12)


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_aggregations_over_minibatch_counts_add_up_over_any_split(mode: str, seed: int) -> None:
    """Parts of a minibatch aggregated over the whole minibatch's counts sum to its loss."""
    rng = random.Random(seed)
    n, t = rng.randint(3, 8), rng.randint(2, 8)
    lengths = [rng.randint(0, t) for _ in range(n)]
    mask = _mask(lengths, t)
    x = _rand(rng, n, t, -2, 2)
    scale = LossScale.of(mask, max_len=t)
    assert scale.num_seqs == n and scale.num_tokens == sum(lengths)
    whole = aggregate_loss(x, mask, mode, LossScale(max_len=t)).item()
    cut = sorted(rng.sample(range(1, n), rng.randint(0, n - 1)))
    parts = [slice(a, b) for a, b in zip([0, *cut], [*cut, n])]
    total = sum(aggregate_loss(x[p], mask[p], mode, scale).item() for p in parts)
    assert _close(total, whole, 1e-12)


def test_aggregations_with_no_valid_token_are_zero_not_nan() -> None:
    x, empty = torch.ones(2, 3), torch.zeros(2, 3)
    for mode in LOSS_AGGREGATIONS:
        assert aggregate_loss(x, empty, mode, LossScale(max_len=3)).item() == 0.0
        assert aggregate_loss(x, empty, mode, LossScale(0, 0, 3)).item() == 0.0


def test_sum_norm_needs_a_max_len_at_least_t() -> None:
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate_loss(torch.ones(1, 3), torch.ones(1, 3), "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="more than max_len=2"):
        aggregate_loss(torch.ones(1, 3), torch.ones(1, 3), "seq-mean-token-sum-norm", LossScale(max_len=2))


# --------------------------------------------------------------------------- μ = 1: the plain policy gradient


class TinyPolicy(torch.nn.Module):
    """A real (tiny) autoregressive scorer: embedding of the previous token + a linear head."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mu_one_clipped_gradient_equals_plain_policy_gradient(seed: int) -> None:
    torch.manual_seed(seed)
    n, t, vocab = 6, 7, 11
    model = TinyPolicy(vocab)
    inputs = torch.randint(0, vocab, (n, t))
    targets = torch.randint(0, vocab, (n, t))
    lengths = [7, 3, 5, 1, 7, 4]
    mask = _mask(lengths, t)
    adv = torch.randn(n, t) * mask
    logp = token_logprobs(model(inputs), targets)

    clipped, stats = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0)
    assert stats["clip_frac"].item() == 0.0 and stats["ratio_max"].item() == pytest.approx(1.0)
    g_clip = _grads(model, clipped)

    # −(1/N) Σ_i (1/|o_i|) Σ_t Â_{i,t} log π_θ(a_{i,t}|s_{i,t}), written out
    pg = sum(
        -(1.0 / lengths[i]) * sum(adv[i, k] * logp[i, k] for k in range(lengths[i])) for i in range(n)
    ) / n
    g_pg = _grads(model, pg)
    for a, b in zip(g_clip, g_pg):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert any(a.abs().max() > 1e-4 for a in g_clip)  # a real, nonzero gradient

    # token-mean aggregation: −(1/Σ|o_i|) Σ_i Σ_t Â log π
    tok, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_agg="token-mean")
    pg_tok = -sum(adv[i, k] * logp[i, k] for i in range(n) for k in range(lengths[i])) / sum(lengths)
    for a, b in zip(_grads(model, tok), _grads(model, pg_tok)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- grpo_loss


@pytest.mark.parametrize("kl_name", ["k3", "k1", "k2", "abs", "low_var_kl", "k3+"])
@pytest.mark.parametrize("agg", sorted(LOSS_AGGREGATIONS))
def test_grpo_loss_is_clipped_plus_beta_kl_aggregated(kl_name: str, agg: str) -> None:
    rng = random.Random(11)
    n, t, beta, max_len = 4, 5, 0.04, 8
    lengths = [5, 2, 4, 1]
    mask = _mask(lengths, t)
    old = _rand(rng, n, t, -3, -0.1)
    logp = old + _rand(rng, n, t, -0.4, 0.4)
    ref = _rand(rng, n, t, -3, -0.1)
    adv = _rand(rng, n, t, -1, 1)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, beta=beta, kl_estimator=kl_name, loss_agg=agg,
                            scale=LossScale(max_len=max_len))
    want_pg, _ = _clipped_reference(logp.tolist(), old.tolist(), adv.tolist(), lengths, 0.2, 0.2)
    def k3(x: float) -> float:
        return math.exp(x) - x - 1

    formula = {"k1": lambda x, r: -x, "k2": lambda x, r: x * x / 2, "k3": lambda x, r: k3(x),
               "abs": lambda x, r: abs(x), "low_var_kl": lambda x, r: max(-10.0, min(10.0, k3(max(-20, min(20, x))))),
               "k3+": lambda x, r: r * k3(x)}[kl_name]
    rows, kls = [], []
    for i in range(n):
        row = []
        for k in range(lengths[i]):
            rho = math.exp(logp[i, k].item() - old[i, k].item())
            kl = formula(ref[i, k].item() - logp[i, k].item(), rho)
            kls.append(kl)
            row.append(want_pg[i][k] + beta * kl)
        rows.append(row)
    if agg == "seq-mean-token-mean":
        want = sum(sum(r) / len(r) for r in rows) / n
    elif agg == "token-mean":
        want = sum(sum(r) for r in rows) / sum(lengths)
    elif agg == "seq-mean-token-sum":
        want = sum(sum(r) for r in rows) / n
    else:
        want = sum(sum(r) / max_len for r in rows) / n
    assert _close(loss.item(), want, 1e-9)
    assert _close(stats["kl"].item(), sum(kls) / len(kls), 1e-9)

    # beta = 0 or no reference: no KL term in the loss
    no_kl, s0 = grpo_loss(logp, old, ref, adv, mask, beta=0.0, loss_agg=agg, scale=LossScale(max_len=max_len))
    no_ref, s1 = grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_agg=agg, scale=LossScale(max_len=max_len))
    assert torch.equal(no_kl, no_ref) and torch.equal(no_kl, s0["pg_loss"])
    assert "kl" in s0 and "kl" not in s1


def test_grpo_loss_padding_garbage_gives_finite_gradients() -> None:
    logp = torch.tensor([[-1.0, -0.5, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4, float("nan")]])
    loss, stats = grpo_loss(logp, logp.detach(), ref, torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1, 1, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0
    assert torch.isfinite(stats["kl"])


def test_grpo_loss_errors() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        grpo_loss(x, x, None, x, torch.ones(1, 2), beta=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator 'kl'"):
        grpo_loss(x, x, x, x, torch.ones(1, 2), kl_estimator="kl")


# --------------------------------------------------------------------------- value loss


def test_clipped_value_loss_by_hand() -> None:
    # V_old = 1, ε_v = 0.2, G = 2 for the first four, G = 0 for the last two
    old = torch.ones(1, 6, dtype=torch.float64)
    returns = torch.tensor([[2.0, 2.0, 2.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[1.1, 1.5, 0.5, 3.0, 1.5, 0.5]], dtype=torch.float64, requires_grad=True)
    per_token, stats = clipped_value_loss(values, old, returns, torch.ones(1, 6))
    want = [
        max(0.9**2, 0.9**2),  # inside the range: both terms equal
        max(0.5**2, 0.8**2),  # moved up past +ε toward G: the clipped term (1.2) is larger
        max(1.5**2, 1.2**2),  # moved down past −ε away from G: unclipped larger
        max(1.0**2, 0.8**2),  # overshot G past +ε: unclipped larger
        max(1.5**2, 1.2**2),  # moved up past +ε away from G=0: unclipped larger
        max(0.5**2, 0.8**2),  # moved down past −ε toward G=0: clipped (0.8) larger
    ]
    assert per_token[0].tolist() == pytest.approx(want)
    assert stats["vf_clip_frac"].item() == pytest.approx(2 / 6)
    per_token.sum().backward()
    # where the clipped term wins, its gradient w.r.t. V is 0
    assert values.grad[0, 1].item() == 0.0 and values.grad[0, 5].item() == 0.0
    assert values.grad[0, 2].item() == pytest.approx(2 * (0.5 - 2.0))

    mse, s = clipped_value_loss(values, old, returns, torch.tensor([[1, 1, 1, 1, 1, 0]]), clip=False)
    assert mse[0].tolist() == pytest.approx([0.81, 0.25, 2.25, 1.0, 2.25, 0.0])
    assert s["vf_clip_frac"].item() == 0.0


def test_explained_variance() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, 0.0, 0.0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    values = torch.tensor([[1.5, 2.0, 2.5, -7.0], [4.5, 4.5, 3.0, 3.0]])
    g = [1.0, 2.0, 3.0, 4.0, 5.0]
    d = [1.0 - 1.5, 0.0, 0.5, -0.5, 0.5]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs)  # noqa: E731  (common 1/n cancels)
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - var(d) / var(g))
    assert explained_variance(values, torch.ones_like(returns), mask).item() == 0.0
