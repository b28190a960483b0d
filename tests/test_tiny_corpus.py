"""The tiny model's SFT corpus: the deliberate 'stop after the first step' habit."""

from __future__ import annotations

import pytest

from verirl.tiny import tasks


def test_stop_after_first_step_reports_the_intermediate_result():
    train, _ = tasks.make_splits(200, 10, seed=3)
    two_step = next(p for p in train if p["answer"].count("\n") == 2)
    cut = tasks.stop_after_first_step(two_step)
    first_line = two_step["answer"].split("\n")[0]
    assert cut["question"] == two_step["question"]
    assert cut["answer"].split("\n")[0] == first_line
    assert tasks.check_answer(cut["answer"]) != tasks.check_answer(two_step["answer"])  # a wrong final answer
    one_step = next(p for p in train if p["answer"].count("\n") == 1)
    assert tasks.stop_after_first_step(one_step) == one_step


def test_sft_corpus_cuts_the_configured_share_and_keeps_the_gold_intact():
    train, _ = tasks.make_splits(2000, 10, seed=0)
    snapshot = [dict(p) for p in train]
    corpus = tasks.sft_corpus(train, 0.6, seed=0)
    assert train == snapshot  # the RL train set (gold answers) is not modified
    two_step = [i for i, p in enumerate(train) if p["answer"].count("\n") == 2]
    cut = [i for i in two_step if corpus[i] != train[i]]
    assert 0.55 < len(cut) / len(two_step) < 0.65
    assert all(corpus[i] == train[i] for i in range(len(train)) if i not in set(two_step))
    assert tasks.sft_corpus(train, 0.6, seed=0) == corpus  # deterministic
    assert tasks.sft_corpus(train, 0.0, seed=0) == train
    with pytest.raises(ValueError, match="premature_frac"):
        tasks.sft_corpus(train, 1.5)
