"""Checkpoints survive a SIGKILL in the middle of a write, and resume continues from them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from verirl.checkpoint import latest_checkpoint, list_checkpoints, load_state

CHILD = textwrap.dedent(
    """
    import sys, time, torch
    import verirl.checkpoint as ckpt
    from verirl import hookimpl, verifier
    from verirl.config import load_config
    from verirl.plugins import register_plugin
    from verirl.trainer import Trainer

    @verifier("first_digit")
    def first_digit(samples):
        return [1.0 if s.completion[:1].isdigit() else 0.0 for s in samples]

    class Plugin:
        @hookimpl
        def verirl_register_verifiers(self):
            return [first_digit]

    register_plugin(Plugin(), name="ckpt-test")
    marker, stall_step = sys.argv[1], int(sys.argv[2])
    real_save = torch.save

    def slow_save(obj, path, *a, **k):
        # the model files of this checkpoint are already in its temporary folder: stall
        # here so the parent's SIGKILL lands mid-write
        if isinstance(obj, dict) and obj.get("step") == stall_step:
            open(marker, "w").write(str(path))
            time.sleep(60)
        return real_save(obj, path, *a, **k)

    ckpt.torch.save = slow_save
    trainer = Trainer(load_config(None, sys.argv[3:]))
    trainer.train()
    trainer.close()
    """
)


# the child registers its own verifier in-process; no installed plugin is needed
CHILD_ENV = {**os.environ, "VERIRL_LOAD_PLUGINS": ""}


def overrides(char_model, problems, out, steps):
    return [
        f"model.name_or_path={char_model}", f"data.train={problems}", "data.eval=null",
        "data.prompt_template=Q: {question} A:", "rewards=[{verifier: first_digit}]", f"train.output_dir={out}",
        "train.progress=false", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=4", "algo.beta=0", "optim.lr=1e-2", "train.save_every=1", f"train.steps={steps}",
        "train.keep_checkpoints=5",
    ]


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(20)))
    return path


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(char_model, problems, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), "3", *overrides(char_model, problems, out, 4)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, env=CHILD_ENV,
    )
    deadline = time.time() + 240
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the child never reached the checkpoint write of step 3"
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(30)

    # the write of step 3 was cut short: its temporary folder is there, step 2 is intact
    assert any(p.name.startswith(".tmp-step_000003") for p in (out / "checkpoints").iterdir())
    assert [p.name for p in list_checkpoints(out)] == ["step_000001", "step_000002"]
    assert load_state(latest_checkpoint(out))["step"] == 2

    resumed = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "unused"), "-1", *overrides(char_model, problems, out, 4), "train.resume=true"],
        capture_output=True, text=True, timeout=300, env=CHILD_ENV,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(out)][-1] == "step_000004"
    assert not any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3 of the killed run was dropped and redone once
