"""verirl.tiny.steps: the multi-step generator is deterministic, its solutions hold and
parse with the project's own answer extraction and the ``arith_steps`` verifier, and an
injected error is flagged by ``arith_steps`` on exactly the labelled line."""

from __future__ import annotations

import random

from verirl.grading.extract import extract_answer
from verirl.tiny.steps import MAX_CALCS, MAX_VALUE, MIN_CALCS, generate, inject_error, make_splits
from verirl.tiny.tasks import check_answer, gold_number
from verirl.verifiers.arith_steps import step_verdicts


def test_generate_is_deterministic_in_the_seed() -> None:
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)
    train, test = make_splits(200, 50, seed=1)
    assert not {p["question"] for p in train} & {p["question"] for p in test}


def test_solutions_hold_and_have_three_to_five_calculations() -> None:
    counts = set()
    for p in generate(300, seed=0):
        final = check_answer(p["answer"])  # raises on any wrong step or final mismatch
        assert 0 <= final <= MAX_VALUE and gold_number(p["answer"]) == str(final)
        assert extract_answer(p["answer"]) == str(final)
        n = p["answer"].count("<<")
        assert MIN_CALCS <= n <= MAX_CALCS and n == p["answer"].count("\n")
        counts.add(n)
    assert counts == set(range(MIN_CALCS, MAX_CALCS + 1))


def test_arith_steps_finds_every_line_correct_and_the_injected_error() -> None:
    rng = random.Random(0)
    for p in generate(40, seed=2):
        verdicts = [v for _, _, v in step_verdicts(p["answer"])]
        assert verdicts[:-1] == ["correct"] * p["answer"].count("<<") and verdicts[-1] == "neutral"
        bad, labels = inject_error(p, rng)
        with_error = [v for _, _, v in step_verdicts(bad["answer"])][:-1]
        assert with_error == ["correct" if ok else "wrong" for ok in labels]
        assert labels.count(False) == 1


def test_shipped_tiny_steps_asset_loads_by_name_and_its_data_rebuild() -> None:
    import json

    from verirl.data import resolve_path
    from verirl.tiny.tasks import read_jsonl

    folder = resolve_path("builtin:tiny-steps")
    cfg = json.loads(open(f"{folder}/build.json").read())["config"]
    assert cfg["task"] == "steps"
    train, test = read_jsonl(f"{folder}/train.jsonl"), read_jsonl(f"{folder}/test.jsonl")
    assert (train, test) == make_splits(cfg["n_train"], cfg["n_test"], cfg["seed"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": test[0]["question"]}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == f"Question: {test[0]['question']}\nAnswer:"


def test_shipped_ablation_configs_load_and_every_arm_validates() -> None:
    from pathlib import Path

    from verirl.ablate import load_ablation

    configs = Path(__file__).resolve().parent.parent / "configs"
    tiny = load_ablation(configs / "ablation_tiny.yaml")
    assert set(tiny.arms) == {f"{reward}_{algo}" for reward in ("outcome", "rule_process", "prm_process")
                              for algo in ("grpo", "ppo")}
    assert tiny.seeds == [0, 1, 2]
    gsm8k = load_ablation(configs / "ablation_gsm8k.yaml")
    assert gsm8k.arms["prm_process_ppo"]["algo"]["name"] == "ppo"
