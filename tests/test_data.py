"""Loading problems: GSM8K and MATH formats, gold extraction, prompts, the resumable stream."""

from __future__ import annotations

import json

import pytest

from verirl import ConfigError
from verirl.data import ProblemStream, build_prompt, gold_answer, last_boxed, load_problems


def test_gsm8k_file(shared_data):
    problems = load_problems(str(shared_data / "gsm8k" / "test.jsonl"), "gsm8k")
    assert len(problems) == 1319
    assert problems[0].answer == "18"
    assert all(p.answer and "####" not in p.answer and "," not in p.answer for p in problems)


def test_math500_file(shared_data):
    problems = load_problems(str(shared_data / "math" / "math500_test.jsonl"), "math")
    assert len(problems) == 500
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert problems[0].row["level"] == 2


def test_last_boxed_balanced():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{1}{2}} c") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("nothing") is None


def test_math_gold_from_solution_when_no_answer_field():
    assert gold_answer({}, r"so $\boxed{42}$.", "math") == "42"
    assert gold_answer({}, "Total 1,234\n#### 1,234", "gsm8k") == "1234"


def test_malformed_rows_are_reported_with_their_index(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "x\n#### 3"}) + "\n" + "{not json\n")
    with pytest.raises(ConfigError, match=r"d.jsonl:2: not valid JSON .*; each line must be one JSON object: "
                                          r"fix line 2 or delete it"):
        load_problems(str(path))
    path.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match=r"^data.train: .*d.jsonl:1: a list, not a JSON object; .*fix line 1"):
        load_problems(str(path), key="data.train")
    path.write_text(json.dumps({"question": "q", "answer": "x\n#### 3"}) + "\n" + json.dumps({"q": "no field"}) + "\n")
    with pytest.raises(ConfigError, match=r"row 1: no question field"):
        load_problems(str(path))
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ConfigError, match=r"row 0: could not extract a gold answer"):
        load_problems(str(path), "gsm8k")


def test_column_mapping(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"input": "What is 2+2?", "target": "4"}) + "\n")
    [p] = load_problems(str(path), "plain", question_field="input", answer_field="target")
    assert (p.question, p.answer) == ("What is 2+2?", "4")


def test_missing_file_and_builtin():
    with pytest.raises(ConfigError, match=r"^file not found: /nonexistent/x.jsonl; give a JSONL path, builtin:"):
        load_problems("/nonexistent/x.jsonl")
    with pytest.raises(ConfigError, match=r"^data.eval: 'builtin:nope/train.jsonl': no such built-in asset"):
        load_problems("builtin:nope/train.jsonl", key="data.eval")


def test_prompt_template_and_chat_template(char_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(char_model)
    assert build_prompt(tok, "2+2?", "Q: {question}\nA:", None) == "Q: 2+2?\nA:"
    tok.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    assert build_prompt(tok, "2+2?", None, "Be brief.") == "[system] Be brief.\n[user] 2+2?\n[assistant]"


def test_stream_is_seeded_and_resumable():
    from verirl.data import Problem

    problems = [Problem(str(i), str(i)) for i in range(7)]
    a = ProblemStream(problems, seed=3)
    first = [p.question for p in a.take(10)]  # crosses an epoch boundary
    state = a.state()
    rest = [p.question for p in a.take(9)]
    b = ProblemStream(problems, seed=3)
    b.load_state(state)
    assert [p.question for p in b.take(9)] == rest
    assert sorted(first[:7]) == sorted(str(i) for i in range(7))
    assert [p.question for p in ProblemStream(problems, seed=3).take(10)] == first


def test_hugging_face_dataset_from_a_local_directory(tmp_path):
    """The `hf:` source goes through `datasets.load_dataset`, as it does for hub ids."""
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [{"problem": f"What is {i}*2?", "solution": f"It is $\\boxed{{{2 * i}}}$."} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = load_problems(f"hf:{folder}::train", "math")
    assert [p.answer for p in problems] == ["0", "2", "4", "6", "8"]
    assert problems[3].question == "What is 3*2?"
