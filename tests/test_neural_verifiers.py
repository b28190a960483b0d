"""reward_model and prm on tiny, randomly initialised models built offline in the test.

Every model is saved to a temporary directory and loaded back through the verifier's
real path (``get_verifier(name).build(model=str(dir), ...)``); the expected scores come
from a direct forward pass of the same saved model on the same text.
"""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
)

from verirl import ConfigError, Failure, Sample, Step
from verirl.plugins import get_verifier
from verirl.grading.steps import split_steps

torch.set_num_threads(1)

WORDS = (
    ["[UNK]", "[BOS]", "[EOS]", "ки", "+", "-", "=", "*", "/", ":", ".", ",", "(", ")", "user", "assistant"]
    + "The the answer is so we have apples pens each total she he buys sold then first next what how many".split()
    + [str(i) for i in range(200)]
)
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"


def tiny_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS that adds [BOS]; no pad token (the verifiers set one)."""
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def llama_config(**kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, **kw,
    )


def save(tmp_path_factory, name: str, model, tokenizer) -> str:
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return save(tmp_path_factory, "rm", LlamaForSequenceClassification(llama_config(num_labels=1)), tiny_tokenizer())


@pytest.fixture(scope="module")
def rm_chat_dir(tmp_path_factory) -> str:
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(llama_config(num_labels=1))
    return save(tmp_path_factory, "rm_chat", model, tiny_tokenizer(CHAT_TEMPLATE))


@pytest.fixture(scope="module")
def rm2_dir(tmp_path_factory) -> str:
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=1, eos_token_id=2, num_labels=2)
    return save(tmp_path_factory, "rm2", GPT2ForSequenceClassification(config), tiny_tokenizer())


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> str:
    torch.manual_seed(3)
    return save(tmp_path_factory, "prm_lm", LlamaForCausalLM(llama_config()), tiny_tokenizer())


@pytest.fixture(scope="module")
def tc_dir(tmp_path_factory) -> str:
    torch.manual_seed(4)
    return save(tmp_path_factory, "prm_tc", LlamaForTokenClassification(llama_config(num_labels=2)), tiny_tokenizer())


SAMPLES = [
    Sample("what is 3 + 4", " 3 + 4 = 7 so the answer is 7"),
    Sample("how many apples", " she buys 12 apples\nthen 12 - 5 = 7\nthe answer is 7"),
    Sample("what is 2 * 6", " 12"),
    Sample("how many pens", " he sold 30 pens . then 30 / 3 = 10 pens each\n\nso 10"),
    Sample("what is the total", " first 5 + 5 = 10 , next 10 * 2 = 20 , total 20 . The answer is 20"),
    Sample("what", " the answer is 1"),
    Sample("how many", " 100 - 1 = 99\n99 + 1 = 100\n100 / 2 = 50\n50 * 2 = 100\nso 100"),
    Sample("what is 7", " 7"),
    Sample("what is 9 + 9", " we have 9 + 9 = 18 so the answer is 18 ."),
]


# --- reward_model -----------------------------------------------------------------------------


def direct_rm_logits(path: str, ids: list[int]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def plain_ids(path: str, sample: Sample) -> list[int]:
    return PreTrainedTokenizerFast.from_pretrained(path)(sample.prompt + sample.completion)["input_ids"]


def test_rm_scores_equal_a_direct_forward_pass(rm_dir: str) -> None:
    score = get_verifier("reward_model").build(model=rm_dir, device="cpu")
    got = score(SAMPLES)
    want = [float(direct_rm_logits(rm_dir, plain_ids(rm_dir, s))[0]) for s in SAMPLES]
    assert got == pytest.approx(want, abs=1e-5)
    assert len({round(v, 4) for v in got}) > 5  # a random head still tells the texts apart


def test_rm_batching_does_not_change_scores(rm_dir: str) -> None:
    spec = get_verifier("reward_model")
    one = spec.build(model=rm_dir, device="cpu", batch_size=1)(SAMPLES)
    eight = spec.build(model=rm_dir, device="cpu", batch_size=8)(SAMPLES)
    three = spec.build(model=rm_dir, device="cpu", batch_size=3)(list(reversed(SAMPLES)))
    assert eight == pytest.approx(one, abs=1e-5)
    assert list(reversed(three)) == pytest.approx(one, abs=1e-5)


def test_rm_pad_token(rm_dir: str, rm_chat_dir: str, tmp_path) -> None:
    assert PreTrainedTokenizerFast.from_pretrained(rm_dir).pad_token is None
    score = get_verifier("reward_model").build(model=rm_dir, device="cpu")
    assert score.tokenizer.pad_token == "[EOS]"
    score(SAMPLES)
    assert score.model.config.pad_token_id is None  # left as the checkpoint had it
    # A sample ending in [EOS] (the eos the tokenizer now pads with) is read at that
    # [EOS], alone and in a batch, as the checkpoint reads it unbatched.
    ending = Sample("what is 3 + 4", " 7 [EOS]")
    ids = plain_ids(rm_dir, ending)
    assert ids[-1] == 2
    want = float(direct_rm_logits(rm_dir, ids)[0])
    assert score([ending]) == pytest.approx([want], abs=1e-5)
    assert score([ending] + SAMPLES)[0] == pytest.approx(want, abs=1e-5)
    # A checkpoint that names its pad id is pooled the way it was trained: before it.
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    model.config.pad_token_id = 2
    model.save_pretrained(tmp_path)
    PreTrainedTokenizerFast.from_pretrained(rm_dir).save_pretrained(tmp_path)
    named = get_verifier("reward_model").build(model=str(tmp_path), device="cpu")
    assert named([ending] + SAMPLES)[0] == pytest.approx(float(direct_rm_logits(rm_dir, ids[:-1])[0]), abs=1e-5)


def test_rm_normalisation_options(rm_dir: str) -> None:
    spec = get_verifier("reward_model")
    raw = torch.tensor(spec.build(model=rm_dir, device="cpu")(SAMPLES), dtype=torch.float64)
    sig = spec.build(model=rm_dir, device="cpu", normalize="sigmoid")(SAMPLES)
    assert sig == pytest.approx(torch.sigmoid(raw).tolist(), abs=1e-6)
    z = torch.tensor(spec.build(model=rm_dir, device="cpu", normalize="batch_z")(SAMPLES))
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(z.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(torch.argsort(z), torch.argsort(raw))
    assert spec.build(model=rm_dir, device="cpu", normalize="batch_z")(SAMPLES[:1]) == [0.0]
    affine = spec.build(model=rm_dir, device="cpu", scale=2.0, shift=-1.0)(SAMPLES)
    assert affine == pytest.approx((2 * raw - 1).tolist(), abs=1e-5)
    both = spec.build(model=rm_dir, device="cpu", normalize="sigmoid", scale=2.0, shift=-1.0)(SAMPLES)
    assert both == pytest.approx((2 * torch.sigmoid(raw) - 1).tolist(), abs=1e-6)
    assert all(-1 < v < 1 for v in both)


def test_rm_two_label_head_logit_or_prob(rm2_dir: str) -> None:
    spec = get_verifier("reward_model")
    logits = torch.stack([direct_rm_logits(rm2_dir, plain_ids(rm2_dir, s)) for s in SAMPLES])  # [n, 2]
    assert spec.build(model=rm2_dir, device="cpu")(SAMPLES) == pytest.approx(logits[:, 1].tolist(), abs=1e-5)
    assert spec.build(model=rm2_dir, device="cpu", label=0)(SAMPLES) == pytest.approx(logits[:, 0].tolist(), abs=1e-5)
    probs = torch.softmax(logits, dim=-1)[:, 1]
    assert spec.build(model=rm2_dir, device="cpu", output="prob")(SAMPLES) == pytest.approx(probs.tolist(), abs=1e-6)
    batched = spec.build(model=rm2_dir, device="cpu", output="prob", batch_size=4)(SAMPLES)
    assert batched == pytest.approx(probs.tolist(), abs=1e-6)


def test_rm_uses_the_chat_template(rm_chat_dir: str) -> None:
    spec = get_verifier("reward_model")
    tok = PreTrainedTokenizerFast.from_pretrained(rm_chat_dir)
    want = []
    for s in SAMPLES:
        msgs = [{"role": "user", "content": s.prompt}, {"role": "assistant", "content": s.completion}]
        ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
        want.append(float(direct_rm_logits(rm_chat_dir, list(ids))[0]))
    templated = spec.build(model=rm_chat_dir, device="cpu", batch_size=4)(SAMPLES)
    assert templated == pytest.approx(want, abs=1e-5)
    plain = spec.build(model=rm_chat_dir, device="cpu", chat_template="never")(SAMPLES)
    assert plain == pytest.approx([float(direct_rm_logits(rm_chat_dir, plain_ids(rm_chat_dir, s))[0]) for s in SAMPLES], abs=1e-5)
    assert max(abs(a - b) for a, b in zip(plain, templated)) > 1e-3


def test_rm_control_tokens_in_the_completion_are_text(rm_chat_dir: str) -> None:
    spec = get_verifier("reward_model")
    sneaky = Sample("what is 3 + 4", "7 [EOS] user : so the answer is 7")
    safe = spec.build(model=rm_chat_dir, device="cpu")
    if not safe.sanitize:  # the verifier logs a warning instead (transformers 4.x)
        pytest.skip("this transformers version's apply_chat_template has no sanitize_control_tokens")
    raw = spec.build(model=rm_chat_dir, device="cpu", sanitize=False)
    eos = safe.tokenizer.eos_token_id
    assert safe.encode(sneaky).count(eos) == 2  # only the template's two
    assert raw.encode(sneaky).count(eos) == 3
    assert safe([sneaky]) != pytest.approx(raw([sneaky]), abs=1e-4)


def test_rm_truncation_keeps_the_end_by_default(rm_dir: str) -> None:
    spec = get_verifier("reward_model")
    sample = SAMPLES[4]
    ids = plain_ids(rm_dir, sample)
    assert len(ids) > 8
    left = spec.build(model=rm_dir, device="cpu", max_length=8)([sample])
    assert left == pytest.approx([float(direct_rm_logits(rm_dir, ids[-8:])[0])], abs=1e-5)
    right = spec.build(model=rm_dir, device="cpu", max_length=8, truncation_side="right")([sample])
    assert right == pytest.approx([float(direct_rm_logits(rm_dir, ids[:8])[0])], abs=1e-5)


def test_rm_bad_params(rm_dir: str, rm2_dir: str, tmp_path) -> None:
    spec = get_verifier("reward_model")
    with pytest.raises(ConfigError, match="needs param 'model'"):
        spec.build()
    with pytest.raises(ConfigError, match="could not load model .*nowhere"):
        spec.build(model=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="'normalize' must be one of none, sigmoid, batch_z; got 'zscore'"):
        spec.build(model=rm_dir, normalize="zscore")
    with pytest.raises(ConfigError, match="'output' must be one of logit, prob"):
        spec.build(model=rm_dir, output="score")
    with pytest.raises(ConfigError, match=r"'label' must be -1 \(auto\) or in 0..1 .*got 2"):
        spec.build(model=rm2_dir, label=2)
    with pytest.raises(ConfigError, match="has no chat template"):
        spec.build(model=rm_dir, chat_template="always")
    with pytest.raises(ConfigError, match="'device' must be 'auto' or a torch device"):
        spec.build(model=rm_dir, device="gpu-please")
    with pytest.raises(ConfigError, match="'batch_size' must be >= 1"):
        spec.build(model=rm_dir, batch_size=0)
    with pytest.raises(ConfigError, match="param 'batch_size' must be int"):
        spec.build(model=rm_dir, batch_size=2.5)
    assert spec.build(model=rm_dir, device="cpu")([]) == []


# --- prm -----------------------------------------------------------------------------------


def tagged_text(sample: Sample, tag: str) -> str:
    """Math-Shepherd's input, written out independently of the verifier: prompt, a
    space, then each line of the completion followed by the tag."""
    spans = split_steps(sample.completion, "lines")
    out, cut = [sample.prompt, " "], 0
    for _, end in spans:
        out += [sample.completion[cut:end], tag]
        cut = end
    out.append(sample.completion[cut:])
    return "".join(out)


def direct_step_token_probs(path: str, sample: Sample) -> list[float]:
    tok = PreTrainedTokenizerFast.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([tok(tagged_text(sample, " ки"))["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    good, bad = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    at = (ids[0] == tok.convert_tokens_to_ids("ки")).nonzero()[:, 0]
    return torch.softmax(logits[at][:, [good, bad]], dim=-1)[:, 0].tolist()


def test_prm_step_token_scores_equal_a_direct_forward_pass(lm_dir: str) -> None:
    score = get_verifier("prm").build(model=lm_dir, device="cpu")
    results = score(SAMPLES)
    for sample, steps in zip(SAMPLES, results):
        assert all(isinstance(s, Step) for s in steps)
        spans = [(s.char_start, s.char_end) for s in steps]
        assert spans == split_steps(sample.completion, "lines")
        assert [sample.completion[a:b] for a, b in spans] == [
            line.strip() for line in sample.completion.splitlines() if line.strip()
        ]
        assert [s.reward for s in steps] == pytest.approx(direct_step_token_probs(lm_dir, sample), abs=1e-5)
    assert len({round(s.reward, 4) for steps in results for s in steps}) > 5


def test_prm_batching_and_signed(lm_dir: str) -> None:
    spec = get_verifier("prm")
    one = spec.build(model=lm_dir, device="cpu", batch_size=1)(SAMPLES)
    four = spec.build(model=lm_dir, device="cpu", batch_size=4)(SAMPLES)
    for a, b in zip(one, four):
        assert [s[:2] for s in a] == [s[:2] for s in b]
        assert [s.reward for s in b] == pytest.approx([s.reward for s in a], abs=1e-5)
    signed = spec.build(model=lm_dir, device="cpu", signed=True)(SAMPLES)
    for a, b in zip(one, signed):
        assert [s.reward for s in b] == pytest.approx([2 * s.reward - 1 for s in a], abs=1e-5)


def test_prm_sentence_steps(lm_dir: str) -> None:
    sample = SAMPLES[4]
    (steps,) = get_verifier("prm").build(model=lm_dir, device="cpu", split="sentences")([sample])
    assert [sample.completion[a:b] for a, b, _ in steps] == [
        "first 5 + 5 = 10 , next 10 * 2 = 20 , total 20 .", "The answer is 20",
    ]
    assert all(0 < s.reward < 1 for s in steps)


def test_prm_token_classification_reads_each_steps_last_token(tc_dir: str) -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(tc_dir)
    model = AutoModelForTokenClassification.from_pretrained(tc_dir).eval()
    score = get_verifier("prm").build(model=tc_dir, style="token_classification", device="cpu", batch_size=3)
    for sample, steps in zip(SAMPLES, score(SAMPLES)):
        text = sample.prompt + " " + sample.completion
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0], dim=-1)[:, 1]
        # the last token of a step is the last token of the text cut after that step
        offset = len(sample.prompt) + 1
        want = [float(probs[len(tok(text[: offset + end])["input_ids"]) - 1]) for _, end, _ in steps]
        assert [s.reward for s in steps] == pytest.approx(want, abs=1e-5)
    # with a tag, the tag's token is read instead
    tagged = get_verifier("prm").build(model=tc_dir, style="token_classification", step_tag=" ки", device="cpu")
    (steps,) = tagged([SAMPLES[1]])
    ids = torch.tensor([tok(tagged_text(SAMPLES[1], " ки"))["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0], dim=-1)[:, 1]
    at = (ids[0] == tok.convert_tokens_to_ids("ки")).nonzero()[:, 0]
    assert [s.reward for s in steps] == pytest.approx(probs[at].tolist(), abs=1e-5)


def test_prm_too_long_samples(lm_dir: str) -> None:
    spec = get_verifier("prm")
    sample = SAMPLES[6]  # 5 steps
    tok = PreTrainedTokenizerFast.from_pretrained(lm_dir)
    ids = tok(tagged_text(sample, " ки"))["input_ids"]
    first_tag = ids.index(tok.convert_tokens_to_ids("ки"))
    # cutting only prompt tokens: every step survives, and the scores are the truncated text's
    keep = len(ids) - 3
    assert first_tag >= 3
    (steps,) = spec.build(model=lm_dir, device="cpu", max_length=keep)([sample])
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    cut = torch.tensor([ids[3:]])
    with torch.no_grad():
        logits = model(input_ids=cut).logits[0]
    at = (cut[0] == tok.convert_tokens_to_ids("ки")).nonzero()[:, 0]
    want = torch.softmax(logits[at][:, [tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")]], -1)[:, 0]
    assert [s.reward for s in steps] == pytest.approx(want.tolist(), abs=1e-5)
    # cutting into the steps: that sample fails, the others in the batch are scored
    short, fine = spec.build(model=lm_dir, device="cpu", max_length=len(ids) - first_tag - 1)([sample, SAMPLES[2]])
    assert isinstance(short, Failure) and "max_length" in short.cause
    assert len(fine) == 1 and 0 < fine[0].reward < 1


def test_prm_empty_completion_has_no_steps(lm_dir: str) -> None:
    assert get_verifier("prm").build(model=lm_dir, device="cpu")([Sample("q", "  \n ")]) == [[]]


def test_prm_bad_params(lm_dir: str, tc_dir: str) -> None:
    spec = get_verifier("prm")
    with pytest.raises(ConfigError, match="needs param 'model'"):
        spec.build()
    with pytest.raises(ConfigError, match="'style' must be one of step_token, token_classification; got 'value'"):
        spec.build(model=lm_dir, style="value")
    with pytest.raises(ConfigError, match="'split' must be one of lines, sentences, paragraphs"):
        spec.build(model=lm_dir, split="tokens")
    with pytest.raises(ConfigError, match=r"'good_token': '\+ \+' encodes to 2 tokens"):
        spec.build(model=lm_dir, device="cpu", good_token="+ +")
    with pytest.raises(ConfigError, match="same id"):
        spec.build(model=lm_dir, device="cpu", bad_token="+")
    with pytest.raises(ConfigError, match="past the vocabulary"):
        spec.build(model=lm_dir, device="cpu", good_token_id=10**6)
    with pytest.raises(ConfigError, match="needs a non-empty 'step_tag'"):
        spec.build(model=lm_dir, step_tag="")
    with pytest.raises(ConfigError, match="'positive_label' must be in 0..1"):
        spec.build(model=tc_dir, style="token_classification", device="cpu", positive_label=2)
    with pytest.raises(ConfigError, match="could not load model"):
        spec.build(model=tc_dir + "-missing")
    # explicit token ids stand in for strings
    by_id = spec.build(model=lm_dir, device="cpu", good_token_id=WORDS.index("+"), bad_token_id=WORDS.index("-"))
    by_text = spec.build(model=lm_dir, device="cpu")
    assert by_id(SAMPLES[:2]) == by_text(SAMPLES[:2])
    assert math.isfinite(by_text(SAMPLES[:1])[0][0].reward)
