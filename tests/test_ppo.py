"""PPO with a critic: the rollout math against plain loops, the loss by hand, the KL
controller, the critic's positions and checkpoints, and the trainer's PPO mode end to end
on a tiny real Llama (CPU, fixed seeds)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from verirl import ConfigError
from verirl.config import load_config
from verirl.critic import SharedValueHead, ValueModel, build_critic
from verirl.policy_losses import clipped_policy_loss
from verirl.metrics import read_metrics
from verirl.models import load_causal_lm
from verirl.ppo import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
    policy_forward,
    ppo_advantages,
    ppo_loss,
)
from verirl.rollout.base import RolloutBatch
from verirl.trainer import Trainer

# --------------------------------------------------------------------------- rollout math


def _loop_reference(scores, old_logp, ref_logp, values, lengths, beta_r, gamma, lam):
    """Per-token rewards, GAE, returns and whitening, one Python float at a time."""
    n, t_len = len(old_logp), len(old_logp[0])
    rewards = [[0.0] * t_len for _ in range(n)]
    adv = [[0.0] * t_len for _ in range(n)]
    ret = [[0.0] * t_len for _ in range(n)]
    for i in range(n):
        L = lengths[i]
        for t in range(L):
            rewards[i][t] = -beta_r * (old_logp[i][t] - ref_logp[i][t])
        rewards[i][L - 1] += scores[i]
        next_a, next_v = 0.0, 0.0  # V(s_{T+1}) = 0
        for t in reversed(range(L)):
            delta = rewards[i][t] + gamma * next_v - values[i][t]
            next_a = delta + gamma * lam * next_a
            next_v = values[i][t]
            adv[i][t] = next_a
            ret[i][t] = next_a + values[i][t]
    flat = [adv[i][t] for i in range(n) for t in range(lengths[i])]
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / (len(flat) - 1)
    white = [[(adv[i][t] - mean) / math.sqrt(var + 1e-8) if t < lengths[i] else 0.0 for t in range(t_len)]
             for i in range(n)]
    return rewards, white, ret


def _padded(rows, lengths, fill):
    return torch.tensor([[x if t < L else fill for t, x in enumerate(r)] for r, L in zip(rows, lengths)],
                        dtype=torch.float64)


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 0.95), (1, 0.9, 0.5), (2, 1.0, 1.0), (3, 0.8, 0.0)])
def test_ppo_advantages_match_python_loops(seed, gamma, lam):
    rng = random.Random(seed)
    n, t_len = 5, 7
    lengths = [rng.randint(1, t_len) for _ in range(n)]
    lengths[0] = t_len
    rand = lambda: [[rng.uniform(-2, 2) for _ in range(t_len)] for _ in range(n)]  # noqa: E731
    old, ref, values = rand(), rand(), rand()
    scores = [rng.choice([0.0, 1.0, 0.5]) for _ in range(n)]
    mask = torch.tensor([[1 if t < L else 0 for t in range(t_len)] for L in lengths])
    beta_r = 0.1
    # padding holds garbage: it must not reach any valid position
    r, a, g = ppo_advantages(torch.tensor(scores, dtype=torch.float64), _padded(old, lengths, 1e6),
                             _padded(ref, lengths, -1e6), _padded(values, lengths, float("nan")),
                             mask, beta_r, gamma, lam)
    want_r, want_a, want_g = _loop_reference(scores, old, ref, values, lengths, beta_r, gamma, lam)
    for i in range(n):
        for t in range(t_len):
            valid = t < lengths[i]
            assert r[i, t].item() == pytest.approx(want_r[i][t] if valid else 0.0, abs=1e-9)
            assert a[i, t].item() == pytest.approx(want_a[i][t] if valid else 0.0, abs=1e-9)
            assert g[i, t].item() == pytest.approx(want_g[i][t] if valid else 0.0, abs=1e-9)


def test_whitened_advantages_ignore_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    scores = torch.tensor([1.0, 0.0, 2.0])
    logp = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    values = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    _, adv, ret = ppo_advantages(scores, logp, logp, values, mask, 0.1, 1.0, 0.95)
    garbage = lambda x, v: torch.where(mask.bool(), x, torch.full_like(x, v))  # noqa: E731
    _, adv2, ret2 = ppo_advantages(scores, garbage(logp, 50.0), garbage(logp, -50.0), garbage(values, 1e9),
                                   mask, 0.1, 1.0, 0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)
    valid = adv[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-4)
    assert adv[~mask.bool()].abs().sum() == 0 and ret[~mask.bool()].abs().sum() == 0


def test_beta_r_zero_needs_no_reference_and_uses_only_the_outcome():
    mask = torch.tensor([[1, 1, 1]])
    r, _, g = ppo_advantages(torch.tensor([2.0]), torch.zeros(1, 3), None, torch.zeros(1, 3), mask, 0.0, 1.0, 1.0)
    assert r.tolist() == [[0.0, 0.0, 2.0]]
    assert g.tolist() == [[2.0, 2.0, 2.0]]  # λ = 1, V = 0: the Monte-Carlo return


# --------------------------------------------------------------------------- the loss by hand


def test_value_clip_cases_by_hand():
    """V_old = 0.5, G = 1, ε_v = 0.2: one token per case."""
    mask = torch.ones(1, 1)
    old = torch.tensor([[0.5]])
    ret = torch.tensor([[1.0]])
    cases = [
        # V_φ, clipped loss, plain MSE, clip binds (no gradient)
        (0.6, 0.16, 0.16, False),  # inside the clip range: the two terms agree
        (1.0, 0.09, 0.0, True),  # moved past +ε_v towards G: the clipped term (0.7 − 1)² wins
        (0.1, 0.81, 0.81, False),  # moved past −ε_v away from G: the unclipped term is larger
        (0.2, 0.64, 0.64, False),
    ]
    zeros = torch.zeros(1, 1)
    for v, want_clip, want_mse, binds in cases:
        values = torch.tensor([[v]], requires_grad=True)
        loss, stats = ppo_loss(zeros, zeros, zeros, values, old, ret, zeros, mask, vf_coef=1.0, vf_clip=0.2)
        assert stats["value_loss"].item() == pytest.approx(want_clip, abs=1e-6)
        assert stats["vf_clip_frac"].item() == (1.0 if binds else 0.0)
        loss.backward()
        want_grad = 0.0 if binds else 2 * (v - 1.0)
        assert values.grad.item() == pytest.approx(want_grad, abs=1e-6)
        _, plain = ppo_loss(zeros, zeros, zeros, values.detach(), old, ret, zeros, mask, vf_clip=None)
        assert plain["value_loss"].item() == pytest.approx(want_mse, abs=1e-6)
        assert plain["vf_clip_frac"].item() == 0.0


def test_ppo_loss_total_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    logp = torch.tensor([[-1.0, -2.0, 7.0]])
    adv = torch.tensor([[2.0, 1.0, 99.0]])
    values = torch.tensor([[0.6, 1.0, 5.0]])
    old_v = torch.tensor([[0.5, 0.5, 0.0]])
    ret = torch.tensor([[1.0, 1.0, 0.0]])
    ent = torch.tensor([[1.0, 3.0, 50.0]])
    loss, stats = ppo_loss(logp, logp, adv, values, old_v, ret, ent, mask, vf_coef=0.5, ent_coef=0.1, vf_clip=0.2)
    # ρ = 1: L_policy = mean(−A) = −1.5; L_V = mean(0.16, 0.09) = 0.125; H = mean(1, 3) = 2
    assert stats["pg_loss"].item() == pytest.approx(-1.5)
    assert stats["value_loss"].item() == pytest.approx(0.125)
    assert stats["entropy"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(-1.5 + 0.5 * 0.125 - 0.1 * 2.0)
    # the policy term is the clipped surrogate: with ρ far from 1 the clip binds on A > 0
    moved = logp + torch.tensor([[0.5, 0.0, 0.0]])
    _, s2 = ppo_loss(moved, logp, adv, values, old_v, ret, ent, mask)
    _, ref = clipped_policy_loss(moved, logp, adv, mask)
    assert s2["clip_frac"].item() == ref["clip_frac"].item() == 0.5
    with pytest.raises(ValueError, match="vf_clip must be >= 0"):
        ppo_loss(logp, logp, adv, values, old_v, ret, ent, mask, vf_clip=-1.0)


# --------------------------------------------------------------------------- KL controller


def test_kl_controllers_by_hand():
    fixed = make_kl_controller(0.05, None, 100)
    assert isinstance(fixed, FixedKLController)
    fixed.update(123.0, 10)
    assert fixed.value == 0.05
    ctl = make_kl_controller(0.1, 1.0, 100)
    assert isinstance(ctl, AdaptiveKLController)
    ctl.update(1.5, 10)  # e = clip(0.5, ±0.2) = 0.2: β ← 0.1·(1 + 0.2·10/100)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(0.9, 10)  # e = −0.1
    assert ctl.value == pytest.approx(0.102 * 0.99)
    ctl.update(0.0, 50)  # e = clip(−1) = −0.2
    assert ctl.value == pytest.approx(0.102 * 0.99 * 0.9)
    again = AdaptiveKLController(0.1, 1.0, 100)
    again.load_state_dict(ctl.state_dict())
    assert again.value == ctl.value
    with pytest.raises(ValueError, match="beta_r > 0, target_kl > 0"):
        AdaptiveKLController(0.0, 1.0, 100)
    with pytest.raises(ValueError, match="finite"):
        ctl.update(float("nan"), 1)


# --------------------------------------------------------------------------- critic


def _batch(tokenizer, prompts, completions):
    """Left-padded prompts and right-padded completions ending in EOS, as a rollout holds them."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    p_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    c_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos] for c in completions]
    P, T = max(map(len, p_ids)), max(map(len, c_ids))
    prompt_ids = torch.tensor([[pad] * (P - len(x)) + x for x in p_ids])
    prompt_mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in p_ids])
    completion_ids = torch.tensor([x + [pad] * (T - len(x)) for x in c_ids])
    completion_mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in c_ids])
    return RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, None, list(completions),
                        torch.ones(len(prompts), dtype=torch.bool))


@pytest.fixture(scope="module")
def tokenizer(char_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(char_model)


@pytest.mark.parametrize("kind", ["separate", "shared"])
def test_values_are_read_at_the_last_token_of_each_state(char_model, tokenizer, kind):
    """V(s_t) must be the head on the hidden state of the last token of s_t = prompt + o_<t
    (input position P−1+t), computed here from each unpadded prefix on its own."""
    torch.manual_seed(0)
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    critic = build_critic(kind, policy, str(char_model))
    torch.nn.init.normal_(critic.head.linear.weight)  # a zero head would read 0 everywhere
    torch.nn.init.normal_(critic.head.linear.bias)
    batch = _batch(tokenizer, ["Q: 12+3\nA:", "Q: 7\nA:"], ["15 ok", "7"])
    with torch.no_grad():
        logits, values = policy_forward(policy, critic, batch, temperature=1.0)
        for i in range(2):
            prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
            completion = batch.completion_ids[i][batch.completion_mask[i].bool()]
            for t in range(len(completion)):
                prefix = torch.cat([prompt, completion[:t]]).unsqueeze(0)  # s_t = prompt + o_<t
                trunk = critic.backbone if kind == "separate" else policy.model
                hidden = trunk(input_ids=prefix).last_hidden_state[:, -1]
                want = critic.head(hidden).item()
                assert values[i, t].item() == pytest.approx(want, abs=1e-5), (i, t)
                # the logits at the same position predict o_t
                assert torch.allclose(logits[i, t], policy(input_ids=prefix).logits[0, -1], atol=1e-5)


def test_shared_prompt_forward_gives_the_same_values_logits_and_gradients(char_model, tokenizer):
    torch.manual_seed(0)
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    critic = build_critic("separate", policy, str(char_model))
    torch.nn.init.normal_(critic.head.linear.weight)
    batch = _batch(tokenizer, ["Q: 12+3\nA:", "Q: 7\nA:", "Q: 12+3\nA:", "Q: 7\nA:", "Q: 12+3\nA:"],
                   ["15 ok", "7", "1", "70 no", "15"])
    valid = batch.completion_mask.bool()
    results = {}
    for share in (False, True):
        logits, values = policy_forward(policy, critic, batch, temperature=0.9, share_prompts=share)
        grads = torch.autograd.grad(values[valid].sum() + logits[valid].sum(), list(critic.parameters()) + list(policy.parameters()))
        results[share] = (logits[valid], values[valid], grads)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-4)
    for a, b in zip(results[False][2], results[True][2]):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()) + 1e-6)


def test_separate_critic_starts_from_the_policy_and_a_zero_head(char_model, tokenizer):
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    critic = build_critic("separate", policy, str(char_model))
    trunk = policy.model.state_dict()
    for name, tensor in critic.backbone.state_dict().items():
        assert torch.equal(tensor, trunk[name]), name
    batch = _batch(tokenizer, ["Q: 1\nA:"], ["2"])
    with torch.no_grad():
        _, values = policy_forward(policy, critic, batch, 1.0)
    assert values.abs().sum().item() == 0.0
    # a separate critic has its own parameters, not the policy's
    assert not {id(p) for p in critic.parameters()} & {id(p) for p in policy.parameters()}


def test_critic_path_initialises_from_another_model(char_model, tmp_path):
    from conftest import build_char_model

    other = build_char_model(tmp_path / "other", seed=7)
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    critic = build_critic("separate", policy, str(other))
    emb = critic.backbone.get_input_embeddings().weight
    assert torch.equal(emb, load_causal_lm(str(other), "float32", torch.device("cpu")).get_input_embeddings().weight)
    assert not torch.equal(emb, policy.get_input_embeddings().weight)


def test_critic_with_a_smaller_vocabulary_is_refused(char_model, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(small).save_pretrained(tmp_path / "small")
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"embeds 20 token ids but the policy uses \d+"):
        build_critic("separate", policy, str(tmp_path / "small"))


@pytest.mark.parametrize("kind", ["separate", "shared"])
def test_critic_save_and_load_round_trip(char_model, tokenizer, tmp_path, kind):
    policy = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    critic = build_critic(kind, policy, str(char_model))
    torch.nn.init.normal_(critic.head.linear.weight)
    if kind == "separate":  # a trained backbone must come back too, not the policy's copy
        with torch.no_grad():
            critic.backbone.get_input_embeddings().weight.mul_(2.0)
    critic.save_pretrained(tmp_path / "critic")
    meta = json.loads((tmp_path / "critic" / "critic.json").read_text())
    assert meta["kind"] == kind
    assert (tmp_path / "critic" / "value_head.safetensors").exists()
    checkpoint = tmp_path  # build_critic resumes from CHECKPOINT/critic
    loaded = build_critic(kind, policy, str(char_model), checkpoint)
    batch = _batch(tokenizer, ["Q: 12\nA:", "Q: 3\nA:"], ["5 5", "1"])
    with torch.no_grad():
        _, before = policy_forward(policy, critic, batch, 1.0)
        _, after = policy_forward(policy, loaded, batch, 1.0)
    assert torch.equal(before, after)
    assert before.abs().sum() > 0
    if kind == "shared":
        with pytest.raises(ConfigError, match="shared value head"):
            ValueModel.from_pretrained(str(tmp_path / "critic"))
    else:
        with pytest.raises(ConfigError, match="does not hold a shared value head"):
            SharedValueHead.from_pretrained(tmp_path / "critic")


# --------------------------------------------------------------------------- the trainer's PPO mode


@pytest.fixture()
def plugin(toy_verifiers):
    yield


def ppo_config(char_model, problems_file, out, *extra):
    return load_config(None, [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
        "data.prompt_template='Q: {question}\nA:'", "rewards=[{verifier: starts_with_digit}]",
        f"train.output_dir={out}", "train.progress=false",
        "rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=6",
        "optim.lr=1e-2", "algo.name=ppo", "algo.critic_lr=1e-2", "train.save_every=0", "train.seed=1", *extra,
    ])


def run(config):
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


GRPO_KEYS = [
    "reward/mean", "reward/std", "policy/kl", "policy/clip_frac", "policy/entropy", "policy/ratio_max",
    "policy/pg_loss", "policy/loss", "policy/grad_norm", "rollout/len_mean", "rollout/zero_std_frac",
    "optim/lr", "perf/rollout_tok_s", "perf/train_tok_s", "perf/step_s", "mem/peak_rss_mb",
]
CRITIC_KEYS = ["critic/value_loss", "critic/vf_clip_frac", "critic/explained_var", "critic/value_mean",
               "critic/return_mean", "critic/grad_norm", "ppo/beta_r", "ppo/kl_seq"]


def test_ppo_learns_a_simple_reward(char_model, problems_file, tmp_path, plugin):
    # β_r = 0 and one update per rollout: log π_old is the update's own log π_θ, so ρ = 1
    records = run(ppo_config(char_model, problems_file, tmp_path / "run", "train.steps=20", "algo.beta_r=0"))
    assert all(r["policy/ratio_max"] == pytest.approx(1.0) for r in records)
    rewards = [r["reward/mean"] for r in records]
    # a random 98-token model starts near 10/98; PPO must push the digit-first rate up
    assert sum(rewards[:4]) / 4 < 0.3
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.25, rewards
    # the critic tracks the rising return
    assert records[-1]["critic/value_mean"] > records[0]["critic/value_mean"] + 0.1


def test_ppo_metrics_and_checkpoint_hold_the_critic(char_model, problems_file, tmp_path, plugin):
    out = tmp_path / "run"
    records = run(ppo_config(char_model, problems_file, out, "train.steps=2", "train.save_every=1",
                             "algo.beta_r=0.1", "algo.ppo_epochs=2", "algo.minibatch_size=16"))
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for key in GRPO_KEYS + CRITIC_KEYS:
        assert key in metrics[0] and math.isfinite(metrics[0][key]), key
    assert metrics[0]["critic/value_mean"] == 0.0  # the zero head before any update
    assert metrics[0]["policy/kl"] == pytest.approx(0.0, abs=1e-7)  # π_old = π_ref at the start
    assert metrics[1]["policy/kl"] > 0 and metrics[1]["ppo/kl_seq"] != 0
    assert records[0]["policy/ratio_max"] > 1.0  # the second epoch moves ρ off 1
    ckpt = out / "checkpoints" / "step_000002"
    for name in ("model.safetensors", "value_head.safetensors", "critic.json", "config.json"):
        assert (ckpt / "critic" / name).exists(), name
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert set(state["ppo"]) == {"critic_optimizer", "critic_scheduler", "kl_ctl"}
    # the saved critic is the trained one: its values differ from the policy-initialised zero head
    saved = ValueModel.from_pretrained(str(ckpt / "critic"))
    assert saved.head.linear.weight.abs().sum() > 0


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_resume_matches_an_uninterrupted_run(char_model, problems_file, tmp_path, plugin, critic):
    extra = ("train.steps=4", "train.save_every=2", "algo.ppo_epochs=2", "algo.minibatch_size=16",
             "algo.beta_r=0.1", "algo.target_kl=0.05", "algo.kl_horizon=100", f"algo.critic={critic}")
    run(ppo_config(char_model, problems_file, tmp_path / "full", *extra))
    run(ppo_config(char_model, problems_file, tmp_path / "part", *extra[1:], "train.steps=2"))
    run(ppo_config(char_model, problems_file, tmp_path / "part", *extra, "train.resume=true"))
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in part] == [1, 2, 3, 4]
    assert full[3]["ppo/beta_r"] != 0.1  # the controller moved, so its restored state matters
    for a, b in zip(full, part):
        assert set(a) == set(b)
        for key in a:
            if not key.startswith(("perf/", "mem/")):
                assert a[key] == b[key], (a["step"], key)


def test_group_size_one_process_rewards_and_shared_critic(char_model, problems_file, tmp_path, plugin):
    records = run(ppo_config(char_model, problems_file, tmp_path / "r", "train.steps=2", "rollout.group_size=1",
                             "rollout.prompts_per_step=8", "algo.reward_mode=process", "algo.critic=shared",
                             "rewards=[{verifier: halves}]", "rollout.max_new_tokens=8", "algo.ent_coef=0.01",
                             "algo.vf_clip=null", "algo.beta_r=0"))
    for r in records:
        for key in ("policy/loss", "critic/value_loss", "critic/return_mean"):
            assert math.isfinite(r[key]), key
        assert r["critic/vf_clip_frac"] == 0.0  # plain MSE


def test_reference_model_follows_beta_r_not_beta(char_model, problems_file, tmp_path, plugin):
    no_ref = Trainer(ppo_config(char_model, problems_file, tmp_path / "a", "algo.beta=0.5", "algo.beta_r=0"))
    with_ref = Trainer(ppo_config(char_model, problems_file, tmp_path / "b", "algo.beta=0", "algo.beta_r=0.1"))
    try:
        assert no_ref.ref_model is None and with_ref.ref_model is not None
        assert no_ref.ppo is not None and isinstance(no_ref.ppo.critic, ValueModel)
    finally:
        no_ref.close()
        with_ref.close()


def test_critic_fits_the_returns_of_a_fixed_rollout(char_model, problems_file, tmp_path, plugin):
    """With the policy frozen (lr 0), repeated PPO steps on one rollout must fit the critic."""
    trainer = Trainer(ppo_config(char_model, problems_file, tmp_path / "r", "optim.lr=0", "algo.beta_r=0",
                                 "algo.lam=1.0", "algo.vf_clip=null", "algo.critic_lr=3e-3"))
    try:
        rollout = trainer.rollout()
        scores = torch.tensor(rollout.rewards.rewards)
        stats = [trainer.ppo.step(rollout.batch, scores, None) for _ in range(30)]
    finally:
        trainer.close()
    losses = [s["critic/value_loss"] for s in stats]
    assert losses[-1] < 0.5 * losses[0], losses
    # explained variance is measured on V_old, before each step's update: it must climb from 0
    assert stats[0]["critic/explained_var"] == 0.0 and stats[-1]["critic/explained_var"] > 0.5


def test_rollout_pass_is_the_same_in_trimmed_micro_batches(char_model, problems_file, tmp_path, plugin):
    """Micro-batches drop their all-padding columns; log π_old and V_old must not change."""
    # 24 tokens: a random model's completions end at EOS at different lengths (6 can leave none padded)
    whole = Trainer(ppo_config(char_model, problems_file, tmp_path / "a", "algo.critic=shared",
                               "rollout.max_new_tokens=24"))
    micro = Trainer(ppo_config(char_model, problems_file, tmp_path / "b", "algo.critic=shared",
                               "algo.minibatch_size=8", "algo.micro_batch_size=1", "rollout.max_new_tokens=24"))
    try:
        torch.nn.init.normal_(whole.ppo.critic.head.linear.weight)
        micro.ppo.critic.load_state_dict(whole.ppo.critic.state_dict())
        batch = whole.rollout().batch
        assert batch.completion_mask.sum(-1).min() < batch.completion_mask.shape[1]  # some rows are padded
        logp_a, v_a = whole.ppo.rollout_pass(batch)
        logp_b, v_b = micro.ppo.rollout_pass(batch)
    finally:
        whole.close()
        micro.close()
    assert torch.allclose(logp_a, logp_b, atol=1e-5) and torch.allclose(v_a, v_b, atol=1e-5)
    assert v_a.abs().sum() > 0


def test_resuming_a_grpo_checkpoint_as_ppo_is_refused(char_model, problems_file, tmp_path, plugin):
    out = tmp_path / "r"
    run(ppo_config(char_model, problems_file, out, "algo.name=grpo", "algo.beta=0", "train.steps=1"))
    with pytest.raises(ConfigError, match="written by a GRPO run"):
        Trainer(ppo_config(char_model, problems_file, out, "train.steps=2", "train.resume=true", "algo.beta_r=0"))


@pytest.mark.parametrize("override,message", [
    ("algo.gamma=1.5", r"algo.gamma must be in \[0, 1\]"),
    ("algo.lam=-0.1", r"algo.lam must be in \[0, 1\]"),
    ("algo.beta_r=-1", r"algo.beta_r must be ≥ 0"),
    ("algo.vf_clip=-0.1", r"algo.vf_clip must be ≥ 0, or null"),
    ("algo.critic_lr=0", r"algo.critic_lr must be > 0"),
    ("algo.drop_zero_std=true", r"drop_zero_std is GRPO's dynamic sampling"),
    ("algo.critic_path=/x", r"critic_path initialises a separate critic"),
])
def test_ppo_config_errors(plugin, override, message):
    extra = ["algo.critic=shared"] if "critic_path" in override else []
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["algo.name=ppo", "rewards=[{verifier: starts_with_digit}]", override, *extra])


def test_target_kl_needs_a_positive_start(plugin):
    rewards = "rewards=[{verifier: starts_with_digit}]"
    with pytest.raises(ConfigError, match="beta_r must start > 0"):
        load_config(None, ["algo.name=ppo", rewards, "algo.target_kl=1", "algo.beta_r=0"])
    config = load_config(None, ["algo.name=ppo", "rollout.group_size=1", rewards])
    assert config.rollout.group_size == 1  # a single completion per prompt is fine for PPO


def test_ppo_step_with_shared_prompt_forward_matches_the_plain_one(char_model, problems_file, tmp_path, plugin):
    weights = {}
    for share in (True, False):
        trainer = Trainer(ppo_config(char_model, problems_file, tmp_path / str(share), "train.steps=1",
                                     f"model.share_prompt_forward={str(share).lower()}", "algo.ppo_epochs=2",
                                     "algo.minibatch_size=16"))
        try:
            trainer.train_step()
            weights[share] = [p.detach().clone() for p in trainer.model.parameters()] + \
                [p.detach().clone() for p in trainer.ppo.critic.parameters()]
        finally:
            trainer.close()
    # two AdamW steps at lr 1e-2: float noise in a near-zero gradient moves a weight by up to ~1e-5
    for a, b in zip(weights[True], weights[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
