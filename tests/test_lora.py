"""LoRA through peft: only the adapters train, π_ref is the base model with the adapters off,
checkpoints hold the adapter and resume exactly, and `verirl eval` loads them merged."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="peft is not installed (pip install 'verirl[lora]')")

from test_trainer import make_config, run  # noqa: E402

from verirl.metrics import read_metrics  # noqa: E402
from verirl.models import attach_lora, load_causal_lm  # noqa: E402
from verirl.trainer import Trainer  # noqa: E402

LORA = ("model.lora_rank=4", "model.lora_alpha=8", "optim.lr=5e-2")


@pytest.fixture(autouse=True)
def plugin(toy_verifiers):
    yield


def test_only_the_adapters_train_and_the_base_is_the_reference(char_model, problems_file, tmp_path):
    trainer = Trainer(make_config(char_model, problems_file, tmp_path, *LORA, "algo.beta=0.1"))
    try:
        assert trainer.ref_model is None  # no second copy of the weights
        frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
        adapters = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert adapters and all("lora_" in n for n in adapters)
        first = trainer.train_step()
        second = trainer.train_step()
        assert first["policy/kl"] == pytest.approx(0.0, abs=1e-7)  # B = 0 at the start: π_θ = π_ref
        assert second["policy/kl"] > 0
        params = dict(trainer.model.named_parameters())
        assert all(torch.equal(params[n], p) for n, p in frozen.items())
        assert any(not torch.equal(params[n], p) for n, p in adapters.items())
        # the optimizer holds the adapters only
        held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert held == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    finally:
        trainer.close()


def test_lora_checkpoint_resumes_exactly_and_loads_merged(char_model, problems_file, tmp_path):
    extra = (*LORA, "train.steps=4", "train.save_every=2", "algo.beta=0.05")
    run(make_config(char_model, problems_file, tmp_path / "full", *extra))
    run(make_config(char_model, problems_file, tmp_path / "part", *extra[:-3], "train.steps=2", "train.save_every=2",
                    "algo.beta=0.05"))
    run(make_config(char_model, problems_file, tmp_path / "part", *extra, "train.resume=true"))
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in part] == [1, 2, 3, 4]
    for a, b in zip(full, part):
        for key in a:
            if not key.startswith(("perf/", "mem/")):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    ckpt = tmp_path / "full" / "checkpoints" / "step_000004"
    assert (ckpt / "adapter" / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    merged = load_causal_lm(str(ckpt), "float32", torch.device("cpu"))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    adapted = attach_lora(load_causal_lm(str(char_model), "float32", torch.device("cpu")), 4, 8, 0.0, "all-linear",
                          ckpt / "adapter")
    base = load_causal_lm(str(char_model), "float32", torch.device("cpu"))
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = adapted(input_ids=tokens).logits
        torch.testing.assert_close(merged(tokens).logits, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base(tokens).logits, want, atol=1e-3)  # the adapter changed something


def test_lora_config_errors():
    from verirl import ConfigError
    from verirl.config import load_config

    with pytest.raises(ConfigError, match="cannot be reset"):
        load_config(None, ["model.lora_rank=4", "algo.ref_reset_every=2"])
    with pytest.raises(ConfigError, match="lora_rank must be ≥ 0"):
        load_config(None, ["model.lora_rank=-1"])
