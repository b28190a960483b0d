"""What verirl guarantees (the README's section of that name), each proven here:

1. kill at any moment: SIGKILL during rollout, update and checkpoint write, resume,
   same result as an uninterrupted run;
2. bad input fails early and clearly: exit 2, one message naming the problem and the
   fix, before any model loads, no run directory left behind;
3. numerical faults: a NaN/inf gradient skips that update with weights and optimizer
   state untouched, is logged with its step, counted, and the run stops past
   ``train.max_bad_updates`` leaving its last good checkpoint;
4. verifier faults never stop training: raising, blocking, spinning in C, wrong length,
   NaN, all inside real training steps, counted in the metrics and the summary;
5. hostile completions inside training: the verifier tests' hostile cases go through
   the reward path of a real training step: no code runs, memory and time stay bounded.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from verirl import hookimpl, verifier
from verirl.checkpoint import latest_checkpoint, list_checkpoints, load_state
from verirl.cli import main as cli_main
from verirl.config import load_config
from verirl.metrics import read_metrics
from verirl.plugins import register_plugin, unregister_plugin
from verirl.report import run_summary
from verirl.sandbox import WorkerPool
from verirl.trainer import Trainer, TrainingAborted

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- 1. kill at any moment

# The child runs `verirl train` (verirl.cli.main) on the shipped tiny model with its
# instrumented points wrapped: when the chosen point of the chosen step is reached it
# writes the marker file and sleeps, inside that phase, until the parent SIGKILLs its
# process group. The wrappers only wait; they change nothing the run computes.
KILL_CHILD = textwrap.dedent(
    r"""
    import os, shutil, sys, time
    import torch, transformers
    import verirl.checkpoint as ckpt
    from verirl.cli import main
    from verirl.rewards import RewardFunction
    from verirl.rollout.hf import HFEngine
    from verirl.trainer import Trainer

    marker, target = sys.argv[1], sys.argv[2]          # target: "phase:point:step", or "none"
    phase, point, step = target.split(":") if target != "none" else ("", "", "0")
    step = int(step)
    now = {"step": None, "saving": None}               # the training step running, the step being saved

    def stall(here, at):
        if (here, at) == (point, step):
            with open(marker, "w") as fh:
                fh.write(f"{phase}:{point}:{at}")
            time.sleep(600)

    def wrap(owner, name, before=None, after=None):
        real = getattr(owner, name)
        def wrapper(*a, **k):
            if before: before(*a, **k)
            out = real(*a, **k)
            if after: after(*a, **k)
            return out
        setattr(owner, name, wrapper)

    def in_step(fn):
        def wrapper(self, *a, **k):
            now["step"] = self.step + 1
            try:
                return fn(self, *a, **k)
            finally:
                now["step"] = None
        return wrapper

    def saving(fn):
        def wrapper(self, *a, **k):
            now["saving"] = self.step
            try:
                return fn(self, *a, **k)
            finally:
                now["saving"] = None
        return wrapper

    Trainer.train_step = in_step(Trainer.train_step)
    Trainer.save = saving(Trainer.save)
    # rollout: sampling, then scoring (evals run outside train_step and are not stopped)
    wrap(HFEngine, "generate", before=lambda *a, **k: stall("generate", now["step"]))
    wrap(RewardFunction, "__call__", before=lambda *a, **k: stall("score", now["step"]))
    # update: the backward pass, then the optimizer step
    wrap(torch.Tensor, "backward", before=lambda *a, **k: stall("backward", now["step"]))
    wrap(torch.optim.AdamW, "step", before=lambda *a, **k: stall("optimizer_step", now["step"]))
    # checkpoint write: weights written, trainer state being written, all written but not
    # yet renamed into place, and an old checkpoint's delete half done
    wrap(transformers.PreTrainedModel, "save_pretrained", after=lambda *a, **k: stall("weights", now["saving"]))
    wrap(ckpt.torch, "save", before=lambda *a, **k: stall("trainer_state", now["saving"]))
    real_rename, real_rmtree = ckpt.os.rename, ckpt.shutil.rmtree

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-step_"):
            stall("rename", now["saving"])
        return real_rename(src, dst)

    def rmtree(path, *a, **k):
        if os.path.basename(str(path)).startswith(".pruned-") and (point, step) == ("prune", now["saving"]):
            first = sorted(p for p in os.listdir(path))[0]
            os.remove(os.path.join(path, first))      # the delete has begun
            stall("prune", now["saving"])
        return real_rmtree(path, *a, **k)

    ckpt.os.rename = rename
    ckpt.shutil.rmtree = rmtree
    sys.exit(main(["train", "configs/tiny.yaml", *sys.argv[3:]]))
    """
)

KILL_STEPS = 8
KILL_POINTS = {
    "rollout": ["generate", "score"],
    "update": ["backward", "optimizer_step"],
    "checkpoint": ["weights", "trainer_state", "rename", "prune"],
}


def kill_plan(seed: int) -> list[tuple[str, str, int]]:
    """One kill at every point of KILL_POINTS, in a seeded order, at seeded steps ≥ 3
    (pruning starts at step 3) that never go back. A kill inside step s leaves checkpoint
    s − 1 the newest, so the next kill may stop step s again; a kill inside step s's prune
    leaves checkpoint s complete, so the next kill is at a later step."""
    rng = random.Random(seed)
    points = [(phase, point) for phase, names in KILL_POINTS.items() for point in names]
    while True:
        rng.shuffle(points)
        steps = sorted(rng.choices(range(3, KILL_STEPS + 1), k=len(points)))
        if all(later > step for (_, point), step, later in zip(points, steps, steps[1:]) if point == "prune"):
            return [(phase, point, step) for (phase, point), step in zip(points, steps)]


def kill_overrides(out: Path) -> list[str]:
    return [f"train.output_dir={out}", f"train.steps={KILL_STEPS}", "rollout.prompts_per_step=2",
            "rollout.group_size=4", "rollout.max_new_tokens=24", "data.max_eval=8", "train.eval_every=3",
            "train.eval_batch_size=8", "train.save_every=1", "train.keep_checkpoints=2", "train.progress=false",
            "train.show_samples_every=0", "train.threads=1"]


def run_child(marker: Path, target: str, overrides: list[str], wait_for_marker: bool) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(marker), target, *overrides], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def assert_checkpoints_complete(out: Path) -> None:
    """Every listed checkpoint is whole: its state names its own step and its weights load."""
    for cp in list_checkpoints(out):
        assert load_state(cp)["step"] == int(cp.name.split("_")[1])
        assert load_file(cp / "model.safetensors")
        assert (cp / "tokenizer_config.json").exists()


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "mem/"))} for r in records]


@pytest.mark.slow
def test_sigkill_at_seeded_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    plan = kill_plan(seed=13)
    assert sorted(point for _, point, _ in plan) == sorted(p for names in KILL_POINTS.values() for p in names)
    reference = tmp_path / "reference"
    done = run_child(tmp_path / "unused", "none", kill_overrides(reference), False)
    assert done.wait(300) == 0, done.stderr.read().decode()[-3000:]

    out = tmp_path / "killed"
    for k, (phase, point, step) in enumerate(plan):
        marker = tmp_path / f"marker{k}"
        overrides = kill_overrides(out) + (["train.resume=true"] if k else [])
        child = run_child(marker, f"{phase}:{point}:{step}", overrides, True)
        deadline = time.time() + 300
        while not marker.exists():
            assert child.poll() is None, f"kill {k} ({phase}:{point}:{step}): the child ended first\n" + \
                child.stderr.read().decode()[-3000:]
            assert time.time() < deadline, f"kill {k}: the child never reached {phase}:{point} of step {step}"
            time.sleep(0.05)
        time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
        assert marker.read_text() == f"{phase}:{point}:{step}"

        # what the kill left: every listed checkpoint is complete, the cut-short one is not listed
        assert_checkpoints_complete(out)
        names = [p.name for p in (out / "checkpoints").iterdir()]
        latest = int(latest_checkpoint(out).name.split("_")[1])
        if point in ("weights", "trainer_state", "rename"):
            assert any(n.startswith(f".tmp-step_{step:06d}") for n in names), names
            assert latest == step - 1
        elif point == "prune":
            assert any(n.startswith(".pruned-step_") for n in names), names
            assert latest == step
        else:
            assert latest == step - 1

    final = run_child(tmp_path / "unused", "none", kill_overrides(out) + ["train.resume=true"], False)
    assert final.wait(300) == 0, final.stderr.read().decode()[-3000:]
    assert_checkpoints_complete(out)
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    got, want = read_metrics(out), read_metrics(reference)
    assert [r["step"] for r in got] == list(range(KILL_STEPS + 1))  # no step missing or twice
    assert comparable(got) == comparable(want)
    samples = lambda d: [(s["step"], s["completion"], s["reward"])  # noqa: E731
                         for s in map(json.loads, (d / "samples.jsonl").read_text().splitlines())]
    assert samples(out) == samples(reference)


# --------------------------------------------------------------------------- 2. bad input


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading any model or tokenizer fails the test: the error must come first."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the input was refused")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_INPUT = {
    # name: (overrides, the problem named, the fix named)
    "unknown key": (["algo.bta=0.1"], "unknown config key 'algo.bta'", "did you mean algo.beta"),
    "wrong type": (["train.steps=ten"], "'train.steps' must be int", "got 'ten'"),
    "unknown verifier": (["rewards=[{verifier: math_anwser}]"], "unknown verifier 'math_anwser'", "math_answer"),
    "unknown verifier param": (["rewards=[{verifier: math_answer, timout: 2}]"], "timout", "timeout"),
    **{f"missing {key} file": ([f"{key}={{tmp}}/nope.jsonl"], f"{key}: file not found: {{tmp}}/nope.jsonl",
                                "give a JSONL path, builtin:NAME/FILE or hf:NAME")
       for key in ("data.train", "data.eval")},
    "empty data file": (["data.train={empty}"], "data.train: {empty}: no rows",
                        "give a JSONL file with one problem per line"),
    "malformed JSONL line": (["data.train={malformed}"], "data.train: {malformed}:2: not valid JSON",
                             "each line must be one JSON object: fix line 2 or delete it"),
    "rows without an answer": (["data.train={no_answer}"], "data.train: {no_answer} row 0: no answer field",
                               "set data.answer_field"),
    "model path not found": (["model.name_or_path={tmp}/runs/x/checkpoints/step_000150"], "not found",
                             "give a model directory, a hub id, or builtin:tiny-arith"),
    "group_size < 2 for GRPO": (["rollout.group_size=1"], "group_size must be ≥ 2 for GRPO", "algo.name=ppo"),
    "incompatible options": (["algo.name=ppo", "algo.drop_zero_std=true"], "drop_zero_std",
                             "leave it false with algo.name=ppo"),
    "unwritable output directory": (["train.output_dir={file}/run"], "cannot be created", "choose another path"),
    "earlier run in output_dir": (["train.output_dir={earlier}"], "holds an earlier run",
                                  "train.resume=true, replace it with train.overwrite=true"),
    "resume without a checkpoint": (["train.resume=true"], "holds no checkpoint" , "leave train.resume out"),
    "removed key": (["train.tensorboard=true"], "'train.tensorboard' was replaced", "train.report_to=[tensorboard]"),
    "unknown logging backend": (["train.report_to=[mlflow]"], "unknown logging backend 'mlflow'", "tensorboard"),
    "resume and overwrite": (["train.resume=true", "train.overwrite=true"], "set one of them", "train.overwrite"),
    "unknown eval verifier": (["train.eval_verifier=math_anwser"], "unknown verifier 'math_anwser'", "math_answer"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_early_and_clearly(case, tmp_path, capsys, no_model_loads):
    overrides, problem, fix = BAD_INPUT[case]
    files = {
        "tmp": tmp_path,
        "empty": write(tmp_path / "empty.jsonl", ""),
        "malformed": write(tmp_path / "malformed.jsonl", '{"question": "1+1?", "answer": "#### 2"}\n{oops\n'),
        "no_answer": write(tmp_path / "no_answer.jsonl", '{"question": "1+1?", "response": "2"}\n'),
        "file": write(tmp_path / "a_file", "not a directory"),
        "earlier": write(tmp_path / "earlier" / "metrics.jsonl", '{"step": 1}\n').parent,
    }
    out = tmp_path / "run"

    def fill(text: str) -> str:  # the {name} placeholders → this test's files
        for name, path in files.items():
            text = text.replace("{" + name + "}", str(path))
        return text

    overrides, problem, fix = [fill(o) for o in overrides], fill(problem), fill(fix)
    args = [f"train.output_dir={out}", *overrides]
    if case == "resume without a checkpoint":
        write(out / "metrics.jsonl", '{"step": 1}\n')  # killed before its first checkpoint
    code = cli_main(["train", "configs/tiny.yaml", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and problem in lines[0] and fix in lines[0], err
    assert "Traceback" not in err
    if case != "resume without a checkpoint":
        assert not out.exists()  # a failed start leaves no run directory behind


# --------------------------------------------------------------------------- 3. numerical faults


def poison_gradients(model, at_calls: set[int], value: float):
    """A gradient hook on the input embedding: on the listed backward passes (1-based,
    one per step here) its gradient is multiplied by ``value`` (NaN or inf)."""
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * value if calls["n"] in at_calls else grad

    return model.get_input_embeddings().weight.register_hook(hook)


def optimizer_tensors(state: dict) -> list[torch.Tensor]:
    return [t for s in state["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("algo, value", [("grpo", math.nan), ("ppo", math.inf)])
def test_nan_or_inf_gradients_skip_the_update_and_stop_past_the_limit(algo, value, small_config, tmp_path, caplog):
    out = tmp_path / "run"
    extra = ["train.steps=8", "train.save_every=1", "train.keep_checkpoints=10", "train.max_bad_updates=2"]
    if algo == "ppo":
        extra += ["algo.name=ppo", "algo.critic_lr=1e-2"]
    trainer = Trainer(small_config(out, *extra))
    poison_gradients(trainer.model, {3, 5, 7}, value)
    try:
        with pytest.raises(TrainingAborted, match="3 optimizer steps were skipped.*the last checkpoint is .*step_000006"):
            trainer.train()
    finally:
        trainer.close()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 8))
    assert [m["optim/skipped_updates"] for m in metrics] == [0, 0, 1, 0, 1, 0, 1]
    assert [m["optim/skipped_total"] for m in metrics] == [0, 0, 1, 1, 2, 2, 3]
    for step in (3, 5, 7):
        assert f"step {step}: 1 optimizer step(s) skipped" in caplog.text

    cps = {int(p.name.split("_")[1]): p for p in list_checkpoints(out)}
    assert sorted(cps) == [1, 2, 3, 4, 5, 6]  # the aborted step 7 wrote none
    folders = ["", "critic"] if algo == "ppo" else [""]

    def weights(step):  # every tensor of the policy (and the critic's backbone and head)
        return {f"{f}/{file.name}/{k}": v for f in folders for file in sorted((cps[step] / f).glob("*.safetensors"))
                for k, v in load_file(file).items()}

    def optim(step):
        state = load_state(cps[step])
        tensors = optimizer_tensors(state["optimizer"])
        if algo == "ppo":
            tensors += optimizer_tensors(state["ppo"]["critic_optimizer"])
        return tensors, state["scheduler"]["last_epoch"]

    # the skipped step 3 left weights, optimizer moments and schedule exactly as step 2 had them
    assert all(torch.equal(a, b) for a, b in zip(weights(2).values(), weights(3).values()))
    (t2, e2), (t3, e3), (_, e4) = optim(2), optim(3), optim(4)
    assert e2 == e3 and all(torch.equal(a, b) for a, b in zip(t2, t3))
    # the next step updated again
    assert e4 == e3 + 1 and not all(torch.equal(a, b) for a, b in zip(weights(3).values(), weights(4).values()))
    assert all(torch.isfinite(v).all() for v in weights(6).values())
    assert load_state(cps[6])["bad_updates"] == 2


# --------------------------------------------------------------------------- 4. verifier faults


@verifier("raises")
def raises(samples):
    """Always raises."""
    raise RuntimeError("a bug in the plugin")


@verifier("sleeps_in_c")
def sleeps_in_c(samples):
    """Blocks in a C call that releases the GIL (a sleep) far past its batch_timeout."""
    time.sleep(120)
    return [1.0] * len(samples)


@verifier("spins_in_c")
class SpinsInC:
    """Spins in C holding the GIL, inside a WorkerPool whose per-item bound kills it."""

    def __init__(self):
        # catastrophic backtracking: `re` runs 2^64 steps in C without releasing the GIL
        self.pool = WorkerPool(functools.partial(re.match, r"(a+)+$"), workers=2, timeout_s=0.5, memory_mb=None)

    def __call__(self, samples):
        return self.pool.map(["a" * 64 + "b"] * len(samples))

    def close(self):
        self.pool.close()


@verifier("wrong_length")
def wrong_length(samples):
    """One score short."""
    return [1.0] * (len(samples) - 1)


@verifier("returns_nan")
def returns_nan(samples):
    """NaN for every sample."""
    return [math.nan] * len(samples)


class FaultyVerifiers:
    @hookimpl
    def verirl_register_verifiers(self):
        return [raises, sleeps_in_c, SpinsInC, wrong_length, returns_nan]


FAULTS = {"raises": "errors", "sleeps_in_c": "timeouts", "spins_in_c": "timeouts", "wrong_length": "errors",
          "returns_nan": "errors"}


def test_verifier_faults_never_stop_training(small_config, train_run, tmp_path):
    register_plugin(FaultyVerifiers(), name="faulty-verifiers")
    out = tmp_path / "run"
    terms = ", ".join(["{verifier: starts_with_digit}", "{verifier: raises}",
                       "{verifier: sleeps_in_c, batch_timeout: 0.5}", "{verifier: spins_in_c}",
                       "{verifier: wrong_length}", "{verifier: returns_nan}"])
    try:
        records = train_run(small_config(out, "train.steps=2", "train.save_every=0", f"rewards=[{terms}]"))
    finally:
        unregister_plugin("faulty-verifiers")
    n = 2 * 4
    assert [r["step"] for r in records] == [1, 2] and latest_checkpoint(out).name == "step_000002"
    for r in records:
        assert r["verifier/starts_with_digit/errors"] == 0 and r["verifier/starts_with_digit/timeouts"] == 0
        for name, kind in FAULTS.items():
            assert r[f"verifier/{name}/{kind}"] == n, (name, r)
        # the faulty terms gave their fallback (0): the reward is the working verifier's
        assert r["reward/mean"] == pytest.approx(r["reward/starts_with_digit"])
    summary = run_summary(out, wall_s=1.0)
    for name, kind in FAULTS.items():
        assert re.search(rf"{name}: (\d+) timeouts, (\d+) errors", summary), summary
        timeouts, errors = map(int, re.search(rf"{name}: (\d+) timeouts, (\d+) errors", summary).groups())
        assert (timeouts, errors) == ((2 * n, 0) if kind == "timeouts" else (0, 2 * n))


# --------------------------------------------------------------------------- 5. hostile completions


class HostileEngine:
    """The trainer's own engine samples as usual; the texts it hands back are replaced
    by hostile completions, as if the model had written them (the tiny model cannot be
    made to). Everything after sampling (the reward path, advantages, the update) is
    the real training step."""

    def __init__(self, engine, texts):
        self.engine, self.texts = engine, list(texts)

    def generate(self, prompts, sampling, on_finished=None):
        batch = self.engine.generate(prompts, sampling)
        batch.texts = [self.texts[i % len(self.texts)] for i in range(len(batch.texts))]
        if on_finished is not None:  # an engine that knows its completions only at the end reports them then
            rows = list(range(len(batch.texts)))
            on_finished(rows, batch.texts, [int(n) for n in batch.num_tokens])
        return batch

    def sleep(self):
        return None

    def sync_weights(self, state_dict=None):
        return None


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


def test_hostile_completions_inside_a_training_step(char_model, problems_file, tmp_path, monkeypatch):
    from test_hostile import hostile_completions

    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    texts = hostile_completions(str(sentinel))
    group = 4
    timeout = 1.0
    config = load_config(None, [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
        "data.prompt_template='Q: {question}\nA:'", f"train.output_dir={tmp_path / 'run'}", "train.progress=false",
        f"rewards=[{{verifier: math_answer, timeout: {timeout}, workers: 2, memory_mb: 512, cache_size: 0}}]",
        f"rollout.prompts_per_step={math.ceil(len(texts) / group)}", f"rollout.group_size={group}",
        "rollout.max_new_tokens=4", "algo.beta=0", "train.steps=1", "train.save_every=0",
        "train.show_samples_every=1", "train.show_samples=3",
    ])
    trainer = Trainer(config)
    trainer.engine = HostileEngine(trainer.engine, texts)
    before = rss_mb()
    start = time.monotonic()
    try:
        (record,) = trainer.train()
    finally:
        trainer.close()
    elapsed = time.monotonic() - start
    assert not sentinel.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no code ran
    timeouts = record["verifier/math_answer/timeouts"]
    # two workers: a timed-out sample costs at most its bound; the rest of the step is small
    assert elapsed < timeout * (timeouts + 1) + 30, (elapsed, timeouts)
    assert rss_mb() - before < 300
    assert math.isfinite(record["reward/mean"]) and math.isfinite(record["policy/loss"])
