"""The trainer end to end on a tiny real model: learning signal, metrics, resume, options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from verirl.config import load_config
from verirl.metrics import read_metrics
from verirl.trainer import Trainer, step_token_indices

REQUIRED = [
    "reward/mean", "reward/std", "policy/kl", "policy/clip_frac", "policy/entropy", "policy/ratio_max",
    "rollout/len_mean", "rollout/zero_std_frac", "perf/rollout_tok_s", "perf/train_tok_s", "perf/step_s",
    "mem/peak_rss_mb",
]


@pytest.fixture(autouse=True)
def plugin(toy_verifiers):
    yield


def make_config(char_model, problems_file, out, *extra):
    return load_config(None, [
        f"model.name_or_path={char_model}", f"data.train={problems_file}", "data.eval=null",
        "data.prompt_template='Q: {question}\nA:'",
        "rewards=[{verifier: starts_with_digit}]", f"train.output_dir={out}", "train.progress=false",
        "rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=6",
        "optim.lr=1e-2", "algo.beta=0", "train.save_every=0", "train.seed=1", *extra,
    ])


def run(config):
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()


def test_grpo_learns_a_simple_reward(char_model, problems_file, tmp_path):
    records = run(make_config(char_model, problems_file, tmp_path / "run", "train.steps=20"))
    rewards = [r["reward/mean"] for r in records]
    # a random 97-character model starts near 10/97; the policy gradient must push it up
    assert sum(rewards[:4]) / 4 < 0.3
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.25, rewards


def test_run_directory_and_metrics(char_model, problems_file, tmp_path):
    out = tmp_path / "run"
    run(make_config(char_model, problems_file, out, "train.steps=2", "train.save_every=1", "train.log_samples=3"))
    assert (out / "config.yaml").exists()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2]
    for key in REQUIRED:
        assert key in metrics[0] and math.isfinite(metrics[0][key]), key
    assert metrics[0]["policy/ratio_max"] == pytest.approx(1.0)  # μ = 1: ρ = 1 exactly
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {"prompt", "completion", "reward", "scores"} <= set(samples[0])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]


def test_resume_matches_an_uninterrupted_run(char_model, problems_file, tmp_path):
    extra = ("train.steps=4", "train.save_every=2", "algo.ppo_epochs=2", "algo.minibatch_size=16")
    run(make_config(char_model, problems_file, tmp_path / "full", *extra))
    run(make_config(char_model, problems_file, tmp_path / "part", *extra[1:], "train.steps=2"))
    run(make_config(char_model, problems_file, tmp_path / "part", *extra, "train.resume=true"))
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [m["step"] for m in part] == [1, 2, 3, 4]
    for a, b in zip(full, part):
        for key in a:
            if not key.startswith(("perf/", "mem/")):
                assert a[key] == b[key], (a["step"], key)


def test_multiple_epochs_move_the_ratio(char_model, problems_file, tmp_path):
    [record] = run(make_config(char_model, problems_file, tmp_path / "r", "train.steps=1", "algo.ppo_epochs=3",
                               "algo.minibatch_size=8", "algo.micro_batch_size=4"))
    assert record["policy/ratio_max"] > 1.0
    assert 0.0 <= record["policy/clip_frac"] <= 1.0


def test_reference_model_and_kl(char_model, problems_file, tmp_path):
    records = run(make_config(char_model, problems_file, tmp_path / "r", "train.steps=3", "algo.beta=0.1",
                              "algo.kl_estimator=k3", "algo.ref_reset_every=2", "train.save_every=3"))
    assert records[0]["policy/kl"] == pytest.approx(0.0, abs=1e-7)  # π_θ = π_ref before any update
    assert records[1]["policy/kl"] > 0
    assert (tmp_path / "r" / "checkpoints" / "step_000003" / "ref" / "model.safetensors").exists()


def test_process_rewards(char_model, problems_file, tmp_path):
    records = run(make_config(char_model, problems_file, tmp_path / "r", "train.steps=2", "algo.reward_mode=process",
                              "rewards=[{verifier: halves}]", "rollout.max_new_tokens=8"))
    assert all(math.isfinite(r["policy/loss"]) for r in records)


def test_dynamic_sampling_resamples_all_equal_groups(char_model, problems_file, tmp_path):
    # a reward that is constant within most groups: only digits count, completions rarely start with one
    [record] = run(make_config(char_model, problems_file, tmp_path / "r", "train.steps=1", "algo.drop_zero_std=true",
                               "algo.max_resample_rounds=2"))
    assert record["rollout/zero_std_frac"] > 0
    assert record["rollout/resample_rounds"] >= 1


def test_step_token_indices_with_a_char_tokenizer(char_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(char_model)
    ids = tok("12+3=15 ok", add_special_tokens=False)["input_ids"]
    assert step_token_indices(tok, ids, [1, 5, 10]) == [0, 4, 9]


def test_bad_verifier_fails_before_the_model_loads(problems_file, tmp_path):
    from verirl import ConfigError

    model = tmp_path / "model"  # looks like a model directory; loading it would fail
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = load_config(None, [f"model.name_or_path={model}", f"data.train={problems_file}",
                                "data.eval=null", "rewards=[{verifier: nope}]", f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="unknown verifier 'nope'"):
        Trainer(config)


def test_eval_verifier_params_choose_the_grading_preset(char_model, problems_file, tmp_path):
    from verirl.verifier import Sample

    moved = [Sample("q", "#### 7", "7.0001")]  # within math_answer's eval tolerance, not exact
    for i, (params, reward) in enumerate((("{}", 0.0), ("{preset: eval}", 1.0))):
        config = make_config(char_model, problems_file, tmp_path / f"run{i}", f"data.eval={problems_file}",
                             f"train.eval_verifier_params={params}")
        trainer = Trainer(config)
        try:
            assert trainer.eval_reward_fn(moved).rewards == [reward]
        finally:
            trainer.close()


def test_bad_eval_verifier_params_fail_before_the_model_loads(problems_file, tmp_path):
    from verirl import ConfigError

    model = tmp_path / "model"  # looks like a model directory; loading it would fail
    model.mkdir()
    (model / "config.json").write_text("{}")
    config = load_config(None, [f"model.name_or_path={model}", f"data.train={problems_file}",
                                f"data.eval={problems_file}", "rewards=[{verifier: starts_with_digit}]",
                                "train.eval_verifier_params={presett: eval}", f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"train.eval_verifier / eval_verifier_params: .*no param 'presett'"):
        Trainer(config)
    assert not (tmp_path / "run").exists()


def test_skipping_zero_advantage_completions_keeps_the_update(char_model, problems_file, tmp_path):
    """All-equal groups carry no gradient: leaving them out must give the same weights."""
    params = {}
    for skip in (True, False):
        trainer = Trainer(make_config(char_model, problems_file, tmp_path / str(skip), "train.steps=1",
                                      f"algo.skip_zero_advantage={str(skip).lower()}", "algo.micro_batch_size=8"))
        try:
            record = trainer.train_step()
            params[skip] = [p.detach().clone() for p in trainer.model.parameters()]
        finally:
            trainer.close()
        assert 0 < record["rollout/zero_std_frac"] < 1  # some groups skipped, some kept
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shared_prompt_forward_keeps_the_update(char_model, problems_file, tmp_path):
    """One forward per distinct prompt in the update gives the same step as one per row."""
    params = {}
    for share in (True, False):
        trainer = Trainer(make_config(char_model, problems_file, tmp_path / str(share), "train.steps=1",
                                      f"model.share_prompt_forward={str(share).lower()}", "algo.ppo_epochs=2",
                                      "algo.minibatch_size=16"))
        try:
            trainer.train_step()
            params[share] = [p.detach().clone() for p in trainer.model.parameters()]
        finally:
            trainer.close()
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_update_stats_average_each_key_and_take_the_max_ratio():
    from verirl.metrics import UpdateStats

    acc = UpdateStats()
    # minibatch 1: two micro-batches whose losses (parts of one minibatch loss) add up
    acc.add({"loss": torch.tensor(1.0), "clip_frac": 0.5, "ratio_max": 1.3})
    acc.add({"loss": torch.tensor(3.0), "clip_frac": 0.0, "ratio_max": 1.1})
    acc.end_minibatch()
    # minibatch 2: one micro-batch
    acc.add({"loss": torch.tensor(2.0), "clip_frac": 0.25, "ratio_max": 1.0})
    acc.end_minibatch()
    assert acc.means() == {"loss": 3.0, "clip_frac": 0.25, "ratio_max": pytest.approx(1.3)}
    assert UpdateStats().means() == {"ratio_max": 0.0}


def test_step_token_indices_with_the_tiny_bpe_tokenizer():
    """Character ends → the token holding the step's last character, hand-computed on the
    shipped byte-level BPE tokenizer, with ends inside multi-character tokens."""
    from verirl.models import load_tokenizer

    tok = load_tokenizer("builtin:tiny-arith")
    text = "He has 3+4=7 apples. 7*2=14\n#### 14"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[2] == " has" and pieces[9] == " apples" and pieces[19] == "####"  # the layout assumed below
    # end 1: 'H' (token 0); 6: end of " has" (2); 4: inside " has" (2); 12: '7' (8);
    # 13 and 15: inside " apples" (9); 30: inside "####" (19); 35: the last '4' (22)
    ends = [1, 6, 4, 12, 13, 15, 30, 35]
    assert step_token_indices(tok, ids, ends) == [0, 2, 2, 8, 9, 9, 19, 22]


@pytest.mark.parametrize("outcome_step", ["always", "fallback"])
def test_mixed_rewards_put_the_outcome_on_the_last_token(outcome_step):
    """arith_steps per line plus math_answer: each arithmetic step on its own last token,
    the final-answer step (math_answer's weighted score) on the completion's last token."""
    from verirl import Sample
    from verirl.models import load_tokenizer
    from verirl.rewards import RewardFunction, parse_rewards

    tok = load_tokenizer("builtin:tiny-arith")
    texts = ["He has 3+4=7 apples. 7*2=14\n#### 14", "The answer is 14"]
    terms = parse_rewards([{"verifier": "arith_steps", "weight": 0.5}, {"verifier": "math_answer", "weight": 2.0}])
    with RewardFunction(terms, outcome_step=outcome_step) as reward_fn:
        batch = reward_fn([Sample(prompt="q", completion=t, answer="14") for t in texts])
    first, second = batch.steps
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    arith = [s for s in first if (s.char_start, s.char_end) != (0, len(texts[0]))]
    assert [s.reward for s in arith] == [0.5, 0.0]  # line 1 correct (+1 × 0.5), "#### 14" no claim
    assert step_token_indices(tok, ids, [s.char_end for s in arith]) == [17, 22]
    final = [s for s in first if (s.char_start, s.char_end) == (0, len(texts[0]))]
    if outcome_step == "always":
        assert [s.reward for s in final] == [2.0]  # math_answer 1 × weight 2
        assert step_token_indices(tok, ids, [final[0].char_end]) == [len(ids) - 1]
    else:
        assert final == []  # the completion has process steps: no final-answer step
    # the second completion makes no claim: arith_steps gives it a neutral step, so it has
    # a process step and "fallback" adds no final step; "always" does
    assert [s.reward for s in second] == ([0.0, 2.0] if outcome_step == "always" else [0.0])


def test_place_steps_keeps_every_step_and_ends_on_completion_tokens(char_model, problems_file, tmp_path):
    from verirl import Step

    trainer = Trainer(make_config(char_model, problems_file, tmp_path, "algo.reward_mode=process",
                                  "rewards=[{verifier: halves}]", "rollout.prompts_per_step=1", "rollout.group_size=2"))
    try:
        batch = trainer.rollout().batch
        text = batch.texts[0]
        steps = [[Step(0, 2, 1.0), Step(1, 2, -1.0), Step(0, len(text), 0.5)], []]
        rewards, index, present = trainer.place_steps(batch, steps)
        assert rewards.tolist() == [[1.0, -1.0, 0.5], [0.0, 0.0, 0.0]]
        assert present.tolist() == [[1, 1, 1], [0, 0, 0]]
        n = int(batch.completion_mask[0].sum())
        last = n - 2 if bool(batch.finished[0]) else n - 1  # the EOS token carries no text
        assert index[0].tolist() == [1, 1, last]  # two steps on one token stay two
    finally:
        trainer.close()


def test_engine_sleeps_for_each_update_and_gets_the_weights_after_it(char_model, problems_file, tmp_path):
    """The trainer hands the engine its memory back before each update (``sleep``) and its
    updated weights after the optimizer step (``sync_weights``), before the next rollout:
    checked on the real HF engine, recording when it is called and what the weights are."""
    from verirl.rollout.hf import HFEngine

    events = []

    class Recording(HFEngine):
        def generate(self, prompts, sampling, on_finished=None):
            events.append("generate")
            return super().generate(prompts, sampling, on_finished)

        def sleep(self):
            events.append("sleep")

        def sync_weights(self, state_dict=None):
            events.append(("sync", sum(float(p.sum()) for p in self.model.parameters())))

    trainer = Trainer(make_config(char_model, problems_file, tmp_path, "train.steps=2"))
    try:
        trainer.engine = Recording(trainer.model, trainer.tokenizer)
        before = sum(float(p.sum()) for p in trainer.model.parameters())
        trainer.train()
        after = sum(float(p.sum()) for p in trainer.model.parameters())
    finally:
        trainer.close()
    assert [e if isinstance(e, str) else e[0] for e in events] == ["generate", "sleep", "sync"] * 2
    assert events[2][1] != before and events[-1][1] == after  # synced after each step's update
