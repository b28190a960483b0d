"""The config reference is generated from the config classes and kept in step with them:
`verirl config --defaults`, and the README's table of every key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from verirl.cli import main as cli_main
from verirl.config import Config, load_config
from verirl.config_reference import field_docs, keys, markdown_table, readme_section, yaml_value

ROOT = Path(__file__).resolve().parents[1]


def all_fields(cls=Config, prefix=""):
    for f in dataclasses.fields(cls):
        tp = type(getattr(cls(), f.name))
        if dataclasses.is_dataclass(tp):
            yield prefix + f.name, True
            yield from all_fields(tp, prefix + f.name + ".")
        else:
            yield prefix + f.name, False


def test_every_config_field_has_a_one_line_meaning():
    listed = [(k.name, k.section) for k in keys()]
    assert listed == list(all_fields())
    for key in keys():
        assert key.doc and "\n" not in key.doc, key.name
    assert field_docs()[("TrainConfig", "overwrite")].startswith("start afresh")


def test_defaults_print_as_yaml_that_loads_back_to_the_defaults(capsys):
    assert cli_main(["config", "--defaults"]) == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == Config().to_dict()
    lines = text.splitlines()
    assert "  lr: 1.0e-06  # AdamW learning rate" in lines
    assert "train:  # the run: steps, output, eval, checkpoints, logging" in lines
    value_lines = [line for line in lines if not line.rstrip().endswith(":") and "  # " in line]
    assert len(value_lines) == len(lines)  # every line carries its meaning


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("ablation_")))  # ablation_*: verirl ablate configs
def test_a_resolved_config_prints_and_loads_back(config, capsys, tmp_path):
    assert cli_main(["config", f"configs/{config}", "train.steps=7"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    want = load_config(ROOT / "configs" / config, ["train.steps=7"])
    assert load_config(printed) == want  # the printed YAML is the same config, complete on its own


def test_yaml_values_round_trip():
    for value in [None, True, 0, 1e-6, 3e-4, 1.0e7, 0.5, "builtin:tiny-arith", "Q: {question}\nA:", "",
                  [0.9, 0.999], [{"verifier": "math_answer", "weight": 1.0}], "null", "1e-3"]:
        assert yaml.safe_load(yaml_value(value)) == value, value


def test_the_readme_reference_is_what_the_config_classes_generate():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme) == markdown_table(), (
        "the README's config reference is out of date: run `python -m verirl.config_reference README.md`"
    )
    table = markdown_table()
    for key in keys():
        assert f"`{key.name}`" in table


def test_the_regeneration_command_rewrites_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    from verirl.config_reference import BEGIN, END

    readme.write_text(f"# intro\n\n{BEGIN}\nstale\n{END}\n\n## after\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "verirl.config_reference", str(readme)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# intro\n\n") and text.endswith(f"{END}\n\n## after\n")
    assert readme_section(text) == markdown_table() and "stale" not in text
