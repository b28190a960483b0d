"""Hostile input against the math_answer verifier: code-injection attempts, giant
numbers, deep nesting, huge strings, NUL bytes and lone surrogates, in completions and
in gold answers. No code may run, every sample must come back within its time bound,
memory must stay bounded, and the process must survive. Plus fuzzing with hypothesis."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from verirl import Failure, Sample
from verirl.grading.extract import extract_answer
from verirl.grading.judge import GoldAnswerError, is_equivalent, judge
from verirl.grading.parse import ParseError, parse_answer
from verirl.plugins import get_verifier

TIMEOUT = 1.0

INJECTIONS = [
    "__import__('os').system('touch {s}')",
    "lambda: __import__('os').system('touch {s}')",
    "exec(\"open('{s}', 'w')\")",
    "eval(\"open('{s}', 'w')\")",
    "().__class__.__bases__[0].__subclasses__()",
    "open('{s}', 'w').write('x')",
    "__import__('subprocess').call(['touch', '{s}'])",
]

GIANTS = [
    "9^{9^{9^{9}}}", "10**10**10", "(10^{100})!", "99999!", "\\binom{10^{9}}{10^{4}}",
    "2^{2^{2^{2^{2}}}}", "10^{10^{4}} + 1", "(x+1)^{10^{6}}", "\\sqrt[10^{9}]{2}",
    "1e999", "9" * 999, "\\sin(10^{100})", "\\frac{1}{0}", "0^{-1}", "(-1)^{1/10^{9}}",
]


def hostile_answers(sentinel: str) -> list[str]:
    answers = [t.format(s=sentinel) for t in INJECTIONS] + GIANTS
    answers += [
        "(" * 5000 + "1" + ")" * 5000,
        "\\frac{" * 400 + "1" + "}{2}" * 400,
        "-" * 1900 + "1",
        "x" * 1_000_000,
        "1\x00", "\x00" * 100, "1\ud800", "\udfff\ud800",
        "\\", "{", "}", "\\left(", "\\begin{pmatrix}" * 100,
    ]
    return answers


def hostile_completions(sentinel: str) -> list[str]:
    out = []
    for a in hostile_answers(sentinel):
        out += [f"so \\boxed{{{a}}}", f"#### {a}", f"The answer is {a}."]
    out += ["a" * 1_000_000, "\\boxed{" * 100_000, "1," * 500_000, "the answer is " * 70_000,
            "\x00" * 1_000_000]
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def verifier():
    v = get_verifier("math_answer").build(timeout=TIMEOUT, workers=2, memory_mb=512, cache_size=0)
    yield v
    v.close()


def test_hostile_completions_run_no_code_and_stay_bounded(verifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = str(tmp_path / "SENTINEL")
    completions = hostile_completions(sentinel) + hostile_completions("SENTINEL")
    samples = [Sample("q", c, "3") for c in completions]
    rss_before = _rss_mb()
    start = time.monotonic()
    scores = verifier(samples)
    elapsed = time.monotonic() - start
    assert not Path(sentinel).exists() and not (tmp_path / "SENTINEL").exists()
    assert list(tmp_path.iterdir()) == []
    timeouts = sum(isinstance(s, Failure) and s.kind == "timeout" for s in scores)
    for c, s in zip(completions, scores):
        assert s == 0.0 or isinstance(s, Failure), (c[:80], s)
    # two workers: the samples that time out cost at most their bound each, in parallel
    assert elapsed < TIMEOUT * (timeouts + 1) + 15, (elapsed, timeouts)
    assert _rss_mb() - rss_before < 300
    assert verifier([Sample("q", "\\boxed{3}", "3")]) == [1.0]  # still working


def test_hostile_gold_answers_are_failures_or_scores(verifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    golds = hostile_answers("SENTINEL")
    scores = verifier([Sample("q", "\\boxed{3}", g) for g in golds])
    assert not (tmp_path / "SENTINEL").exists()
    for g, s in zip(golds, scores):
        assert s in (0.0, 1.0) or isinstance(s, Failure), (g[:80], s)
    # a gold answer that cannot be parsed is reported, not silently scored 0
    assert any(isinstance(s, Failure) and "cannot be parsed" in s.cause for s in scores)


def test_each_hostile_answer_is_quick_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for answer in hostile_answers("SENTINEL"):
        start = time.monotonic()
        for pred, gold in ((answer, "3"), ("3", answer), (answer, answer)):
            try:
                judge(pred, gold)
            except GoldAnswerError:
                pass  # the expected outcome for an unreadable gold answer
        assert time.monotonic() - start < 2.0, answer[:80]
        start = time.monotonic()
        extract_answer(f"\\boxed{{{answer}}} and #### {answer}")
        assert time.monotonic() - start < 0.5
    assert not (tmp_path / "SENTINEL").exists()


def test_extraction_stays_linear_against_a_long_prompt():
    """Extraction runs in the caller's process, without the sandbox: a megabyte of hostile
    completion against a prompt of hundreds of sentences (the copies of the problem are
    blanked out, rule A0) must stay quick."""
    problem = " ".join(f"Example {i}: a sentence of the few-shot prompt with {7 * i} in it." for i in range(400))
    for completion in hostile_completions("SENTINEL") + ["$" * 1_000_000, "\\(" * 500_000, '"' * 1_000_000]:
        start = time.monotonic()
        extract_answer(completion, problem=problem)
        assert time.monotonic() - start < 2.0, completion[:80]


def test_workers_run_under_a_memory_limit(verifier):
    verifier([Sample("q", "\\boxed{1}", "1")])
    pids = verifier.pool.worker_pids
    assert pids
    for pid in pids:
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(l for l in limits.splitlines() if l.startswith("Max address space"))
        soft = line.split()[3]  # Max address space <soft> <hard> bytes
        assert soft.isdigit() and int(soft) < 16 * 2**30, line


# ---- fuzzing ----------------------------------------------------------------------------
LATEX_PIECES = [
    "0", "1", "7", "12", "3.5", ".5", ",", ",\\!", "1e5", "x", "y", "e", "i", "B", "(", ")", "[", "]",
    "{", "}", "\\{", "\\}", "+", "-", "*", "/", "^", "**", "_", "=", "<", "\\le", "!", "%", "\\%",
    "|", "&", "\\\\", "\\frac", "\\dfrac", "\\sqrt", "\\pi", "\\infty", "\\cdot", "\\times",
    "\\left(", "\\right)", "\\cup", "\\pm", "\\in", "\\text{", "\\text{ and }", "\\circ", "\\sin",
    "\\log_", "\\binom", "\\begin{pmatrix}", "\\end{pmatrix}", "\\langle", "\\rangle", "\\lfloor",
    "\\rfloor", "$", "\\$", "dollars", " ", "\\mathbf{", "\\boxed{", "lambda", "__import__", "'",
    "\x00", "\\unknown",
]

fuzz_settings = settings(max_examples=300, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@fuzz_settings
@given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=200))
def test_fuzz_arbitrary_text_parses_or_refuses(text):
    start = time.monotonic()
    try:
        parse_answer(text)
    except ParseError:
        pass  # refusing is a correct outcome
    assert time.monotonic() - start < 1.0


@fuzz_settings
@given(st.lists(st.sampled_from(LATEX_PIECES), max_size=30).map("".join))
# found by hypothesis: 1e5 is a Float, and Float(100000)!!! once escaped the factorial guard
@example("1e5!!!\\left(\\infty\\rfloor\\infty!\\right)\\rfloor\\le<1e5\\rfloor")
@example("1e5!")
def test_fuzz_latex_like_text_never_crashes_the_comparison(text):
    start = time.monotonic()
    assert isinstance(is_equivalent(text, "x+1"), bool)
    assert isinstance(is_equivalent("\\frac{1}{2}", text), bool)
    assert isinstance(extract_answer(text), (str, type(None)))
    try:
        same = judge(text, text)
    except GoldAnswerError:
        same = None  # unparseable: reported as such
    assert same in (True, None)  # whatever parses equals itself
    assert time.monotonic() - start < 2.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=300),
                          st.lists(st.sampled_from(LATEX_PIECES), max_size=40).map(
                              lambda xs: "\\boxed{" + "".join(xs) + "}")),
                min_size=1, max_size=8))
def test_fuzz_completions_through_the_verifier(verifier, completions):
    scores = verifier([Sample("q", c, "\\frac{1}{2}") for c in completions])
    assert len(scores) == len(completions)
    for s in scores:
        assert s in (0.0, 1.0) or isinstance(s, Failure)
    assert os.getpid() > 0  # the process is alive and scoring
