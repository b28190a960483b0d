"""Benchmark: how well the step verifiers find wrong steps, on step data labelled by others.

Scores ``arith_steps`` (and ``prm`` when ``--prm MODEL`` is given) on three labelled sets
from ``../shared/data`` (sources and licenses in its README), and on one unlabelled:

- **BIG-Bench-Mistake, multistep arithmetic** (300 PaLM 2 chain-of-thought traces, the
  first wrong step marked by people; 62 have none): *first-mistake accuracy*, the share
  of traces whose first flagged step is the marked one (no flag where none is marked),
  also split into traces with and without a mistake; and the step AUROC over the steps
  up to and including the first mistake (later steps carry no label).
- **PRM800K phase-1 test** (98 items, 776 model-written steps rated +1 / 0 / -1 by
  people): *step AUROC* of telling a -1 step from the others (0 and +1); *first-error
  accuracy* over the items that have a -1 step (the first flagged step is the first -1
  step); *false flags*, the share of the accepted correct solutions with any step flagged,
  and the share of +1 steps flagged.
- **GSM8K test with one injected wrong result** (1,319 gold solutions): in each
  solution one line's calculator annotation ``<<a*b=c>>`` whose result is written again
  right after it gets a nearby wrong result, the annotation and the visible number alike
  (an integer moves by 1..9, a decimal by 1..9 units of its last place, never below zero;
  the line and the change drawn from ``random.Random(f"{seed}:{row}")``). Two variants: the
  annotations kept, and all ``<<…>>`` stripped (how a model writes). *Detection* is the
  share of injected solutions with any step flagged; *exact step* the share whose first
  flagged step is the injected line; *false flags* the share of the untouched solutions
  (same variant) with any step flagged.
- **MATH-500 gold solutions** (500, LaTeX): no step labels; a flag is a false flag or a
  slip in the gold. The share of solutions and of steps flagged, and of steps the
  verifier has a verdict on.

How a verifier is asked. Each item's labelled steps are joined with ``"\\n"`` into one
completion (the prompt is the problem; for ``prm`` written through ``--prompt-template``)
and the verifier scores it like any completion in training. A labelled step's score is
the lowest score of the verifier's steps inside its span, not counting ``arith_steps``'
neutral (no-claim) pieces; a step with no scored piece gets the neutral score
(``arith_steps``: 0; ``prm``: unscored, left out). BIG-Bench-Mistake's steps have no
newline, so ``split_steps`` gives back exactly them (checked at run time); 37 PRM800K items
have steps of several lines, which is what the lowest-piece rule is for.

Conventions. A step is *flagged* when its score is below the threshold: ``arith_steps``
flags ``-1`` (a false claim) only, ``prm`` flags ``p < --prm-threshold`` (0.5). AUROC is
the probability that a wrong step scores lower than a not-wrong one, over all such
pairs, ties counting half (lower score = more likely wrong; 0.5 is chance).
``arith_steps``' three-valued score makes most pairs ties. ``--arith-baseline FILE``
scores a second ``arith_steps`` from a file (an earlier version: ``git show
REV:verifiers/arith_steps.py > before.py``), as a column of its own;
``--list-disagreements`` lists the BIG-Bench-Mistake traces where ``arith_steps`` and the
label disagree, with the step in question.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/step_verifier_bench.py --out benchmarks/results/step_verifier_bench.md
    git show REV:verifiers/arith_steps.py > /tmp/before.py
    OMP_NUM_THREADS=1 python benchmarks/step_verifier_bench.py --arith-baseline /tmp/before.py --list-disagreements
    OMP_NUM_THREADS=1 python benchmarks/step_verifier_bench.py --prm builtin:tiny-steps-prm \\
        --prm-style token_classification --step-tag "" --prm-max-length 256
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Sequence

from verirl import Failure, Sample
from verirl.grading.steps import split_steps
from verirl.plugins import get_verifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH = 64

# A calculator annotation whose expression computes something and whose result is a
# plain number; group 1 is the result.
_ANNOTATION = re.compile(r"<<[^<>\n=]*\d[^<>\n=]*?[-+*/][^<>\n=]*=(-?\d[\d,]*(?:\.\d+)?)>>")
_VISIBLE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANY_ANNOTATION = re.compile(r"<<[^<>\n]*>>")


@dataclass
class Item:
    """One labelled solution: ``steps`` (texts) with one label each, ``None`` = unlabelled."""

    prompt: str
    steps: list[str]
    labels: list[bool | None]  # True: the step is wrong
    meta: dict = field(default_factory=dict)


@dataclass
class Judge:
    """A built verifier, how its step scores are read, and what it calls a flag."""

    name: str
    score: Callable[[Sequence[Sample]], list]
    threshold: float  # a step scoring below this is flagged
    neutral: float | None  # the "no claim" score, skipped when steps are merged


# --- scoring functions (tested in tests/test_step_verifier_bench.py) ----------------------


def auroc(wrong: Sequence[float], ok: Sequence[float]) -> float | None:
    """P(a wrong step scores lower than a not-wrong one), ties counting half; None when
    either side is empty. Mann-Whitney U over average ranks, O(n log n)."""
    if not wrong or not ok:
        return None
    scored = sorted([(s, 1) for s in ok] + [(s, 0) for s in wrong])
    rank_sum_ok = 0.0
    i = 0
    while i < len(scored):
        j = i
        while j < len(scored) and scored[j][0] == scored[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # ranks i+1 .. j share their mean
        rank_sum_ok += mean_rank * sum(is_ok for _, is_ok in scored[i:j])
        i = j
    n_ok = len(ok)
    return (rank_sum_ok - n_ok * (n_ok + 1) / 2) / (n_ok * len(wrong))


def first_flag(scores: Sequence[float | None], threshold: float) -> int | None:
    """The index of the first step scoring below ``threshold`` (None: none does)."""
    return next((i for i, s in enumerate(scores) if s is not None and s < threshold), None)


def join_steps(steps: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The completion ``"\\n".join(steps)`` and each step's ``(start, end)`` in it."""
    spans, at = [], 0
    for s in steps:
        spans.append((at, at + len(s)))
        at += len(s) + 1
    return "\n".join(steps), spans


def merge_pieces(spans: Sequence[tuple[int, int]], pieces: Sequence[tuple[int, int, float]],
                 neutral: float | None) -> list[float | None]:
    """Each labelled span's score: the lowest score of the verifier steps inside it, not
    counting pieces scored ``neutral``; ``neutral`` when it has no other piece. A piece
    that crosses a span's edge is an error (the join did not keep steps apart)."""
    found: list[list[float]] = [[] for _ in spans]
    for start, end, score in pieces:
        k = next((k for k, (a, b) in enumerate(spans) if a <= start and end <= b), None)
        if k is None:
            raise ValueError(f"verifier step ({start}, {end}) is not inside one labelled step")
        if score != neutral:
            found[k].append(score)
    return [min(f) if f else neutral for f in found]


def inject_wrong_result(answer: str, rng: random.Random) -> tuple[str, int] | None:
    """One annotation's result (and the same number written right after it) moved to a
    nearby wrong value: ``(new text, offset of the changed visible number)``, or None when
    no annotation qualifies."""
    eligible = []
    for m in _ANNOTATION.finditer(answer):
        vis = _VISIBLE.match(answer, m.end())
        if vis and Decimal(vis.group().replace(",", "")) == Decimal(m.group(1).replace(",", "")):
            eligible.append((m, vis))
    if not eligible:
        return None
    m, vis = rng.choice(eligible)
    old = Decimal(m.group(1).replace(",", ""))
    unit = Decimal(1).scaleb(old.as_tuple().exponent)  # 1 for 24, 0.01 for 2.50
    delta = rng.randint(1, 9) * unit
    new = old - delta if rng.random() < 0.5 and old - delta >= 0 else old + delta

    def written(like: str) -> str:
        return f"{new:,}" if "," in like else str(new)

    head = answer[:m.start(1)] + written(m.group(1)) + answer[m.end(1):vis.start()]
    return head + written(vis.group()) + answer[vis.end():], len(head)


def strip_annotations(text: str, at: int = 0) -> tuple[str, int]:
    """``text`` without its ``<<…>>`` annotations, and where the offset ``at`` (outside
    any annotation) lands in it."""
    removed = sum(m.end() - m.start() for m in _ANY_ANNOTATION.finditer(text) if m.end() <= at)
    return _ANY_ANNOTATION.sub("", text), at - removed


def step_at(text: str, offset: int) -> int:
    """The index of the ``split_steps`` line step holding ``offset``."""
    return next(i for i, (a, b) in enumerate(split_steps(text)) if a <= offset < b)


# --- data -----------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bbm_items(data: Path) -> list[Item]:
    items = []
    for r in read_jsonl(data / "bigbench_mistake" / "multistep_arithmetic.jsonl"):
        k = r["mistake_index"]
        labels = [False if k is None or i < k else (True if i == k else None) for i in range(len(r["steps"]))]
        items.append(Item(r["input"], r["steps"], labels, {"first": k}))
    return items


def prm800k_items(data: Path) -> list[Item]:
    items = []
    for r in read_jsonl(data / "prm800k" / "steps_sample.jsonl"):
        labels = [lab == -1 for lab in r["labels"]]
        first = labels.index(True) if True in labels else None
        items.append(Item(r["problem"], r["steps"], labels,
                          {"first": first, "ending": r["ending"], "ratings": r["labels"]}))
    return items


def gsm8k_items(data: Path, seed: int, limit: int) -> dict[str, list[Item]]:
    """Per variant (``annotated``, ``stripped``): the untouched solutions (``clean``) and
    the injected ones (``injected``, each with ``meta["first"]``, the injected step)."""
    rows = read_jsonl(data / "gsm8k" / "test.jsonl")[: limit or None]
    out: dict[str, list[Item]] = {k: [] for k in
                                  ("annotated/clean", "annotated/injected", "stripped/clean", "stripped/injected")}
    for i, row in enumerate(rows):
        q, answer = row["question"], row["answer"]
        for variant, text in (("annotated", answer), ("stripped", strip_annotations(answer)[0])):
            out[f"{variant}/clean"].append(_text_item(q, text, None))
        injected = inject_wrong_result(answer, random.Random(f"{seed}:{i}"))
        if injected is None:
            continue
        text, at = injected
        out["annotated/injected"].append(_text_item(q, text, step_at(text, at)))
        stripped, at = strip_annotations(text, at)
        out["stripped/injected"].append(_text_item(q, stripped, step_at(stripped, at)))
    return out


def math500_items(data: Path) -> list[Item]:
    """MATH-500's gold solutions, one step per line, no step labelled wrong."""
    return [_text_item(r["problem"], r["solution"], None)
            for r in read_jsonl(data / "math" / "math500_test.jsonl")]


def _text_item(prompt: str, text: str, wrong_step: int | None) -> Item:
    steps = [text[a:b] for a, b in split_steps(text)]
    return Item(prompt, steps, [i == wrong_step for i in range(len(steps))], {"first": wrong_step})


# --- running a verifier ---------------------------------------------------------------------


def score_items(judge: Judge, items: Sequence[Item], prompt_template: str) -> list[list[float | None] | None]:
    """Per item, each labelled step's score (None for an item the verifier failed on)."""
    out: list[list[float | None] | None] = []
    for b in range(0, len(items), BATCH):
        batch = items[b:b + BATCH]
        joined = [join_steps(it.steps) for it in batch]
        samples = [Sample(prompt_template.format(problem=it.prompt), text) for it, (text, _) in zip(batch, joined)]
        for (_, spans), result in zip(joined, judge.score(samples)):
            if isinstance(result, Failure) or result is None:
                out.append(None)
            else:
                out.append(merge_pieces(spans, [tuple(s) for s in result], judge.neutral))
    return out


def check_round_trip(items: Sequence[Item]) -> bool:
    """Does ``split_steps`` cut every joined item back into exactly its steps?"""
    for it in items:
        text, spans = join_steps(it.steps)
        if split_steps(text) != spans:
            return False
    return True


# --- metrics --------------------------------------------------------------------------------


def _pct(num: int, den: int) -> str:
    return f"{num / den:.3f} ({num}/{den})" if den else "–"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def step_auroc(items: Sequence[Item], scores: Sequence[list | None]) -> float | None:
    wrong, ok = [], []
    for it, sc in zip(items, scores):
        if sc is None:
            continue
        for label, s in zip(it.labels, sc):
            if label is not None and s is not None:
                (wrong if label else ok).append(s)
    return auroc(wrong, ok)


def first_error_hits(items: Sequence[Item], scores: Sequence[list | None], threshold: float) -> tuple[int, int]:
    """(items whose first flag is ``meta["first"]``, items scored)."""
    pairs = [(it, sc) for it, sc in zip(items, scores) if sc is not None]
    return sum(first_flag(sc, threshold) == it.meta["first"] for it, sc in pairs), len(pairs)


def any_flag(scores: Sequence[list | None], threshold: float) -> tuple[int, int]:
    done = [sc for sc in scores if sc is not None]
    return sum(first_flag(sc, threshold) is not None for sc in done), len(done)


def bbm_rows(items: list[Item], scores: list, judge: Judge) -> dict[str, str]:
    t = judge.threshold
    with_k = [i for i, it in enumerate(items) if it.meta["first"] is not None and scores[i] is not None]
    without = [i for i, it in enumerate(items) if it.meta["first"] is None]
    flags = {i: first_flag(scores[i], t) for i in with_k}
    early = sum(flags[i] is not None and flags[i] < items[i].meta["first"] for i in with_k)
    late = sum(flags[i] is None or flags[i] > items[i].meta["first"] for i in with_k)
    sub = lambda idx: first_error_hits([items[i] for i in idx], [scores[i] for i in idx], t)  # noqa: E731
    return {
        "first-mistake accuracy, all traces": _pct(*first_error_hits(items, scores, t)),
        "  traces with a mistake: exact step": _pct(*sub(with_k)),
        "  … first flag too early": _pct(early, len(with_k)),
        "  … mistake missed (no flag at or before it)": _pct(late, len(with_k)),
        "  traces without a mistake: no flag": _pct(*sub(without)),
        "step AUROC (steps up to the first mistake)": _num(step_auroc(items, scores)),
    }


def prm800k_rows(items: list[Item], scores: list, judge: Judge) -> dict[str, str]:
    t = judge.threshold
    erring = [i for i, it in enumerate(items) if it.meta["first"] is not None]
    solved = [i for i, it in enumerate(items) if it.meta["ending"] == "solution"]
    good = [s for it, sc in zip(items, scores) if sc is not None
            for r, s in zip(it.meta["ratings"], sc) if r == 1]
    claims = [s for sc in scores if sc is not None for s in sc if s is not None and s != judge.neutral]
    steps = sum(len(sc) for sc in scores if sc is not None)
    return {
        "step AUROC (-1 vs 0/+1)": _num(step_auroc(items, scores)),
        "first-error accuracy (items with a -1 step)":
            _pct(*first_error_hits([items[i] for i in erring], [scores[i] for i in erring], t)),
        "false flags: correct solutions with any flag": _pct(*any_flag([scores[i] for i in solved], t)),
        "false flags: +1 steps flagged": _pct(sum(s is not None and s < t for s in good), len(good)),
        "steps with a verdict (not neutral)": _pct(len(claims), steps),
    }


def gsm8k_rows(sets: dict[str, list[Item]], scored: dict[str, list], judge: Judge) -> dict[str, str]:
    t = judge.threshold
    rows = {}
    for variant in ("annotated", "stripped"):
        items, scores = sets[f"{variant}/injected"], scored[f"{variant}/injected"]
        rows[f"{variant}: detection (any step flagged)"] = _pct(*any_flag(scores, t))
        rows[f"{variant}: exact step (first flag = injected line)"] = _pct(*first_error_hits(items, scores, t))
        rows[f"{variant}: false flags on untouched solutions"] = _pct(*any_flag(scored[f"{variant}/clean"], t))
    return rows


def gold_rows(items: list[Item], scores: list, judge: Judge) -> dict[str, str]:
    done = [sc for sc in scores if sc is not None]
    steps = [s for sc in done for s in sc]
    return {
        "solutions with any step flagged": _pct(*any_flag(scores, judge.threshold)),
        "steps flagged": _pct(sum(s is not None and s < judge.threshold for s in steps), len(steps)),
        "steps with a verdict (not neutral)": _pct(sum(s is not None and s != judge.neutral for s in steps),
                                                   len(steps)),
    }


def disagreements(items: list[Item], scores: list, judge: Judge, width: int = 110) -> list[str]:
    """BIG-Bench-Mistake traces where ``judge``'s first flag is not the marked step."""
    lines = [f"### BIG-Bench-Mistake: where {judge.name} and the label disagree", "",
             "| trace | marked | flagged | the flagged step (or the marked one, if none is flagged) |",
             "|---:|---:|---:|---|"]
    for i, (it, sc) in enumerate(zip(items, scores)):
        if sc is None:
            continue
        f, k = first_flag(sc, judge.threshold), it.meta["first"]
        if f != k:
            step = it.steps[f if f is not None else k]
            step = step if len(step) <= width else step[:width - 1] + "…"
            lines.append(f"| {i} | {k} | {f} | `{step}` |")
    return lines + [""]


def table(title: str, judges: Sequence[Judge], columns: Sequence[dict[str, str]], note: str = "") -> list[str]:
    lines = [f"### {title}", ""] + ([note, ""] if note else [])
    lines.append("| metric | " + " | ".join(j.name for j in judges) + " |")
    lines.append("|---|" + "---:|" * len(judges))
    for key in columns[0]:
        lines.append(f"| {key} | " + " | ".join(c[key] for c in columns) + " |")
    return lines + [""]


# --- verifiers ------------------------------------------------------------------------------


def arith_judge(name: str, path: Path | None = None) -> Judge:
    """``arith_steps`` as installed, or the version defined in the file ``path``."""
    if path is None:
        spec = get_verifier("arith_steps")
    else:
        mod_spec = importlib.util.spec_from_file_location(f"_arith_steps_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module  # dataclasses look their module up
        mod_spec.loader.exec_module(module)
        spec = module.ArithSteps.verirl_spec
    return Judge(name, spec.build(), threshold=0.0, neutral=0.0)


def prm_judge(args: argparse.Namespace) -> Judge:
    params = dict(model=args.prm, style=args.prm_style, step_tag=args.step_tag,
                  prompt_separator=args.prompt_separator, max_length=args.prm_max_length, device=args.prm_device)
    return Judge(f"prm ({args.prm})", get_verifier("prm").build(**params),
                 threshold=args.prm_threshold, neutral=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    ap.add_argument("--seed", type=int, default=0, help="GSM8K injection seed")
    ap.add_argument("--gsm8k-limit", type=int, default=0, help="first N GSM8K test rows (0: all)")
    ap.add_argument("--arith-baseline", type=Path, help="also score the arith_steps defined in this file")
    ap.add_argument("--list-disagreements", action="store_true",
                    help="also list the BIG-Bench-Mistake traces where arith_steps and the label disagree")
    ap.add_argument("--prm", help="a process reward model for the prm verifier (dir, hub id or builtin:NAME)")
    ap.add_argument("--prm-style", default="step_token", help="prm param 'style'")
    ap.add_argument("--step-tag", default="auto", help="prm param 'step_tag'")
    ap.add_argument("--prompt-separator", default=" ", help="prm param 'prompt_separator'")
    ap.add_argument("--prm-max-length", type=int, default=4096, help="prm param 'max_length'")
    ap.add_argument("--prm-device", default="auto", help="prm param 'device'")
    ap.add_argument("--prm-threshold", type=float, default=0.5, help="prm flags a step with p below this")
    ap.add_argument("--prompt-template", default="Question: {problem}\nAnswer:",
                    help="the prm prompt, {problem} = the item's problem (default: the tiny models' format)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    judges = []
    if args.arith_baseline:
        judges.append(arith_judge("arith_steps (before)", args.arith_baseline))
    judges.append(arith_judge("arith_steps"))
    if args.prm:
        judges.append(prm_judge(args))

    bbm, prm800k = bbm_items(args.data), prm800k_items(args.data)
    gsm = gsm8k_items(args.data, args.seed, args.gsm8k_limit)
    math500 = math500_items(args.data)
    if not check_round_trip(bbm):
        raise SystemExit("BIG-Bench-Mistake steps do not round-trip through split_steps")
    out = ["## Step verifiers on labelled step data", ""]
    sets = {"bbm": (bbm, bbm_rows), "prm800k": (prm800k, prm800k_rows), "math500": (math500, gold_rows)}
    cols: dict[str, list] = {name: [] for name in [*sets, "gsm8k"]}
    failed, listing = {}, []
    for j in judges:
        t0 = time.perf_counter()
        scored = {name: score_items(j, items, args.prompt_template) for name, (items, _) in sets.items()}
        gsm_s = {k: score_items(j, v, args.prompt_template) for k, v in gsm.items()}
        for name, (items, rows) in sets.items():
            cols[name].append(rows(items, scored[name], j))
        cols["gsm8k"].append(gsm8k_rows(gsm, gsm_s, j))
        failed[j.name] = (sum(s is None for v in [*scored.values(), *gsm_s.values()] for s in v),
                          time.perf_counter() - t0)
        if args.list_disagreements and j.name == "arith_steps":
            listing = disagreements(bbm, scored["bbm"], j)
    n_with = sum(it.meta["first"] is not None for it in bbm)
    out += table(f"BIG-Bench-Mistake multistep arithmetic ({len(bbm)} traces, {n_with} with a marked mistake)",
                 judges, cols["bbm"])
    n_err = sum(it.meta["first"] is not None for it in prm800k)
    n_sol = sum(it.meta["ending"] == "solution" for it in prm800k)
    n_steps = sum(len(it.steps) for it in prm800k)
    out += table(f"PRM800K phase-1 test ({len(prm800k)} items, {n_steps} steps; {n_err} items with a -1 step, "
                 f"{n_sol} correct solutions)", judges, cols["prm800k"])
    out += table(f"GSM8K test, one injected wrong result ({len(gsm['annotated/injected'])} of "
                 f"{len(gsm['annotated/clean'])} solutions have an annotation to change; seed {args.seed})",
                 judges, cols["gsm8k"])
    out += table(f"MATH-500 gold solutions ({len(math500)}, one step per line; no labels: a flag is a false flag "
                 "or a slip in the gold)", judges, cols["math500"])
    for name, (n_failed, secs) in failed.items():
        out.append(f"- {name}: {secs:.1f} s" + (f", {n_failed} items not scored (verifier failure)" if n_failed else ""))
    out += [f"\nwall time {time.perf_counter() - start:.0f} s\n"] + listing
    report = "\n".join(out) + "\n"
    sys.stdout.write(report)
    if args.out:  # the tables alone; the results file adds the command and what they show
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
