"""The update's accumulated gradient equals one backward over the whole minibatch, for every
aggregation × micro-batch size × skip setting × truncation filter, in GRPO and in PPO.

The rollout is a real one from a tiny real model; its completions are cut to unequal
lengths (the token-mean bug of issue 9 is invisible when every completion has the same
length) and some rows get all-zero advantages (so skipping has rows to skip). The update
runs with a zero-learning-rate SGD and no clipping, so after it the parameters' ``.grad``
hold exactly the accumulated gradient; the reference is computed here, independently,
with one forward and one backward over all rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from verirl.config import LOSS_AGGREGATIONS, load_config
from verirl.losses import token_logprobs
from verirl.models import completion_logits
from verirl.policy_losses import grpo_loss
from verirl.ppo import policy_forward, ppo_loss
from verirl.rollout.base import RolloutBatch
from verirl.trainer import Trainer, _to_device

N_PROMPTS, G = 3, 4


@pytest.fixture(scope="module")
def trainers(char_model, problems_file, tmp_path_factory):
    built = {}
    for name in ("grpo", "ppo"):
        out = tmp_path_factory.mktemp(f"update-{name}")
        config = load_config(None, [
            f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
            "data.prompt_template='Q: {question}\nA:'", f"train.output_dir={out}", "train.progress=false",
            f"rollout.prompts_per_step={N_PROMPTS}", f"rollout.group_size={G}",
            "rollout.max_new_tokens=8", "algo.beta=0", "optim.max_grad_norm=0", f"algo.name={name}",
            "algo.beta_r=0", "train.seed=3",
        ])
        trainer = Trainer(config)
        trainer.optimizer, trainer.scheduler = _still(trainer.model)
        if trainer.ppo is not None:
            trainer.ppo.optimizer, trainer.ppo.scheduler = trainer.optimizer, trainer.scheduler
            trainer.ppo.critic_optimizer, trainer.ppo.critic_scheduler = _still(trainer.ppo.critic)
        torch.manual_seed(0)
        built[name] = (trainer, ragged_rollout(trainer))
    yield built
    for trainer, _ in built.values():
        trainer.close()


def _still(module: torch.nn.Module):
    """A real optimizer that leaves the weights where they are (so .grad can be read after)."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def ragged_rollout(trainer: Trainer) -> RolloutBatch:
    """A real rollout whose completions are cut to lengths 1..8 (unfinished where cut at 8)."""
    batch = _to_device(trainer.rollout().batch, trainer.device)
    n, t = batch.completion_ids.shape
    lengths = [(i * 3) % t + 1 for i in range(n)]
    mask = torch.tensor([[1 if j < lengths[i] else 0 for j in range(t)] for i in range(n)])
    ids = torch.where(mask.bool(), batch.completion_ids, torch.full_like(batch.completion_ids,
                                                                          trainer.tokenizer.pad_token_id))
    finished = torch.tensor([lengths[i] < t for i in range(n)])
    return RolloutBatch(batch.prompt_ids, batch.prompt_mask, ids, mask, None, batch.texts, finished)


def advantages_with_zero_rows(mask: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    adv = torch.randn(mask.shape, generator=g) * mask
    adv[::3] = 0.0  # rows 0, 3, 6, ...: nothing to learn, skippable
    return adv


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in module.parameters()]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert any(w.abs().sum() > 0 for w in want)  # the reference gradient is not trivially zero
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("truncated", [False, True])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("micro", [1, 5, N_PROMPTS * G])
@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_grpo_accumulated_gradient_is_the_full_batch_gradient(trainers, agg, micro, skip, truncated):
    trainer, batch = trainers["grpo"]
    a = trainer.config.algo
    a.loss_agg, a.micro_batch_size, a.skip_zero_advantage, a.mask_truncated = agg, micro, skip, truncated
    adv = advantages_with_zero_rows(batch.completion_mask)
    loss_mask = trainer.loss_mask(batch)
    assert truncated == bool((loss_mask != batch.completion_mask).any())

    stats = trainer.update(batch, adv, None, None, loss_mask)
    got = grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    logits = completion_logits(trainer.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                               batch.completion_mask, 1.0)
    logp = token_logprobs(logits, batch.completion_ids)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, loss_mask, beta=0.0, loss_agg=agg,
                        scale=_own_counts(trainer))
    loss.backward()
    assert_same(got, grads(trainer.model))
    assert stats["policy/loss"] == pytest.approx(loss.item(), rel=1e-4, abs=1e-7)


def _own_counts(trainer: Trainer):
    """The reference needs only the generation limit; every count is the batch's own."""
    from verirl.losses import LossScale

    return LossScale(max_len=trainer.config.rollout.max_new_tokens)


@pytest.mark.parametrize("micro", [1, 5, N_PROMPTS * G])
@pytest.mark.parametrize("agg", LOSS_AGGREGATIONS)
def test_ppo_accumulated_gradient_is_the_full_batch_gradient(trainers, agg, micro):
    trainer, batch = trainers["ppo"]
    ppo = trainer.ppo
    a = trainer.config.algo
    a.loss_agg, a.micro_batch_size, a.mask_truncated = agg, micro, True
    mask = batch.completion_mask
    adv = advantages_with_zero_rows(mask)
    g = torch.Generator().manual_seed(8)
    old_values = torch.randn(mask.shape, generator=g) * mask
    returns = torch.randn(mask.shape, generator=g) * mask
    loss_mask = trainer.loss_mask(batch)

    ppo.update(batch, None, old_values, adv, returns, loss_mask)
    got_policy, got_critic = grads(trainer.model), grads(ppo.critic)

    trainer.model.zero_grad(set_to_none=True)
    ppo.critic.zero_grad(set_to_none=True)
    logits, values = policy_forward(trainer.model, ppo.critic, batch, 1.0)
    logp = token_logprobs(logits, batch.completion_ids)
    entropy = torch.zeros_like(logp)
    loss, _ = ppo_loss(logp, logp.detach(), adv, values, old_values, returns, entropy, loss_mask,
                       loss_agg=agg, vf_coef=a.vf_coef, vf_clip=a.vf_clip, scale=_own_counts(trainer))
    loss.backward()
    assert_same(got_policy, grads(trainer.model))
    assert_same(got_critic, grads(ppo.critic))


def _with_engine_logprobs(trainer: Trainer, batch: RolloutBatch) -> RolloutBatch:
    """The batch with behaviour log-probs of a mismatched engine: the trainer's own log-probs
    shifted by a deterministic ±0.9 pattern, so some ratios pass any cap and some do not."""
    with torch.no_grad():
        logits = completion_logits(trainer.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                   batch.completion_mask, 1.0)
        logp = token_logprobs(logits, batch.completion_ids)
    shift = 0.9 * torch.sin(torch.arange(logp.numel(), dtype=logp.dtype)).reshape(logp.shape)
    engine = (logp + shift) * batch.completion_mask
    return RolloutBatch(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, engine,
                        batch.texts, batch.finished)


def _loop_is_weights(old: torch.Tensor, engine: torch.Tensor, mask: torch.Tensor, mode: str, cap: float):
    """``[N, T]`` weights of the rollout IS correction, by a plain loop."""
    out = torch.zeros_like(old)
    for i in range(old.shape[0]):
        valid = [j for j in range(old.shape[1]) if mask[i, j]]
        if mode == "token_truncate":
            for j in valid:
                out[i, j] = min(math.exp(old[i, j].item() - engine[i, j].item()), cap)
        else:
            seq = math.exp(sum(old[i, j].item() - engine[i, j].item() for j in valid))
            for j in valid:
                out[i, j] = 1.0 if 1 / cap <= seq <= cap else 0.0
    return out


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
@pytest.mark.parametrize("micro", [1, N_PROMPTS * G])
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_mask"])
def test_rollout_is_weights_the_policy_gradient(trainers, algo, mode, micro):
    """With a mismatched engine, the update's gradient is the loss's gradient with each
    token's policy term times the IS weight computed by a loop from the trainer's own π_old
    (one update per rollout: log π_θ detached) and the engine's log-probs; with the
    correction off it is the unweighted one."""
    trainer, batch = trainers[algo]
    a = trainer.config.algo
    a.loss_agg, a.micro_batch_size, a.mask_truncated, a.skip_zero_advantage = "token-mean", micro, False, False
    a.rollout_is, a.rollout_is_cap = mode, 1.8
    batch = _with_engine_logprobs(trainer, batch)
    mask = batch.completion_mask
    adv = advantages_with_zero_rows(mask)
    g = torch.Generator().manual_seed(9)
    old_values, returns = torch.randn(mask.shape, generator=g) * mask, torch.randn(mask.shape, generator=g) * mask
    try:
        if algo == "grpo":
            stats = trainer.update(batch, adv, None, None, mask)
        else:
            stats = trainer.ppo.update(batch, None, old_values, adv, returns, mask)
    finally:
        a.rollout_is = "none"
    got = grads(trainer.model)

    trainer.model.zero_grad(set_to_none=True)
    if algo == "grpo":
        logits = completion_logits(trainer.model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                   mask, 1.0)
    else:
        trainer.ppo.critic.zero_grad(set_to_none=True)
        logits, values = policy_forward(trainer.model, trainer.ppo.critic, batch, 1.0)
    logp = token_logprobs(logits, batch.completion_ids)
    weights = _loop_is_weights(logp.detach(), batch.logprobs, mask, mode, 1.8)
    assert 0 < float((weights * mask).sum()) and bool(((weights != 1) & mask.bool()).any())
    if algo == "grpo":
        loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_agg="token-mean",
                            scale=_own_counts(trainer), token_weights=weights)
    else:
        loss, _ = ppo_loss(logp, logp.detach(), adv, values, old_values, returns, torch.zeros_like(logp), mask,
                           loss_agg="token-mean", vf_coef=a.vf_coef, vf_clip=a.vf_clip, scale=_own_counts(trainer),
                           token_weights=weights)
    loss.backward()
    assert_same(got, grads(trainer.model))
    assert stats["policy/rollout_is_logp_diff_max"] == pytest.approx(float((batch.logprobs - logp.detach()).abs()
                                                                           .mul(mask).max()), rel=1e-4)
    key = "policy/rollout_is_truncated_frac" if mode == "token_truncate" else "policy/rollout_is_masked_frac"
    assert 0 < stats[key] < 1


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
@pytest.mark.parametrize("budget", [1, 40, 10_000])
def test_token_budget_packing_gives_the_unpacked_gradient(trainers, algo, budget):
    """``algo.micro_batch_tokens`` only regroups the rows (longest first, within the
    budget): the accumulated gradient is that of plain micro-batches of 5 rows."""
    trainer, batch = trainers[algo]
    a = trainer.config.algo
    a.loss_agg, a.mask_truncated, a.skip_zero_advantage, a.rollout_is = "token-mean", False, True, "none"
    mask = batch.completion_mask
    adv = advantages_with_zero_rows(mask)
    g = torch.Generator().manual_seed(10)
    old_values, returns = torch.randn(mask.shape, generator=g) * mask, torch.randn(mask.shape, generator=g) * mask
    modules = [trainer.model] + ([trainer.ppo.critic] if algo == "ppo" else [])

    def accumulated(tokens: int, micro: int) -> list[torch.Tensor]:
        a.micro_batch_tokens, a.micro_batch_size = tokens, micro
        if algo == "grpo":
            trainer.update(batch, adv, None, None, mask)
        else:
            trainer.ppo.update(batch, None, old_values, adv, returns, mask)
        return [g for m in modules for g in grads(m)]

    try:
        packed, unpacked = accumulated(budget, 0), accumulated(0, 5)
    finally:
        a.micro_batch_tokens, a.micro_batch_size = 0, 0
    assert_same(packed, unpacked)


def test_pack_by_tokens_keeps_every_row_once_within_the_budget():
    from verirl.batching import micro_batch_rows, pack_by_tokens

    prompt_lens = [5, 5, 7, 5, 6, 5, 5, 9]
    completion_lens = [3, 30, 12, 1, 29, 8, 60, 2]
    rows = list(range(8))
    packed = pack_by_tokens(rows, prompt_lens, completion_lens, 80)
    assert sorted(r for mb in packed for r in mb) == rows
    for mb in packed:
        cost = len(mb) * (max(prompt_lens[i] for i in mb) + max(completion_lens[i] for i in mb))
        assert cost <= 80 or len(mb) == 1
    assert packed[0] == [6]  # 65 tokens: alone
    assert [6] in pack_by_tokens(rows, prompt_lens, completion_lens, 10)  # over the budget: alone
    assert all(len(mb) <= 2 for mb in micro_batch_rows(rows, 2, 80, prompt_lens, completion_lens))
    assert micro_batch_rows(rows, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
