"""Benchmark: the math_answer verifier against Math-Verify on labelled sets.

The labelled rows come from /work/shared/data (see labelled_sets.py): gold answers of
GSM8K and MATH-500 rewritten into equivalent and non-equivalent forms, wrapped in
model-like completions. For each checker we measure agreement with the labels and
samples/s:

- ``math_answer`` through its real path (entry point, build, sandboxed workers), with
  ``workers=1`` (single process) and with all cores, verdict cache off;
- Math-Verify (``math_verify.parse`` / ``verify``, single process), when installed
  (``pip install "math-verify[antlr4_13_2]"``, the ``bench`` extra).

Both sides parse each distinct gold answer once (Math-Verify's parsed golds are kept in
a dict; math_answer's workers keep an LRU of parsed answers), as in RL training where a
group of completions shares its gold answer.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/verifier_bench.py --limit 300
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_sets import Row, build_sets  # noqa: E402

from verirl import Failure, Sample  # noqa: E402
from verirl.plugins import get_verifier  # noqa: E402
from verirl.sandbox import default_workers  # noqa: E402

BATCH = 256


def time_math_answer(samples: list[Sample], warm_up: list[Sample], **params) -> tuple[list[bool | None], float]:
    """``math_answer``'s verdicts on ``samples`` (None: a failure) and the seconds they
    took, in batches of ``BATCH``, verdict cache off, after ``warm_up`` has started the
    workers outside the clock."""
    verifier = get_verifier("math_answer").build(cache_size=0, timeout=5.0, **params)
    try:
        verifier(warm_up)
        start = time.perf_counter()
        scores = []
        for i in range(0, len(samples), BATCH):
            scores.extend(verifier(samples[i:i + BATCH]))
        elapsed = time.perf_counter() - start
    finally:
        verifier.close()
    return [None if isinstance(s, Failure) or s is None else s == 1.0 for s in scores], elapsed


def run_math_answer(rows: list[Row], workers: int) -> tuple[list[bool | None], float]:
    samples = [Sample("", r.completion, r.gold) for r in rows]
    return time_math_answer(samples, samples[:16], workers=workers)


def run_in_process(rows: list[Row]) -> tuple[list[bool | None], float]:
    """``verirl.grading.judge.is_correct`` in this process with every parse cache cleared
    before each row: the cost of the checking itself, without sandbox or caches."""
    from verirl.grading.judge import is_correct
    from verirl.grading.parse import parse_answer

    start = time.perf_counter()
    verdicts: list[bool | None] = []
    for r in rows:
        parse_answer.cache_clear()
        verdicts.append(is_correct(r.completion, r.gold))
    return verdicts, time.perf_counter() - start


def run_math_verify(rows: list[Row]) -> tuple[list[bool | None], float] | None:
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every timeout
    parse("$1$")  # first-call setup outside the clock
    golds: dict[str, object] = {}
    verdicts: list[bool | None] = []
    start = time.perf_counter()
    for r in rows:
        gold = golds.get(r.gold)
        if gold is None:
            gold = golds[r.gold] = parse(f"${r.gold}$")
        try:
            verdicts.append(bool(verify(gold, parse(r.completion))))
        except Exception as exc:  # a crash is counted as "no verdict" and reported
            logging.warning("math_verify raised %s: %s", type(exc).__name__, exc)
            verdicts.append(None)
    return verdicts, time.perf_counter() - start


def summarize(name: str, rows: list[Row], verdicts: list[bool | None], elapsed: float) -> dict:
    agree = sum(v == r.label for v, r in zip(verdicts, rows))
    pos = [(v, r) for v, r in zip(verdicts, rows) if r.label]
    neg = [(v, r) for v, r in zip(verdicts, rows) if not r.label]
    by_set = {}
    for ds in ("gsm8k", "math"):
        sub = [(v, r) for v, r in zip(verdicts, rows) if r.dataset == ds]
        by_set[ds] = sum(v == r.label for v, r in sub) / max(1, len(sub))
    return {
        "name": name,
        "agreement": agree / len(rows),
        "recall": sum(v is True for v, _ in pos) / max(1, len(pos)),
        "specificity": sum(v is False for v, _ in neg) / max(1, len(neg)),
        "gsm8k": by_set["gsm8k"],
        "math": by_set["math"],
        "failures": sum(v is None for v in verdicts),
        "rate": len(rows) / elapsed,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                    help="folder with gsm8k/test.jsonl and math/math500_test.jsonl")
    ap.add_argument("--limit", type=int, default=300,
                    help="source problems per dataset (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show-misses", type=int, default=10, help="disagreements to print per checker")
    args = ap.parse_args(argv)
    if not (args.data / "gsm8k" / "test.jsonl").exists():
        print(f"no data at {args.data}: pass --data DIR holding gsm8k/ and math/", file=sys.stderr)
        return 2
    rows = build_sets(args.data, args.limit or None, args.seed)
    counts = Counter((r.dataset, r.label) for r in rows)
    print(f"{len(rows)} labelled rows: " + ", ".join(
        f"{ds} {'equivalent' if lab else 'different'} {n}" for (ds, lab), n in sorted(counts.items())))

    results = []
    verdicts, secs = run_math_answer(rows, workers=1)
    results.append((summarize("math_answer (workers=1)", rows, verdicts, secs), verdicts))
    cores = default_workers()
    verdicts, secs = run_math_answer(rows, workers=0)
    results.append((summarize(f"math_answer (workers={cores})", rows, verdicts, secs), verdicts))
    verdicts, secs = run_in_process(rows)
    results.append((summarize("verirl.grading.judge in-process, no caches", rows, verdicts, secs), verdicts))
    mv = run_math_verify(rows)
    if mv is None:
        print("Math-Verify is not installed (pip install 'math-verify[antlr4_13_2]'): "
              "skipping the comparison", file=sys.stderr)
    else:
        results.append((summarize("Math-Verify (1 process)", rows, *mv), mv[0]))

    mv_stats = results[-1][0] if mv is not None else None
    print()
    print("| checker | agreement | GSM8K | MATH | recall (equiv.) | specificity (diff.) "
          "| no verdict | samples/s | speed vs Math-Verify |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stats, _ in results:
        ratio = f"{stats['rate'] / mv_stats['rate']:.1f}x" if mv_stats else "n/a"
        print(f"| {stats['name']} | {stats['agreement']:.4f} | {stats['gsm8k']:.4f} | "
              f"{stats['math']:.4f} | {stats['recall']:.4f} | {stats['specificity']:.4f} | "
              f"{stats['failures']} | {stats['rate']:.0f} | {ratio} |")
    if args.show_misses:
        for stats, verdicts in results:
            misses = [(v, r) for v, r in zip(verdicts, rows) if v != r.label]
            print(f"\n{stats['name']}: {len(misses)} disagreements"
                  + (f", first {min(len(misses), args.show_misses)}:" if misses else ""))
            for v, r in misses[:args.show_misses]:
                print(f"  [{r.dataset}/{r.rule}] gold {r.gold!r} candidate {r.candidate!r} "
                      f"label {r.label} verdict {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
