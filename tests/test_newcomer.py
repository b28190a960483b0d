"""The newcomer's path: what a new user meets on a fresh clone, taken literally.

A second run into an existing run directory, resume without a checkpoint, samples after
a resume, missing model paths in `train` and `eval`, the README's commands and
snippets, `eval`'s progress, token limit and field errors, `--version`, `train` with no
arguments, the extras.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from verirl import ConfigError
from verirl.checkpoint import list_checkpoints, load_state
from verirl.cli import main as cli_main
from verirl.config import load_config
from verirl.metrics import read_metrics
from verirl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture
def config(small_config):
    return lambda out, *extra: small_config(out, "train.save_every=2", "train.log_samples=2", *extra)


def samples_steps(out: Path) -> list[int]:
    return [int(m) for m in re.findall(r'"step": (\d+)', (out / "samples.jsonl").read_text())]


# --------------------------------------------------------------------------- run directory


def test_a_second_run_into_a_run_directory_is_refused_unless_resumed_or_overwritten(config, train_run, tmp_path):
    out = tmp_path / "run"
    train_run(config(out, "train.steps=6", "train.seed=1"))
    with pytest.raises(ConfigError, match="holds an earlier run .*train.resume=true.*train.overwrite=true"):
        Trainer(config(out, "train.steps=2", "train.seed=2"))
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5, 6]  # untouched

    # overwrite: the earlier run's checkpoints, metrics and samples are gone, not mixed in
    train_run(config(out, "train.steps=2", "train.seed=2", "train.overwrite=true"))
    assert [m["step"] for m in read_metrics(out)] == [1, 2]
    assert [p.name for p in list_checkpoints(out)] == ["step_000002"]
    assert load_state(list_checkpoints(out)[0])["config"]["train"]["seed"] == 2
    assert samples_steps(out) == [1, 1, 2, 2]
    # and a resume continues the new run, not the old one
    train_run(config(out, "train.steps=4", "train.seed=2", "train.resume=true"))
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]


def test_resume_without_a_checkpoint_says_so(config, train_run, tmp_path):
    with pytest.raises(ConfigError, match="does not exist: there is nothing to resume"):
        Trainer(config(tmp_path / "none", "train.resume=true"))
    assert not (tmp_path / "none").exists()


def test_samples_are_cut_back_on_resume_like_the_metrics(config, train_run, tmp_path):
    out = tmp_path / "run"
    train_run(config(out, "train.steps=3"))
    # as if killed after step 3's metrics and samples were written, before its checkpoint
    shutil.rmtree(out / "checkpoints" / "step_000003")
    train_run(config(out, "train.steps=4", "train.resume=true"))
    assert samples_steps(out) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- model paths


def test_eval_with_a_model_path_that_does_not_exist_says_not_found(tmp_path, capsys):
    code = cli_main(["eval", "--model", "runs/tiny/checkpoints/step_000150", "--data",
                     "builtin:tiny-arith/test.jsonl", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--model 'runs/tiny/checkpoints/step_000150' not found" in err, err
    assert "Repo id" not in err


def test_a_hub_id_that_is_nowhere_says_not_found_and_leaves_no_run_directory(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-m", "verirl.cli", "train", "configs/tiny.yaml",
                           "model.name_or_path=nobody-verirl/no-such-model", f"train.output_dir={out}"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'nobody-verirl/no-such-model' not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- eval


def test_eval_shows_progress_and_caps_new_tokens_at_the_models_positions(tmp_path, capsys):
    from verirl.data import build_prompt, load_problems
    from verirl.models import load_tokenizer

    problems = load_problems("builtin:tiny-arith/test.jsonl")[:3]
    tok = load_tokenizer("builtin:tiny-arith")
    longest = max(len(tok(build_prompt(tok, p.question, None, None), add_special_tokens=False)["input_ids"])
                  for p in problems)
    assert cli_main(["eval", "--model", "builtin:tiny-arith", "--data", "builtin:tiny-arith/test.jsonl",
                     "--limit", "3", "--max-new-tokens", "1000"]) == 0
    captured = capsys.readouterr()
    metrics = yaml.safe_load(captured.out.strip().splitlines()[-1])
    assert metrics["max_new_tokens"] == 256 - longest  # the tiny model has 256 positions
    assert f"--max-new-tokens 1000 capped at {256 - longest}" in captured.err
    assert "verirl eval" in captured.err and "3/3" in captured.err  # the progress bar


def test_eval_names_its_own_option_for_a_missing_question_field(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "1+1?", "answer": "#### 2"}\n')
    assert cli_main(["eval", "--model", "builtin:tiny-arith", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "no question field" in err and "set --question-field" in err and "data.question_field" not in err


def test_eval_names_its_own_option_for_a_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    assert cli_main(["eval", "--model", "builtin:tiny-arith", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"--data: file not found: {missing}" in err and "give a JSONL path" in err


# --------------------------------------------------------------------------- the command line


def test_version_and_train_without_arguments(capsys):
    assert cli_main(["--version"]) == 0
    from verirl import __version__

    assert capsys.readouterr().out.strip() == f"verirl {__version__}"
    assert cli_main(["train"]) == 2
    err = capsys.readouterr().err
    assert "needs a config file, e.g. `verirl train configs/tiny.yaml`" in err and "required" not in err
    assert cli_main(["train", "train.steps=5"]) == 2
    assert "the first argument is the config file" in capsys.readouterr().err


# --------------------------------------------------------------------------- the README, taken literally


def readme_commands(prefix: str) -> list[list[str]]:
    block = README.split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith(prefix)]


def test_every_readme_train_command_is_a_valid_config_and_one_overrides_rewards():
    commands = readme_commands("verirl train")
    assert len(commands) >= 4
    rewards = []
    for cmd in commands:
        cfg = load_config(ROOT / cmd[2], cmd[3:])
        rewards.append([t["verifier"] for t in cfg.rewards])
    assert ["math_answer", "format"] in rewards


def test_the_readme_eval_command_points_at_a_checkpoint_the_main_job_keeps():
    (cmd,) = readme_commands("verirl eval")
    model = cmd[cmd.index("--model") + 1]
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    t = cfg.train
    assert model.startswith(t.output_dir + "/checkpoints/")
    saved = sorted({s for s in range(1, t.steps + 1) if s % t.save_every == 0} | {t.steps})
    kept = saved[-t.keep_checkpoints:]
    assert int(model.rsplit("_", 1)[1]) in kept, (model, kept)


def test_the_readme_plugin_snippet_builds_a_package_verirl_finds(tmp_path):
    python = README.split("## Write a verifier in 15 lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    toml = README.split("## Write a verifier in 15 lines", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    source = tmp_path / "src"
    source.mkdir()
    (source / "my_verifiers.py").write_text(python)
    (source / "pyproject.toml").write_text(toml)
    assert tomllib.loads(toml)["project"]["name"]
    target = tmp_path / "site"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available in this environment")
    assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("VERIRL_LOAD_PLUGINS", "VERIRL_TRACE_PLUGINS")}
    env["PYTHONPATH"] = str(target)
    listing = subprocess.run([sys.executable, "-m", "verirl.cli", "verifiers"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "ends_with_period  [outcome]  plugin: my_verifiers" in listing.stdout
    assert "bonus" in listing.stdout


def test_the_extras_hold_what_the_readme_installs_them_for():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[]", d)[0] for d in v} for k, v in extras.items()}
    assert {"tensorboard", "wandb"} <= names["logging"] and "matplotlib" in names["plot"]
    assert {"tensorboard", "wandb", "matplotlib"} <= names["dev"]  # so the suite tests them for real
    assert '".[logging]"' in README and "train.report_to=[tensorboard,wandb]" in README
    assert '".[plot]"' in README


def test_the_guarantees_section_names_tests_that_exist():
    section = README.split("## What verirl guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) == 5
    for file, name in named:
        assert re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M), (file, name)


def test_the_speed_figures_say_they_are_one_machines_and_lead_with_ratios():
    measured = " ".join(README.split("## Measured", 1)[1].split("\n## ", 1)[0].split())
    assert "one quiet 2-core machine" in measured and "2.5× slower" in measured
    assert "ratios, each measured side by side" in measured
