"""guard_step on a real tiny model and a real AdamW: a NaN/inf loss or gradient leaves
weights, optimizer state and schedule untouched; a finite one is clipped and stepped
exactly as clip_grad_norm_ + step would."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from verirl.guard import guard_step


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return model, opt, sched


def backward(model, scale: float = 1.0) -> torch.Tensor:
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    loss = model(x).pow(2).mean() * scale
    loss.backward()
    return loss.detach()


def snapshot(model, opt, sched):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), sched.last_epoch


def same(a, b) -> bool:
    (wa, oa, ea), (wb, ob, eb) = a, b
    tensors = lambda o: [t for s in o["state"].values() for t in s.values()]  # noqa: E731
    return (ea == eb and all(torch.equal(wa[k], wb[k]) for k in wa)
            and len(tensors(oa)) == len(tensors(ob)) and all(torch.equal(x, y) for x, y in zip(tensors(oa), tensors(ob))))


@pytest.mark.parametrize("fault", ["nan_grad", "inf_grad", "nan_loss"])
def test_a_fault_skips_the_step_and_touches_nothing(fault):
    model, opt, sched = setup()
    for _ in range(2):  # some optimizer state to keep
        opt.zero_grad()
        backward(model)
        assert guard_step([model.parameters()], 1.0, [opt.step, sched.step], []).taken
    before = snapshot(model, opt, sched)
    opt.zero_grad()
    loss = backward(model)
    if fault == "nan_grad":
        model[0].weight.grad[0, 0] = math.nan
    elif fault == "inf_grad":
        model[2].bias.grad.fill_(math.inf)
    else:
        loss = loss * math.nan  # a loss term with no gradient path: the gradients stay finite
    done = guard_step([model.parameters()], 1.0, [opt.step, sched.step], [loss])
    assert not done.taken and "non-finite" in done.reason
    assert same(before, snapshot(model, opt, sched))
    assert all(p.grad is None for p in model.parameters())  # nothing left to leak into the next step


@pytest.mark.parametrize("max_norm", [0.0, 0.05, 100.0])
def test_a_finite_step_equals_clip_then_step(max_norm):
    (m1, o1, s1), (m2, o2, s2) = setup(), setup()
    for _ in range(3):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            backward(m, scale=5.0)
        norm = float(torch.nn.utils.clip_grad_norm_(m1.parameters(), max_norm)) if max_norm > 0 else None
        o1.step()
        s1.step()
        done = guard_step([m2.parameters()], max_norm, [o2.step, s2.step], [])
        assert done.taken
        if norm is not None:
            assert done.grad_norms[0] == pytest.approx(norm)
    assert same(snapshot(m1, o1, s1), snapshot(m2, o2, s2))


def test_two_groups_are_clipped_each_and_skipped_together():
    (policy, opt_p, sched_p), (critic, opt_c, sched_c) = setup(0), setup(1)
    opt_p.zero_grad(), opt_c.zero_grad()
    backward(policy), backward(critic)
    critic[0].bias.grad[0] = math.nan
    before = snapshot(policy, opt_p, sched_p)
    done = guard_step([policy.parameters(), critic.parameters()], 1.0,
                      [opt_p.step, sched_p.step, opt_c.step, sched_c.step], [])
    assert not done.taken and math.isfinite(done.grad_norms[0]) and math.isnan(done.grad_norms[1])
    assert same(before, snapshot(policy, opt_p, sched_p))  # the policy skipped too: one update, both or neither
