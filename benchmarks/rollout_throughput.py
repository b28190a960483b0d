"""Rollout throughput: generated tokens per second of verirl's engines on the same prompts.

    python benchmarks/rollout_throughput.py                       # tiny model, CPU, 1 thread
    python benchmarks/rollout_throughput.py --model Qwen/Qwen2.5-0.5B-Instruct \\
        --data ../shared/data/gsm8k/test.jsonl --prompts 64 --group-size 8 --max-new-tokens 256

For one model, ``B`` prompts (the first ``--prompts`` of ``--data``, rendered as the
trainer renders them; ``--prompt-tokens N`` cuts or repeats each question so every prompt
is N tokens), ``G`` samples each, up to ``--max-new-tokens`` tokens, it times one batch of
``B·G`` completions per engine:

- ``hf-loop``: the HF engine's lean decode loop (``rollout.hf_decoder: loop``, the default);
- ``hf-generate``: the HF engine on transformers ``generate`` (``rollout.hf_decoder: generate``);
- ``vllm``: verirl's vLLM engine (needs vLLM and a CUDA GPU), as the trainer calls it;
- ``vllm-offline``: the same ``vllm.LLM`` called directly with the same token prompts and
  ``SamplingParams`` (vLLM's own offline throughput, the ceiling for ``vllm``).

Rounds alternate the engines (one untimed warm-up each first); the table gives each
engine's median seconds per batch, generated tokens per second, and the ratio to the
fastest. The HF engines run on ``--device`` (``auto``: CUDA when there is one). Engines
that cannot run here are listed with the reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("hf-loop", "hf-generate", "vllm", "vllm-offline")


def load_prompts(args: argparse.Namespace, tokenizer: Any) -> list[str]:
    from verirl.data import build_prompt, load_problems

    problems = load_problems(args.data, "auto", None, None)[: args.prompts]
    if len(problems) < args.prompts:
        raise SystemExit(f"error: {args.data} holds {len(problems)} problems; --prompts asks for {args.prompts}")
    prompts = [build_prompt(tokenizer, p.question, None, None) for p in problems]
    if not args.prompt_tokens:
        return prompts
    fixed = []
    for p in problems:  # repeat the question until the rendered prompt reaches N tokens, then cut it there
        question = p.question
        while len(tokenizer(build_prompt(tokenizer, question, None, None), add_special_tokens=False).input_ids) < args.prompt_tokens:
            question = question + " " + p.question
        ids = tokenizer(build_prompt(tokenizer, question, None, None), add_special_tokens=False).input_ids
        fixed.append(tokenizer.decode(ids[: args.prompt_tokens]))
    return fixed


def timed_rounds(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, dict[str, float]]:
    """Each engine once untimed, then ``repeats`` alternating timed rounds; median
    seconds and generated tokens per batch. Every engine starts round r from seed r, so
    engines that sample alike (the hf-loop variants) decode the same completions."""
    import torch

    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[int]] = {name: [] for name in runs}
    for r in range(repeats):
        for name, run in runs.items():
            torch.manual_seed(r)
            start = time.perf_counter()
            n = run()
            seconds[name].append(time.perf_counter() - start)
            tokens[name].append(n)
    out = {}
    first = next(iter(runs))
    for name in runs:
        s, n = statistics.median(seconds[name]), statistics.median(tokens[name])
        # against the first engine, round by round: both ran back to back from the same
        # seed, so a load spike hits both and the median difference is the steadier figure
        paired = statistics.median(a - b for a, b in zip(seconds[name], seconds[first]))
        out[name] = {"s_per_batch": s, "tokens_per_batch": n, "tokens_per_s": n / s,
                     "s_min": min(seconds[name]), "s_max": max(seconds[name]), "paired_delta_s": paired}
    return out


#: ``--loop-ablation``: hf-loop with one of its savings turned off (HFEngine's switches)
LOOP_ABLATION = {
    "hf-loop, mask built by the model": {"ready_masks": False},
    "hf-loop, concatenating KV cache": {"preallocate": False},
}


def hf_runs(model: Any, tokenizer: Any, prompts: list[str], sampling: Any, engines: Sequence[str],
            compact_fracs: Sequence[float], loop_ablation: bool = False) -> dict[str, Callable[[], int]]:
    """The HF engine's runs: ``hf-loop`` once per ``compact_fracs`` value (named
    ``hf-loop@f`` when there are several), with ``loop_ablation`` also once per entry of
    :data:`LOOP_ABLATION`; ``hf-generate``."""
    from verirl.rollout.hf import HFEngine

    engines_here = {}
    for name in engines:
        if name == "hf-loop":
            for frac in compact_fracs:
                label = name if len(compact_fracs) == 1 else f"{name}@{frac:g}"
                engines_here[label] = HFEngine(model, tokenizer, decoder="loop", compact_frac=frac)
            if loop_ablation:
                for label, switches in LOOP_ABLATION.items():
                    engines_here[label] = HFEngine(model, tokenizer, decoder="loop", compact_frac=compact_fracs[0],
                                                   **switches)
        elif name == "hf-generate":
            engines_here[name] = HFEngine(model, tokenizer, decoder="generate")
    return {name: (lambda e: lambda: int(e.generate(prompts, sampling).completion_mask.sum()))(engine)
            for name, engine in engines_here.items()}


def vllm_runs(args: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[str], sampling: Any,
              engines: Sequence[str]) -> tuple[dict[str, Callable[[], int]], str | None]:
    """The vLLM runs, or why there are none here."""
    wanted = [e for e in engines if e.startswith("vllm")]
    if not wanted:
        return {}, None
    from verirl.data import resolve_path
    from verirl.rollout.vllm_engine import VLLMEngine, check_vllm
    from verirl.verifier import ConfigError

    try:
        check_vllm(args.weight_sync)
    except ConfigError as exc:
        return {}, str(exc)
    from vllm import SamplingParams

    engine = VLLMEngine(model, tokenizer, model_path=str(resolve_path(args.model)), dtype=args.dtype, seed=0,
                        gpu_memory_utilization=args.gpu_memory_utilization, sleep_level=0,
                        weight_sync=args.weight_sync, enforce_eager=args.enforce_eager)
    token_prompts = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False).input_ids} for p in prompts]
    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_new_tokens, logprobs=0, stop_token_ids=list(engine.eos_ids),
                            detokenize=False)

    def offline() -> int:
        outputs = engine.llm.generate(token_prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    runs = {}
    if "vllm" in wanted:
        runs["vllm"] = lambda: int(engine.generate(prompts, sampling).completion_mask.sum())
    if "vllm-offline" in wanted:
        runs["vllm-offline"] = offline
    return runs, None


def markdown_table(results: dict[str, dict[str, float]], skipped: dict[str, str], header: dict[str, Any]) -> str:
    best = max((r["tokens_per_s"] for r in results.values()), default=0.0)
    first = next(iter(results), "")
    lines = [f"| engine | s / batch (median) | range | Δ s vs {first} (median of rounds) | generated tokens / batch "
             "| tokens / s | vs fastest |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['s_per_batch']:.3f} | {r['s_min']:.3f}–{r['s_max']:.3f} | "
                     f"{r['paired_delta_s']:+.3f} | {r['tokens_per_batch']:.0f} | {r['tokens_per_s']:.0f} | "
                     f"{r['tokens_per_s'] / best:.2f} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | n/a | | | | | {why[:90]} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny-arith", help="model id, local path or builtin:NAME")
    p.add_argument("--data", default="builtin:tiny-arith/test.jsonl", help="problems whose questions are the prompts")
    p.add_argument("--prompts", type=int, default=16, help="B: distinct prompts per batch")
    p.add_argument("--group-size", type=int, default=8, help="G: samples per prompt")
    p.add_argument("--prompt-tokens", type=int, default=0, help="cut or repeat every prompt to N tokens (0: as is)")
    p.add_argument("--max-new-tokens", type=int, default=56, help="completion limit")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per engine")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    p.add_argument("--compact-frac", default="0.25",
                   help="hf-loop: comma-separated fractions of finished rows at which the batch is compacted "
                        "(1: never), one hf-loop run each")
    p.add_argument("--loop-ablation", action="store_true",
                   help="hf-loop: also once with each of its savings off (ready-made masks, KV buffers), "
                        "at the first --compact-frac")
    p.add_argument("--keep-freed-memory", default="on", choices=["on", "off"],
                   help="CPU: glibc keeps freed memory for reuse, as the trainer sets it (train.keep_freed_memory)")
    p.add_argument("--device", default="auto", help="device of the HF engines (auto: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vllm: GPU memory fraction")
    p.add_argument("--weight-sync", default="auto", choices=["auto", "weight_transfer", "load_weights"],
                   help="vllm: weight sync path (the engine syncs once at start)")
    p.add_argument("--enforce-eager", action="store_true", help="vllm: no CUDA graphs")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "rollout_throughput.json", help="result JSON")
    args = p.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}; choose from {list(ENGINES)}")
    for name in ("prompts", "group_size", "max_new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from verirl.models import load_causal_lm, load_tokenizer, pick_device
    from verirl.rollout.base import SamplingConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = pick_device(args.device, "--device")
    if args.keep_freed_memory == "on":
        from verirl.cpu_memory import keep_freed_memory

        keep_freed_memory(device)  # as the trainer does (train.keep_freed_memory)
    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, args.dtype, device).eval()
    prompts = load_prompts(args, tokenizer)
    sampling = SamplingConfig(args.group_size, args.max_new_tokens, args.temperature, args.top_p)
    engines = args.engines.split(",")
    started = time.perf_counter()
    runs = hf_runs(model, tokenizer, prompts, sampling, engines, [float(f) for f in args.compact_frac.split(",")],
                   args.loop_ablation)
    more, why = vllm_runs(args, model, tokenizer, prompts, sampling, engines)
    runs.update(more)
    skipped = {e: why for e in engines if e.startswith("vllm") and e not in runs and why}
    results = timed_rounds(runs, args.repeats)
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    header = {"model": args.model, "device": str(device), "threads": args.threads, "prompts": args.prompts,
              "group_size": args.group_size, "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
              "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
              "repeats": args.repeats, "compact_frac": args.compact_frac, "torch": torch.__version__,
              "keep_freed_memory": args.keep_freed_memory}
    table = markdown_table(results, skipped, header)
    print(f"rollout throughput: {args.model} on {device} ({args.threads} thread(s)), {args.prompts} prompts × "
          f"G={args.group_size}, prompts {header['prompt_tokens_mean']:.0f} tokens (mean), ≤{args.max_new_tokens} "
          f"new tokens, temperature {args.temperature:g}, median of {args.repeats}\n")
    print(table)
    total = time.perf_counter() - started
    print(f"\nbenchmark wall time: {total:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["rollout_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
                                    "header": header, "results": results, "skipped": skipped,
                                    "table_markdown": table, "wall_s": total}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
