"""The command line: ``verirl train | eval | verifiers | verify``.

Exit status: 0 on success, 2 on a usage or config error (message on stderr naming what
is wrong), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from verirl.verifier import ConfigError

# Shortcuts for `verirl eval --data`: the public copies on the Hugging Face hub.
EVAL_SETS = {
    "gsm8k": "hf:openai/gsm8k:main:test",
    "math500": "hf:HuggingFaceH4/MATH-500::test",
}


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 by itself; keep one path
        raise UsageError(f"{self.prog}: {message}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verirl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from verirl import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verirl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"verirl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a policy with GRPO (or PPO) from a YAML config")
    train.add_argument("config", nargs="?", help="YAML config (see configs/)")
    train.add_argument("overrides", nargs="*", help="optional dotted overrides, e.g. train.steps=10 algo.beta=0")

    ev = sub.add_parser("eval", help="accuracy (pass@1, pass@k, maj@k) of a model on a dataset")
    ev.add_argument("--model", required=True, help="model directory, hub id, or builtin:tiny-arith")
    ev.add_argument("--data", required=True, help=f"JSONL path, hf:NAME[:CONFIG[:SPLIT]], or one of {sorted(EVAL_SETS)}")
    ev.add_argument("--format", default="auto", choices=["auto", "gsm8k", "math", "plain"])
    ev.add_argument("--n", type=int, default=1, help="samples per problem")
    ev.add_argument("--k", default="1", help="comma-separated k for pass@k and maj@k (k ≤ n)")
    ev.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) if n=1, else 1.0")
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="generation limit (default 512); capped at what the model's positions leave after the prompt")
    ev.add_argument("--limit", type=int, default=0, help="evaluate the first N problems (0: all)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--prompt-template", default=None, help="e.g. 'Question: {question}\\nAnswer:' (default: chat template)")
    ev.add_argument("--question-field", default=None, help="column holding the question (default: question/problem/prompt/query)")
    ev.add_argument("--answer-field", default=None, help="column holding the gold answer (default: answer/solution/gold/target)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", default=None, help="write per-problem completions and correctness as JSONL")
    ev.add_argument("--grading", default="train", choices=["train", "eval"],
                    help="math_answer's grading preset: train (strict, the default, as in training) or eval "
                         "(lenient: relative tolerance, units ignored, as published evaluations grade)")

    ab = sub.add_parser("ablate", help="run an ablation (arms × seeds) and write ablation.md and ablation.png")
    ab.add_argument("config", help="ablation YAML: base config, seeds, arms (see configs/ablation_tiny.yaml)")
    ab.add_argument("--out", default=None, help="output folder (default: runs/ablate_<config name>)")
    ab.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ab.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ab.add_argument("--report-only", action="store_true", help="re-read the finished runs, run nothing")

    sub.add_parser("verifiers", help="list the registered verifiers")

    cf = sub.add_parser("config", help="print a config as YAML with each key's meaning (--defaults: the defaults)")
    cf.add_argument("config", nargs="?", help="YAML config to resolve (default: none, i.e. the defaults)")
    cf.add_argument("overrides", nargs="*", help="dotted overrides, as for train")
    cf.add_argument("--defaults", action="store_true", help="print the full default config")

    pl = sub.add_parser("plot", help="PNG curves of one or more runs (needs matplotlib: pip install 'verirl[plot]')")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (train.output_dir), overlaid")
    pl.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png for one run, curves.png for several)")
    pl.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                    help="metrics to plot, one panel each; shell-style patterns allowed, e.g. 'reward/*' "
                         "(default: reward, eval accuracy, KL, clip fraction, entropy, length, zero-std fraction, step time)")
    pl.add_argument("--x", choices=["step", "samples"], default="step", help="x axis: training step or samples seen")
    pl.add_argument("--smooth", type=int, default=None,
                    help="rolling-mean window in steps for per-step curves (default: about 1/25 of the run; 1: raw)")

    vf = sub.add_parser("verify", help="score completions in a JSONL file")
    vf.add_argument("input", help="JSONL: each line holds 'completion' and 'answer' (other fields pass through)")
    group = vf.add_mutually_exclusive_group()
    group.add_argument("--rewards", help="rewards YAML: a list of {verifier: NAME, weight: W, params...}")
    group.add_argument("--verifier", action="append", help="a verifier name (repeatable), weight 1 each")
    vf.add_argument("--out", help="output JSONL (default: stdout)")
    vf.add_argument("--batch-size", type=int, default=256)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        handler = {"train": cmd_train, "eval": cmd_eval, "verifiers": cmd_verifiers, "verify": cmd_verify,
                   "ablate": cmd_ablate, "config": cmd_config, "plot": cmd_plot}[args.command]
        return handler(args)
    except SystemExit as exc:  # --version, --help
        return exc.code if isinstance(exc.code, int) else 0
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # report, don't dump a traceback on users; exit 1
        logging.getLogger("verirl").debug("failure", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_train(args: argparse.Namespace) -> int:
    from verirl.config import load_config
    from verirl.report import run_summary
    from verirl.trainer import Trainer, TrainingAborted

    if args.config is None:
        raise UsageError("verirl train needs a config file, e.g. `verirl train configs/tiny.yaml` "
                         "(then any key=value overrides)")
    if "=" in args.config and not Path(args.config).exists():
        raise UsageError(f"verirl train: the first argument is the config file, got {args.config!r}; "
                         f"e.g. `verirl train configs/tiny.yaml {args.config}`")
    start = time.perf_counter()
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config)
    first_step = trainer.step
    main = trainer.dist.is_main  # under torchrun rank 0 alone prints
    try:
        trainer.train()
    except TrainingAborted as exc:
        if main:
            print(run_summary(config.train.output_dir, time.perf_counter() - start, first_step), file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if main:
        print(run_summary(config.train.output_dir, time.perf_counter() - start, first_step), file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from verirl.config import Config, load_config
    from verirl.config_reference import commented_yaml

    if args.defaults and (args.config or args.overrides):
        raise UsageError("verirl config --defaults prints the defaults alone; leave out the config and overrides")
    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path and not Path(path).exists():  # `verirl config train.steps=5`
        path, overrides = None, [path, *overrides]
    config = Config() if args.defaults else load_config(path, overrides)
    print(commented_yaml(config), end="")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("verirl plot needs matplotlib: pip install 'verirl[plot]' (or matplotlib)")
    from verirl.plotting import plot_runs, read_run, run_names

    dirs = [Path(r) for r in args.runs]
    for d in dirs:
        if not (d / "metrics.jsonl").exists():
            raise UsageError(f"{d} is not a run directory: it has no metrics.jsonl (a train.output_dir holds one)")
    runs = {name: read_run(d) for name, d in zip(run_names(dirs), dirs)}
    out = Path(args.out) if args.out else (dirs[0] / "curves.png" if len(dirs) == 1 else Path("curves.png"))
    plot_runs(runs, keys=args.keys, x=args.x, out=out, smooth=args.smooth)
    print(out)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from verirl.ablate import run_ablation

    if args.jobs < 1 or args.threads < 1:
        raise UsageError("--jobs and --threads must be ≥ 1")
    start = time.perf_counter()
    report = run_ablation(args.config, args.out, jobs=args.jobs, threads=args.threads, report_only=args.report_only)
    print(report.read_text())
    print(f"written: {report}, {report.with_name('ablation.png')} ({time.perf_counter() - start:.0f} s)",
          file=sys.stderr)
    return 0


def cmd_verifiers(args: argparse.Namespace) -> int:
    from verirl.plugins import verifiers

    registry = verifiers()
    if not registry:
        print("no verifiers registered (is verirl installed? `pip install -e .`)", file=sys.stderr)
        return 1
    for name, spec in sorted(registry.items()):
        print(f"{name}  [{spec.kind}]  plugin: {spec.plugin}")
        if spec.doc:
            print(f"    {spec.doc}")
        for param in spec.params:
            print(f"    {param.describe()}")
    return 0


def _read_verify_input(path: Path) -> list[dict[str, Any]]:
    from verirl.data import read_jsonl

    if not path.exists():
        raise UsageError(f"input file not found: {path}")
    rows = read_jsonl(path)
    for index, row in enumerate(rows):
        if not isinstance(row.get("completion"), str) or "answer" not in row:
            raise UsageError(f"{path} row {index}: each line must hold a string 'completion' and an 'answer'")
    return rows


def cmd_verify(args: argparse.Namespace) -> int:
    from verirl.rewards import RewardFunction, load_rewards, parse_rewards
    from verirl.verifier import Sample

    if args.rewards:
        terms = load_rewards(args.rewards)
    else:
        terms = parse_rewards([{"verifier": name} for name in (args.verifier or ["math_answer"])], source="--verifier")
    rows = _read_verify_input(Path(args.input))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    start = time.perf_counter()
    total_reward = 0.0
    try:
        with RewardFunction(terms) as reward_fn:
            for i in range(0, len(rows), args.batch_size):
                chunk = rows[i : i + args.batch_size]
                samples = [
                    Sample(prompt=str(r.get("prompt", "")), completion=r["completion"], answer=str(r["answer"]),
                           row={k: v for k, v in r.items() if k not in ("prompt", "completion", "answer")},
                           num_tokens=r.get("num_tokens"), max_tokens=r.get("max_tokens"))
                    for r in chunk
                ]
                scored = reward_fn(samples)
                for row, reward, scores in zip(chunk, scored.rewards, scored.scores):
                    total_reward += reward
                    record = dict(row, reward=reward, scores={
                        k: [list(s) for s in v] if isinstance(v, list) else v for k, v in scores.items()
                    })
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            totals = reward_fn.totals
    finally:
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - start
    n = len(rows)
    summary = {
        "count": n,
        "mean_reward": total_reward / n if n else 0.0,
        "timeouts": sum(c["timeout"] for c in totals.values()),
        "errors": sum(c["error"] for c in totals.values()),
        "samples_per_s": n / seconds if seconds > 0 else 0.0,
        "per_verifier": totals,
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from verirl.cpu_memory import keep_freed_memory
    from verirl.data import build_prompt, load_problems
    from verirl.evaluation import evaluate
    from verirl.models import check_model_source, load_causal_lm, load_tokenizer, pick_device
    from verirl.rewards import RewardFunction, RewardTerm
    from verirl.rollout import make_engine

    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {args.k!r}") from None
    if not ks or min(ks) < 1 or max(ks) > args.n:
        raise UsageError(f"--k values must be between 1 and --n ({args.n}), got {args.k!r}")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    if args.n > 1 and temperature == 0:
        raise UsageError("--n > 1 needs sampling: set --temperature > 0")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be ≥ 1, got {args.max_new_tokens}")
    check_model_source(args.model, what="--model")
    problems = load_problems(EVAL_SETS.get(args.data, args.data), args.format, args.question_field,
                             args.answer_field, field_hint="--{what}-field", key="--data")
    if args.limit:
        problems = problems[: args.limit]
    device = pick_device(args.device, what="--device")
    keep_freed_memory(device)  # as training does: no page faults on each batch's fresh KV buffers
    tokenizer = load_tokenizer(args.model, what="--model")
    model = load_causal_lm(args.model, "bfloat16" if device.type == "cuda" else "float32", device, what="--model")
    model.eval()
    engine = make_engine("hf", model, tokenizer)
    prompts = [build_prompt(tokenizer, p.question, args.prompt_template, None) for p in problems]
    max_new_tokens = _eval_token_limit(args.max_new_tokens, model, tokenizer, prompts)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(problems), desc="verirl eval", unit="problem", file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
    start = time.perf_counter()
    try:
        with RewardFunction([RewardTerm("math_answer", params={"preset": args.grading})]) as reward_fn:
            extract = _answer_extractor()
            with torch.no_grad():
                result = evaluate(engine, problems, prompts, lambda s: reward_fn(s).rewards, n=args.n,
                                  temperature=temperature, top_p=args.top_p, max_new_tokens=max_new_tokens,
                                  batch_size=args.batch_size, ks=ks, extract=extract,
                                  on_batch=progress.update if progress is not None else None)
    finally:
        if progress is not None:
            progress.close()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            for p, texts, flags in zip(problems, result.completions, result.correct):
                fh.write(json.dumps({"question": p.question, "answer": p.answer, "completions": texts, "correct": flags}) + "\n")
    metrics = {"problems": len(problems), "n": args.n, "temperature": temperature, "max_new_tokens": max_new_tokens,
               "grading": args.grading,
               **result.metrics, "seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(metrics))
    return 0


EVAL_MAX_NEW_TOKENS = 512  # --max-new-tokens when not given, before the model's cap


def _eval_token_limit(asked: int | None, model: Any, tokenizer: Any, prompts: list[str]) -> int:
    """``--max-new-tokens`` (default 512), capped at the positions the model has left after
    the longest prompt; a cap on an explicit value is reported."""
    from verirl.models import position_limit

    wanted = asked if asked is not None else EVAL_MAX_NEW_TOKENS
    limit = position_limit(model)
    if limit is None or not prompts:
        return wanted
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    room = limit - longest
    if room < 1:
        raise UsageError(f"the longest prompt takes {longest} tokens, and the model has only {limit} positions")
    if wanted > room:
        if asked is not None:
            print(f"note: --max-new-tokens {asked} capped at {room}: the model has {limit} positions and the "
                  f"longest prompt takes {longest}", file=sys.stderr)
        return room
    return wanted


def _answer_extractor() -> Any:
    """The answer extractor for maj@k: verirl.grading.extract.extract_answer when available."""
    try:
        from verirl.grading.extract import extract_answer
    except ImportError:
        return None
    return extract_answer


if __name__ == "__main__":
    sys.exit(main())
