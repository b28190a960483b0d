"""The tiny process reward model: its labelled data (inject_mistake), its metrics, its
build, and the shipped model read through the real ``prm`` verifier."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from verirl import Sample
from verirl.grading.steps import split_steps
from verirl.tiny import steps as steps_task
from verirl.tiny.build import format_completion, format_prompt
from verirl.tiny.prm import auroc, build_prm, encode_labelled, labelled_solutions, step_metrics, PRMBuildConfig
from verirl.tiny import tiny_model_path

PRM_DIR = tiny_model_path().parent / "tiny-steps-prm"
POLICY_DIR = tiny_model_path().parent / "tiny-steps"


def _claims(answer: str) -> list[tuple[int, str, int, int, int]]:
    out = []
    for line in answer.split("\n")[:-1]:
        m = steps_task._LINE.search(line)
        out.append((int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])))
    return out


def _value(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("kind", steps_task.MISTAKE_KINDS)
def test_inject_mistake_propagates_and_labels_by_prefix(kind):
    rng = random.Random(1)
    for problem in steps_task.generate(200, seed=3):
        wrong, labels = steps_task.inject_mistake(problem, rng, kind)
        gold_claims, claims = _claims(problem["answer"]), _claims(wrong["answer"])
        assert len(claims) == len(gold_claims) and len(labels) == len(claims) + 1
        i = labels.index(False)  # the first wrong step
        assert all(labels[:i]) and not any(labels[i:])
        assert claims[:i] == gold_claims[:i]
        for j, (a, op, b, c, shown) in enumerate(claims):
            assert c == shown and min(a, b, c) >= 0
            # a result slip breaks its own line only; every other line's arithmetic holds
            assert (c == _value(a, op, b)) == (not (kind == "result" and j == i))
        if kind == "operand":
            assert claims[i][2] != gold_claims[i][2]  # the misread operand
        final = int(wrong["answer"].split("\n")[-1].removeprefix("#### "))
        assert final == claims[-1][3] != int(problem["answer"].split("\n")[-1].removeprefix("#### "))


def test_inject_mistake_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of result, operand"):
        steps_task.inject_mistake(steps_task.generate(1)[0], random.Random(0), "sign")


def test_auroc_matches_the_pairwise_definition():
    rng = random.Random(0)
    for _ in range(20):
        wrong = [rng.choice([0.1, 0.2, 0.5, rng.random()]) for _ in range(rng.randint(1, 9))]
        right = [rng.choice([0.2, 0.5, 0.9, rng.random()]) for _ in range(rng.randint(1, 9))]
        pairs = [(1.0 if w < r else 0.5 if w == r else 0.0) for w, r in itertools.product(wrong, right)]
        assert auroc(wrong, right) == pytest.approx(sum(pairs) / len(pairs))


def test_step_metrics_on_hand_made_solutions():
    probs = [[0.9, 0.8, 0.7], [0.9, 0.2, 0.1], [0.9, 0.9, 0.3], [0.4, 0.9, 0.9]]
    labels = [[True, True, True], [True, False, False], [True, False, False], [True, True, True]]
    m = step_metrics(probs, labels)
    # step verdicts: 3 + 3 + 2 + 2 of 12 right; first errors: none=none, 1=1, 2!=1, 0!=none
    assert m["step_accuracy"] == pytest.approx(10 / 12)
    assert m["first_error_accuracy"] == pytest.approx(2 / 4)
    assert m["clean_false_flag_rate"] == pytest.approx(1 / 2)
    assert m["steps"] == 12 and m["solutions"] == 4


def test_labels_sit_on_the_tokens_the_prm_verifier_reads():
    """The builder's training positions are the verifier's read positions, step for step."""
    from verirl.verifiers.prm import ProcessRewardModel

    prm = ProcessRewardModel(model=str(PRM_DIR), style="token_classification", step_tag="",
                             prompt_separator="", split="lines", device="cpu")
    for problem, labels in labelled_solutions(steps_task.generate(12, seed=5), seed=0):
        ids, token_labels = encode_labelled(prm.tokenizer, problem, labels)
        sample = Sample(prompt=format_prompt(problem["question"]),
                        completion=format_completion(problem["answer"]), answer="")
        v_ids, spans, positions = prm.encode(sample)
        assert v_ids == ids
        assert [i for i, y in enumerate(token_labels) if y != -100] == positions
        assert [token_labels[p] for p in positions] == [int(x) for x in labels]
        # each read token holds the step's last character
        assert len(spans) == len(split_steps(sample.completion)) == len(labels)


def test_shipped_prm_through_the_verifier_tells_right_from_wrong_steps():
    """Loaded by name through the plugin registry like any hub PRM; on held-out test
    problems it ranks wrong steps below right ones (AUROC well above chance)."""
    from verirl.plugins import get_verifier

    prm = get_verifier("prm").build(model="builtin:tiny-steps-prm", style="token_classification",
                                    step_tag="", prompt_separator="", device="cpu")
    test = [json.loads(line) for line in (POLICY_DIR / "test.jsonl").read_text().splitlines()[:40]]
    solutions = labelled_solutions(test, seed=11)
    samples = [Sample(prompt=format_prompt(p["question"]), completion=format_completion(p["answer"]), answer="")
               for p, _ in solutions]
    steps = prm(samples)
    probs = [[s.reward for s in st] for st in steps]
    assert all(len(p) == len(ls) for p, (_, ls) in zip(probs, solutions))
    assert all(0.0 <= x <= 1.0 for p in probs for x in p)
    metrics = step_metrics(probs, [ls for _, ls in solutions])
    assert metrics["auroc"] > 0.7, metrics  # chance is 0.5; the build measured 0.79 on 300 problems
    recorded = json.loads((PRM_DIR / "build.json").read_text())["held_out"]
    assert recorded["auroc"] > 0.7 and recorded["solutions"] == 3 * 300


def test_build_prm_writes_a_loadable_model(tmp_path):
    summary = build_prm(tmp_path / "prm", PRMBuildConfig(steps=3, batch_size=4, n_eval=4, log_every=1),
                        log=lambda _: None)
    assert (tmp_path / "prm" / "model.safetensors").is_file()
    assert set(summary["held_out"]) >= {"step_accuracy", "auroc", "first_error_accuracy", "clean_false_flag_rate"}
    assert summary["held_out"]["solutions"] == 12
    assert json.loads((tmp_path / "prm" / "config.json").read_text())["architectures"] == ["LlamaForTokenClassification"]


def test_build_prm_names_a_missing_policy(tmp_path):
    with pytest.raises(ValueError, match="has no train.jsonl: build tiny-steps first"):
        build_prm(tmp_path / "prm", PRMBuildConfig(policy=str(tmp_path / "nowhere"), steps=1))


def test_dense_labels_flip_on_the_token_where_the_mistake_is_written():
    """With the gold solution given, every completion token is labelled: 1 while the text
    up to its end is a prefix of the gold completion, 0 from the token that leaves it;
    the line-end tokens keep their step labels; the prompt stays -100."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(POLICY_DIR)
    rng = random.Random(4)
    for gold in steps_task.generate(20, seed=9):
        for kind in steps_task.MISTAKE_KINDS:
            wrong, labels = steps_task.inject_mistake(gold, rng, kind)
            ids, dense = encode_labelled(tokenizer, wrong, labels, gold)
            _, sparse = encode_labelled(tokenizer, wrong, labels)
            prompt = format_prompt(wrong["question"])
            text = prompt + format_completion(wrong["answer"])
            reference = prompt + format_completion(gold["answer"])
            offsets = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
            for t, ((s, e), y) in enumerate(zip(offsets, dense)):
                if sparse[t] != -100:
                    assert y == sparse[t]  # a step label wins
                elif e <= len(prompt) or e == s:
                    assert y == -100
                else:
                    assert y == int(reference.startswith(text[:e])), (t, text[s:e])
            assert 0 in dense and 1 in dense
