"""The embedded tiny model: shipped files, tokenizer, task generator, and a real build.

Everything here runs the real thing: the shipped safetensors and tokenizer, the real
`tokenizers` BPE trainer, a real (very short) SFT run into a temporary folder.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.tiny import tiny_model_path
from verirl.tiny import tasks
from verirl.tiny.__main__ import main as tiny_main
from verirl.tiny.build import (
    BuildConfig,
    build,
    build_tokenizer,
    encode_example,
    format_completion,
    format_prompt,
    lr_at,
)
from verirl.tiny.evaluate import complete, evaluate, final_number

ASSETS = tiny_model_path()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    m = AutoModelForCausalLM.from_pretrained(ASSETS)
    m.eval()
    return m


# ---- shipped files ------------------------------------------------------------------

def test_shipped_folder_is_complete_and_small():
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "train.jsonl", "test.jsonl",
                 "README.md", "build.json"):
        assert (ASSETS / name).is_file(), f"missing {name} in {ASSETS}"
    assert (ASSETS / "model.safetensors").stat().st_size < 4.5e6


def test_shipped_tokenizer_config_names_a_portable_class():
    # transformers 4.x cannot resolve 5.x's "TokenizersBackend"
    config = json.loads((ASSETS / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    # 4.x would otherwise add token_type_ids, which generate(**encoded) refuses
    assert config["model_input_names"] == ["input_ids", "attention_mask"]
    assert set(AutoTokenizer.from_pretrained(ASSETS)("Question: 1")) == {"input_ids", "attention_mask"}


def test_shipped_config_knows_its_special_tokens(model, tokenizer):
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)


def test_shipped_model_answers_in_gsm8k_format(model, tokenizer):
    problems = tasks.read_jsonl(ASSETS / "test.jsonl")[:6]
    out = complete(model, tokenizer, [p["question"] for p in problems], max_new_tokens=64)
    for (text, ended), p in zip((c[0] for c in out), problems):
        assert ended, f"no EOS within 64 tokens: {text!r}"
        assert re.search(r"<<\d+[-+*]\d+=\d+>>", text), text
        assert final_number(text) is not None, f"does not end with '#### N': {text!r}"


def test_shipped_model_is_partly_right(model, tokenizer):
    """Neither untrained nor solved: the starting point RL needs (README has the full numbers)."""
    problems = tasks.read_jsonl(ASSETS / "test.jsonl")[:40]
    acc = evaluate(model, tokenizer, problems, k=4)
    assert acc.format_greedy >= 0.95
    assert 0.05 <= acc.greedy <= 0.8
    assert acc.pass_at_k >= acc.greedy


def test_shipped_data_is_correct_disjoint_and_reproducible():
    train = tasks.read_jsonl(ASSETS / "train.jsonl")
    test = tasks.read_jsonl(ASSETS / "test.jsonl")
    assert len(train) >= 2000 and 200 <= len(test) <= 500
    for row in train + test:
        assert set(row) == {"question", "answer"}
        assert tasks.check_answer(row["answer"]) == int(tasks.gold_number(row["answer"])) >= 0
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    cfg = json.loads((ASSETS / "build.json").read_text())["config"]
    again_train, again_test = tasks.make_splits(cfg["n_train"], cfg["n_test"], cfg["seed"],
                                                two_step_frac=cfg["two_step_frac"],
                                                difficulty=tasks.Difficulty(add=tuple(cfg["add_range"]),
                                                                            small=tuple(cfg["small_range"]),
                                                                            factor=tuple(cfg["factor_range"])))
    assert (again_train, again_test) == (train, test)


# ---- tokenizer ----------------------------------------------------------------------

def test_chat_template_renders_the_training_prompt(tokenizer):
    q = "Tom has 12 apples. He buys 7 more. How many apples does Tom have now?"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == format_prompt(q) == f"Question: {q}\nAnswer:"
    a = "Tom has <<12+7=19>>19 apples now.\n#### 19"
    full = tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                         tokenize=False)
    assert full == prompt + format_completion(a) + tokenizer.eos_token


def test_chat_template_rejects_unknown_role(tokenizer):
    with pytest.raises(Exception, match="roles are system, user and assistant; got tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_digits_are_one_token_each_and_round_trip(tokenizer):
    ids = tokenizer.encode("12345", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == list("12345")
    for text in ("Mia has <<48+24=72>>72 apples.\n#### 72", " 0 -3 1000000", "Question: a\nAnswer: b"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_text_outside_the_vocabulary_tokenizes_and_round_trips(tokenizer):
    text = "数学 ∑ 😀 \t ñ façade \x00 ~~~"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids and all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text  # byte-level: nothing is lost, nothing maps to <unk>
    assert tokenizer.unk_token == "<unk>"


def test_encode_example_puts_loss_on_the_completion_only(tokenizer):
    row = {"question": "Sam has 10 pens. He buys 5 more. How many pens does Sam have now?",
           "answer": "Sam has <<10+5=15>>15 pens now.\n#### 15"}
    ids, labels = encode_example(tokenizer, row)
    n_prompt = len(tokenizer.encode(format_prompt(row["question"]), add_special_tokens=False))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n_prompt:-1]) == format_completion(row["answer"])


# ---- task generator -----------------------------------------------------------------

def test_generator_is_deterministic_and_seeded():
    assert tasks.generate(60, seed=3) == tasks.generate(60, seed=3)
    assert tasks.generate(60, seed=3) != tasks.generate(60, seed=4)
    problems = tasks.generate(200, seed=5)
    assert len({p["question"] for p in problems}) == 200


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), two_step_frac=st.floats(0, 1))
def test_every_generated_answer_is_arithmetically_right(seed, two_step_frac):
    for p in tasks.generate(40, seed, two_step_frac=two_step_frac):
        n = tasks.check_answer(p["answer"])
        assert n >= 0 and p["answer"].endswith(f"#### {n}")
        steps = len(re.findall("<<", p["answer"]))
        assert steps in (1, 2)


def test_generator_mixes_one_and_two_step_problems():
    steps = [len(re.findall("<<", p["answer"])) for p in tasks.generate(400, seed=0)]
    assert 0.35 < steps.count(2) / len(steps) < 0.65
    assert all(len(re.findall("<<", p["answer"])) == 1 for p in tasks.generate(30, 1, two_step_frac=0.0))


@pytest.mark.parametrize("answer, error", [
    ("Tom has <<12+7=18>>18 apples.\n#### 18", "wrong step '<<12+7=18>>18': 12+7 is 19"),
    ("Tom has <<12+7=19>>18 apples.\n#### 19", "wrong step"),
    ("Tom has <<12+7=19>>19 apples.\n#### 20", "final answer 20 is not the last result 19"),
    ("Tom has <<12+7=19>>19 apples.", "last line must be '#### N'"),
    ("Tom has 19 apples.\n#### 19", "no <<a op b=c>> annotation"),
])
def test_check_answer_catches_wrong_solutions(answer, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        tasks.check_answer(answer)


def test_bad_generator_arguments_name_the_problem():
    with pytest.raises(ValueError, match="two_step_frac must be in"):
        tasks.generate(3, two_step_frac=1.5)
    with pytest.raises(ValueError, match=re.escape("Difficulty.add must be (lo, hi) with 1 <= lo <= hi, got (50, 10)")):
        tasks.Difficulty(add=(50, 10))
    with pytest.raises(ValueError, match="Difficulty.small must be"):
        tasks.Difficulty(small=(1, 9))
    with pytest.raises(ValueError, match="n must be >= 0"):
        tasks.generate(-1)


def test_generator_gives_up_when_nothing_new_comes():
    one = {"question": "q", "answer": "a"}
    with pytest.raises(ValueError, match="could not draw 2 distinct problems: 5 duplicates in a row after 1"):
        list(tasks._unique(itertools.repeat(one), 2, patience=5))
    narrow = tasks.Difficulty(add=(10, 10), small=(2, 2), factor=(3, 3))
    problems = tasks.generate(50, 0, difficulty=narrow)
    # Narrow ranges mean small answers: at most (15 + 15) * 2 from the two-colours template.
    assert max(tasks.check_answer(p["answer"]) for p in problems) <= 60


@pytest.mark.parametrize("text, expected", [
    (" Tom has <<1+2=3>>3.\n#### 3", "3"), ("#### 007", "7"), ("#### -4 \n", "-4"),
    ("#### 12 apples", None), ("no answer", None), ("#### 1\nmore text", None),
])
def test_final_number(text, expected):
    assert final_number(text) == expected


# ---- the build ----------------------------------------------------------------------

def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = BuildConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def _small_cfg(**kw) -> BuildConfig:
    base = dict(n_train=96, n_test=8, steps=4, batch_size=8, hidden_size=32, intermediate_size=64,
                num_layers=1, num_heads=2, warmup_steps=2, threads=1, vocab_size=400)
    base.update(kw)
    return BuildConfig(**base)


def test_a_short_build_makes_a_loadable_reproducible_model(tmp_path):
    logs: list[str] = []
    summary = build(tmp_path / "a", _small_cfg(log_every=2), log=logs.append)
    build(tmp_path / "b", _small_cfg(), log=lambda _: None)
    assert summary["parameters"] > 0 and summary["final_loss"] > 0
    assert any(line.startswith("step 4/4") for line in logs)
    for name in ("model.safetensors", "tokenizer.json", "train.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Sam has 3 pens."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 5 or out[0, -1] == tokenizer.eos_token_id


def test_sft_lowers_the_loss(tmp_path):
    first = build(tmp_path / "x", _small_cfg(steps=1), log=lambda _: None)["final_loss"]
    later = build(tmp_path / "y", _small_cfg(steps=30, lr=3e-3), log=lambda _: None)["final_loss"]
    assert later < first - 1.0, (first, later)


def test_tokenizer_training_is_deterministic():
    texts = [format_prompt(p["question"]) + format_completion(p["answer"]) for p in tasks.generate(200, 0)]
    a, b = build_tokenizer(texts, 400), build_tokenizer(texts, 400)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_cli_rejects_bad_steps(capsys, tmp_path):
    assert tiny_main(["build", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "steps must be >= 1, got 0" in capsys.readouterr().err


def test_cli_eval_names_missing_data(capsys, tmp_path):
    assert tiny_main(["eval", str(ASSETS), "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "no evaluation data at" in capsys.readouterr().err
