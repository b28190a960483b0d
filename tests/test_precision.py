"""One process, efficiently: bf16 compute over float32 master weights, AdamW's kernel choice."""

from __future__ import annotations

import math

import pytest
import torch

from verirl.config import load_config
from verirl.models import compute_autocast
from verirl.optim import adamw_kernel
from verirl.trainer import Trainer


@pytest.fixture(autouse=True)
def plugin(toy_verifiers):
    yield


def test_bf16_compute_keeps_float32_weights_and_optimizer_state(char_model, problems_file, tmp_path):
    config = load_config(None, [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
        "data.prompt_template='Q: {question}\nA:'", "rewards=[{verifier: starts_with_digit}]",
        f"train.output_dir={tmp_path / 'run'}", "train.progress=false", "rollout.prompts_per_step=2",
        "rollout.group_size=4", "rollout.max_new_tokens=6", "optim.lr=1e-2", "algo.beta=0", "train.save_every=0",
        "train.steps=2", "model.dtype=bfloat16", "model.fp32_master_weights=true", "algo.skip_zero_advantage=false",
    ])
    trainer = Trainer(config)
    try:
        before = [p.detach().clone() for p in trainer.model.parameters()]
        records = trainer.train()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        state = [s for s in trainer.optimizer.state.values()]
        assert state and all(s["exp_avg"].dtype == torch.float32 for s in state)
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
        assert all(math.isfinite(r["policy/loss"]) for r in records)
        # the forward computes in bfloat16 under the trainer's autocast
        with trainer.autocast():
            x = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert x.dtype == torch.bfloat16
    finally:
        trainer.close()


def test_autocast_off_is_a_no_op():
    with compute_autocast(torch.device("cpu"), None):
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.float32


def test_adamw_fused_only_for_plain_cuda_tensors():
    cpu = [torch.nn.Parameter(torch.ones(2))]
    assert adamw_kernel(cpu) == {}
    assert adamw_kernel([]) == {}
    if torch.cuda.is_available():
        cuda = [torch.nn.Parameter(torch.ones(2, device="cuda"))]
        assert adamw_kernel(cuda) == {"fused": True}
        assert adamw_kernel(cuda, fused=False) == {}
