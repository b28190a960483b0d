"""``python -m verirl.tiny build [--out DIR] [--steps N]`` rebuilds the tiny model;
``python -m verirl.tiny eval [DIR]`` measures its greedy accuracy and pass@k."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from verirl.tiny import tiny_model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verirl.tiny", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build data, tokenizer and model into a folder")
    b.add_argument("--out", help="output folder (default: the shipped assets, tiny-arith or tiny-steps by --task)")
    b.add_argument("--steps", type=int, help="SFT steps (the main knob of the starting accuracy)")
    b.add_argument("--task", choices=("arith", "steps"), help="arith: 1-2-step tiny-arith; steps: 3-5-step tiny-steps")
    b.add_argument("--seed", type=int)
    b.add_argument("--threads", type=int, help="torch threads (part of what makes the build reproducible)")
    b.add_argument("--n-train", type=int)
    b.add_argument("--n-test", type=int)
    b.add_argument("--premature-frac", type=float, help="share of two-step SFT solutions cut after step one")
    for name, what in (("add", "operands of + and -"), ("small", "the small factor of a product"),
                       ("factor", "the other factor of a product")):
        b.add_argument(f"--{name}-range", type=int, nargs=2, metavar=("LO", "HI"), help=f"{what}, inclusive")
    b.add_argument("--eval", action="store_true", help="measure accuracy after building")

    e = sub.add_parser("eval", help="greedy accuracy and pass@k of a model folder")
    e.add_argument("model_dir", nargs="?", default=str(tiny_model_path()))
    e.add_argument("--data", help="GSM8K-style JSONL (default: MODEL_DIR/test.jsonl)")
    e.add_argument("-k", type=int, default=8)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--limit", type=int, help="only the first N rows")
    e.add_argument("--threads", type=int, default=2)

    args = parser.parse_args(argv)
    import torch  # deferred: `--help` should not pay for it

    from verirl.tiny.build import BuildConfig, build
    from verirl.tiny.evaluate import evaluate_dir

    if args.command == "build":
        overrides = {f.name: getattr(args, f.name) for f in fields(BuildConfig)
                     if getattr(args, f.name, None) is not None}
        overrides.update({k: tuple(v) for k, v in overrides.items() if isinstance(v, list)})
        try:
            cfg = BuildConfig(**overrides)
            if args.out is None:
                args.out = str(tiny_model_path().parent / ("tiny-steps" if cfg.task == "steps" else "tiny-arith"))
            build(args.out, cfg)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.eval:
            print(evaluate_dir(args.out).line())
        return 0
    torch.set_num_threads(args.threads)
    try:
        print(evaluate_dir(args.model_dir, args.data, k=args.k, temperature=args.temperature,
                           limit=args.limit).line())
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
