"""``python -m verirl.tiny build [--out DIR] [--steps N]`` rebuilds the tiny model;
``python -m verirl.tiny prm [--out DIR]`` builds tiny-steps' process reward model;
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

    r = sub.add_parser("prm", help="build the tiny process reward model for tiny-steps (verirl.tiny.prm)")
    r.add_argument("--out", help="output folder (default: the shipped assets' tiny-steps-prm)")
    r.add_argument("--policy", help="tiny-steps policy folder to start from (default: the shipped tiny-steps)")
    r.add_argument("--steps", type=int, help="training steps")
    r.add_argument("--seed", type=int)
    r.add_argument("--threads", type=int)
    r.add_argument("--n-eval", type=int, help="held-out test problems scored after training")
    r.add_argument("--lr", type=float, help="peak AdamW learning rate")
    r.add_argument("--labels", choices=("prefix", "local"), help="step labels: still on the gold path, or this step right")
    r.add_argument("--dense", action=argparse.BooleanOptionalAction, default=None,
                   help="label every completion token, not only line ends (prefix labels; default on)")

    args = parser.parse_args(argv)
    import torch  # deferred: `--help` should not pay for it

    from verirl.tiny.build import BuildConfig, build
    from verirl.tiny.evaluate import evaluate_dir

    if args.command == "prm":
        from verirl.tiny.prm import PRMBuildConfig, build_prm

        overrides = {f.name: getattr(args, f.name) for f in fields(PRMBuildConfig)
                     if getattr(args, f.name, None) is not None}
        try:
            build_prm(args.out or str(tiny_model_path().parent / "tiny-steps-prm"), PRMBuildConfig(**overrides))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
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
