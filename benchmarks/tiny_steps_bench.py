"""Before-training figures of a tiny step-credit model (``verirl/assets/tiny-steps``):
greedy accuracy, pass@k at temperature 1, and how often its greedy solutions make a
wrong intermediate calculation (``arith_steps`` verdicts per line).

    OMP_NUM_THREADS=1 python benchmarks/tiny_steps_bench.py [MODEL_DIR] [--limit N] [-k 8]

Columns: ``wrong_step_rate`` = wrong lines / lines with a checkable claim, over the
greedy completions; ``any_wrong`` = share of greedy completions with at least one wrong
line; ``wrong_but_right`` = share whose final answer is right despite a wrong line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verirl.tiny.evaluate import complete, final_number
from verirl.tiny.tasks import gold_number, read_jsonl
from verirl.verifiers.arith_steps import step_verdicts

DEFAULT = Path(__file__).resolve().parent.parent / "verirl" / "assets" / "tiny-steps"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?", default=str(DEFAULT))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    problems = read_jsonl(Path(args.model_dir) / "test.jsonl")[:args.limit]
    model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    qs, golds = [p["question"] for p in problems], [gold_number(p["answer"]) for p in problems]
    greedy = [g[0] for g in complete(model, tok, qs, max_new_tokens=args.max_new_tokens)]
    samples = complete(model, tok, qs, num_samples=args.k, temperature=1.0, max_new_tokens=args.max_new_tokens)
    ok = [eos and final_number(t) == g for (t, eos), g in zip(greedy, golds)]
    lines = wrong = any_wrong = wrong_but_right = 0
    for (text, _), right in zip(greedy, ok):
        verdicts = [v for _, _, v in step_verdicts(text)]
        lines += sum(v != "neutral" for v in verdicts)
        w = verdicts.count("wrong")
        wrong += w
        any_wrong += w > 0
        wrong_but_right += w > 0 and right
    n = len(problems)
    pass_k = sum(any(e and final_number(t) == g for t, e in s) for s, g in zip(samples, golds)) / n
    print(f"n={n} greedy={sum(ok) / n:.3f} pass@{args.k}(T=1)={pass_k:.3f} "
          f"wrong_step_rate={wrong / max(lines, 1):.3f} any_wrong={any_wrong / n:.3f} "
          f"wrong_but_right={wrong_but_right / n:.3f} ({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
