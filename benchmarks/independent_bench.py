"""Benchmark: math_answer against labels written by other graders, side by side with Math-Verify.

The rows are the labelled (gold, prediction, verdict) cases extracted from Math-Verify's
tests, Qwen2.5-Math's graded samples and lm-evaluation-harness's normalisers by
``extract_labelled_cases.py`` (see ``data/README.md``); the labels are theirs. In one
run, on the same rows:

- ``math_answer`` through its real path (entry point, build, sandboxed workers,
  ``workers=1``: single process, verdict cache off), once per preset (``train``, the
  strict default, and ``eval``, the lenient one);
- Math-Verify 0.9 (``pip install 'math-verify[antlr4_13_2]'``), single process, called the
  way each row's source calls it: Math-Verify's own rows with the options their test
  passes, the other rows with ``verify(parse(gold), parse(completion))``.

For each checker: agreement with the labels per source, and samples/s. Every row where
``math_answer`` disagrees with the label is listed; a disagreement the written grading
policy makes on purpose is "explained" by the entry for its row in
``data/explained.json`` (the policy rule it follows and why), the others are misses.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/independent_bench.py
    OMP_NUM_THREADS=1 python benchmarks/independent_bench.py --out benchmarks/results/independent_bench.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from verifier_bench import time_math_answer  # noqa: E402

from verirl import Sample  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SOURCES = ("math_verify", "qwen25_math", "lm_eval")
# (completion, gold) pairs run through each checker before its clock starts, so that
# neither pays its one-time lazy imports and caches inside the timing; not benchmark rows
WARM_UP = [
    ("so \\boxed{\\frac{\\cos x}{\\sin x}}", "\\cot x"), ("\\boxed{0.3333}", "\\frac{1}{3}"),
    ("\\boxed{[1, 2)}", "(1, 2]"), ("\\boxed{(x+1)^2}", "x^2+2x+1"), ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
    ("$x > 5$", "(5, \\infty)"), ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "(1, 2)"),
    ("The answer is 12 apples.", "12"), ("\\boxed{\\{1, 2\\}}", "1, 2"), ("\\boxed{y = 2x + 3}", "y=3+2x"),
]


def load_rows(data: Path) -> list[dict]:
    """Every labelled row of the sources, in order; their ids must be unique."""
    rows = []
    for name in SOURCES:
        with (data / f"{name}.jsonl").open(encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    repeated = sorted(k for k, n in Counter(r["id"] for r in rows).items() if n > 1)
    if repeated:
        raise ValueError(f"row ids in {data} must be unique; repeated: {repeated}")
    return rows


def load_explained(data: Path) -> dict[str, dict[str, dict]]:
    """``explained.json``: per preset, ``{row id: {"rule": ..., "why": ...}}`` (empty if absent)."""
    path = data / "explained.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def unexplained(verdicts: list, rows: list[dict], explained: dict) -> tuple[list[str], list[str]]:
    """The ids of the rows whose verdict differs from the label with no explanation
    (misses), and of the explained rows whose verdict now agrees (stale explanations)."""
    misses = [r["id"] for v, r in zip(verdicts, rows) if v != r["expected"] and r["id"] not in explained]
    agreeing = {r["id"] for v, r in zip(verdicts, rows) if v == r["expected"]}
    return misses, sorted(k for k in explained if k in agreeing)


def run_math_answer(rows: list[dict], **params) -> tuple[list[bool | None], float]:
    samples = [Sample(r.get("question", ""), r["prediction"], r["gold"]) for r in rows]
    return time_math_answer(samples, [Sample("", c, g) for c, g in WARM_UP], workers=1, **params)


def _math_verify_call(row: dict, mv) -> bool:
    parse, verify, latex_cfg, expr_cfg = mv
    if row["source"] == "math_verify" and row["call"] == "compare_strings":
        opts = row["options"]
        targets = [latex_cfg(boxed_match_priority=0) if t == "latex" else expr_cfg()
                   for t in opts["match_types"]]
        return bool(verify(parse(row["gold"], targets), parse(row["prediction"], targets),
                           float_rounding=opts["precision"], strict=opts["strict"],
                           allow_set_relation_comp=opts["allow_set_relation_comp"]))
    gold = row["gold"] if row["source"] == "math_verify" else f"${row['gold']}$"
    return bool(verify(parse(gold), parse(row["prediction"])))


def run_math_verify(rows: list[dict]) -> tuple[list[bool | None], float] | None:
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except ImportError:
        return None
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout
    mv = (parse, verify, LatexExtractionConfig, ExprExtractionConfig)
    for completion, gold in WARM_UP:  # first-call setup outside the clock
        verify(parse(f"${gold}$"), parse(completion))
    verdicts: list[bool | None] = []
    start = time.perf_counter()
    for row in rows:
        try:
            verdicts.append(_math_verify_call(row, mv))
        except Exception as exc:  # a crash is "no verdict", counted in the table
            logging.warning("math_verify raised %s on %s: %s", type(exc).__name__, row["id"], exc)
            verdicts.append(None)
    return verdicts, time.perf_counter() - start


def agreement_table(results: list[tuple[str, list, float]], rows: list[dict]) -> list[str]:
    lines = ["| checker | " + " | ".join(f"{s} ({sum(r['source'] == s for r in rows)})" for s in SOURCES)
             + f" | all ({len(rows)}) | no verdict | samples/s |",
             "|---|" + "---:|" * (len(SOURCES) + 3)]
    for name, verdicts, secs in results:
        cells = []
        for s in SOURCES:
            idx = [i for i, r in enumerate(rows) if r["source"] == s]
            cells.append(f"{sum(verdicts[i] == rows[i]['expected'] for i in idx) / len(idx):.3f}")
        agree = sum(v == r["expected"] for v, r in zip(verdicts, rows)) / len(rows)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {agree:.3f} | "
                     f"{sum(v is None for v in verdicts)} | {len(rows) / secs:.0f} |")
    return lines


def _short(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else "…" + text[-(n - 1):]


def disagreements(name: str, verdicts: list, rows: list[dict], explained: dict) -> tuple[list[str], int]:
    lines = []
    by_rule: dict[str, int] = defaultdict(int)
    for v, r in zip(verdicts, rows):
        if v == r["expected"]:
            continue
        note = explained.get(r["id"])
        if note is None:
            why = "**miss**"
        else:
            by_rule[note["rule"]] += 1
            why = f"{note['rule']}: {note['why']}"
        lines.append(f"| `{r['id']}` | `{_short(r['gold'], 50)}` | `{_short(r['prediction'])}` | "
                     f"{r['expected']} | {v} | {why} |")
    missed, stale = unexplained(verdicts, rows, explained)
    misses = len(missed)
    head = [f"\n### {name}: {len(lines)} disagreements, {len(lines) - misses} explained by policy, {misses} misses\n",
            f"Agreement counting the explained rows as agreeing: "
            f"{(len(rows) - misses) / len(rows):.3f}.\n"]
    if stale:
        head.append("Explanations for rows that now agree (to remove from explained.json): "
                    + ", ".join(f"`{k}`" for k in stale) + "\n")
    if by_rule:
        head.append("By rule: " + ", ".join(f"{k} {n}" for k, n in sorted(by_rule.items())) + "\n")
    if lines:
        head += ["| row | gold | prediction | label | verdict | why |", "|---|---|---|---|---|---|"]
    return head + lines, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    ap.add_argument("--presets", nargs="+", default=["train", "eval"])
    args = ap.parse_args(argv)
    rows = load_rows(args.data)
    explained = load_explained(args.data)
    start = time.perf_counter()
    results = []
    for preset in args.presets:
        verdicts, secs = run_math_answer(rows, preset=preset)
        results.append((f"math_answer preset={preset} (workers=1)", verdicts, secs))
    mv = run_math_verify(rows)
    if mv is None:
        print("Math-Verify is not installed (pip install 'math-verify[antlr4_13_2]'): "
              "skipping the comparison", file=sys.stderr)
    else:
        results.append(("Math-Verify 0.9 (1 process)", *mv))
    out = ["## Agreement with each source's labels", ""] + agreement_table(results, rows)
    if mv is not None:
        rate = {name: len(rows) / secs for name, _, secs in results}
        mv_rate = rate["Math-Verify 0.9 (1 process)"]
        out.append("")
        out += [f"- {name}: {r / mv_rate:.1f}× Math-Verify's samples/s" for name, r in rate.items()
                if not name.startswith("Math-Verify")]
    total_misses = 0
    for name, verdicts, _ in results:
        if name.startswith("Math-Verify"):
            continue
        preset = name.split("preset=")[1].split()[0]
        lines, misses = disagreements(name, verdicts, rows, explained.get(preset, {}))
        total_misses += misses
        out += lines
    out.append(f"\nwall time {time.perf_counter() - start:.0f} s")
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
