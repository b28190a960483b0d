"""Training throughput: tokens/s, model FLOPs utilisation, step time and peak memory of
verirl's update, for a model, dtype, micro-batch token budget and world size.

    python benchmarks/train_throughput.py                                   # tiny model, CPU, 1 process
    python benchmarks/train_throughput.py --worlds 1,2                      # 1 vs 2 processes, side by side
    torchrun --nproc_per_node 8 benchmarks/train_throughput.py --parallel fsdp2 \\
        --model Qwen/Qwen2.5-1.5B-Instruct --dtype bfloat16 --fp32-master \\
        --prompt-tokens 256 --completion-tokens 1024 --micro-batch-tokens 32768 --peak-flops 989e12

What it times, per world size (the global batch is the same for every world size):

- ``update``: the trainer's GRPO update (``Trainer.update``: forward, backward, clipping,
  AdamW) on a fixed synthetic batch of ``--prompts × --group-size`` completions, prompts of
  ``--prompt-tokens`` tokens and completions of random lengths up to
  ``--completion-tokens`` (each rank its share of the rows); one untimed warm-up, then the
  median of ``--repeats``. Train tokens/s = all ranks' prompt + completion tokens / that
  time; MFU = 6 · parameters · tokens / time / (``--peak-flops`` per device · world size).
- ``step``: with ``--steps K`` the median ``perf/step_s`` of K real training steps
  (rollout, scoring, update) on the model's data, ``--max-new-tokens`` per completion.
- peak memory per process: CUDA's max allocated, or the peak RSS on CPU (the largest rank).

``--worlds 1,2`` runs itself once per world size (``torch.distributed.run`` with
``--parallel`` for more than one process, rendezvous on 127.0.0.1) and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:tiny-arith")
    p.add_argument("--data", default="builtin:tiny-arith/train.jsonl", help="problems for --steps")
    p.add_argument("--random-init", default="", metavar="HIDDEN:LAYERS",
                   help="a randomly initialised Llama of this width and depth, with --model's tokenizer "
                        "(a model of a size that makes MFU meaningful, with nothing to download)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--fp32-master", action="store_true", help="model.fp32_master_weights: float32 weights, "
                   "compute in --dtype")
    p.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp2"], help="for world sizes above 1")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--completion-tokens", type=int, default=48)
    p.add_argument("--micro-batch-size", type=int, default=0)
    p.add_argument("--micro-batch-tokens", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="also time this many real training steps")
    p.add_argument("--max-new-tokens", type=int, default=48, help="completion limit of the real steps")
    p.add_argument("--peak-flops", type=float, default=0.0, help="peak FLOP/s of one device (MFU; 0: not shown)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--worlds", default="", help="e.g. 1,2: run once per world size, side by side")
    p.add_argument("--json", default="", help="write this run's row (rank 0) to this file")
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare_worlds(args: argparse.Namespace, argv: list[str]) -> None:
    """Each world size in its own launch, one after the other; one table."""
    rows = []
    passthrough = [a for a in argv if not a.startswith("--worlds=")]
    if "--worlds" in passthrough:
        i = passthrough.index("--worlds")
        passthrough = passthrough[:i] + passthrough[i + 2:]
    for world in [int(w) for w in args.worlds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "row.json"
            script = [str(Path(__file__).resolve()), *passthrough, "--json", str(out)]
            if world > 1:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--nnodes=1",
                       "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *script]
            else:
                cmd = [sys.executable, *script]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"world size {world} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(out.read_text()))
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = ("| model | dtype | world | parallel | micro-batch tokens | global batch (rows × tokens) | update s | "
            "train tok/s | MFU | step s | peak mem / process (MiB) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "—"
        step = f"{r['step_s']:.2f}" if r.get("step_s") is not None else "—"
        budget = r["micro_batch_tokens"] or "—"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['world']} | {r['parallel']} | {budget}"
                     f" | {r['rows']} × {r['tokens'] // max(r['rows'], 1)} | {r['update_s']:.3f} | "
                     f"{r['train_tok_s']:.0f} | {mfu} | {step} | {r['peak_mem_mb']:.0f} ({r['mem_kind']}) |")
    return "\n".join(lines)


def synthetic_batch(trainer, args):
    """This rank's share of a fixed global batch: prompts of ``--prompt-tokens`` tokens,
    completions of seeded random lengths, random nonzero advantages."""
    import torch

    from verirl.rollout.base import RolloutBatch, select_rows

    g = torch.Generator().manual_seed(0)
    n, P, T = args.prompts * args.group_size, args.prompt_tokens, args.completion_tokens
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (args.prompts, P), generator=g).repeat_interleave(args.group_size, 0)
    lengths = torch.randint(max(1, T // 4), T + 1, (n,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    completion_ids = torch.where(mask.bool(), torch.randint(3, vocab, (n, T), generator=g), 0)
    advantages = torch.randn(n, 1, generator=g).expand(n, T) * mask
    batch = RolloutBatch(prompt_ids, torch.ones_like(prompt_ids), completion_ids, mask, None, [""] * n,
                         torch.ones(n, dtype=torch.bool))
    rows = trainer.dist.share(list(range(n)))
    d = trainer.device
    local = select_rows(batch, rows)
    local = RolloutBatch(local.prompt_ids.to(d), local.prompt_mask.to(d), local.completion_ids.to(d),
                         local.completion_mask.to(d), None, local.texts, local.finished.to(d))
    return local, advantages[rows].to(d), int(n * P + lengths.sum())


def random_model(args: argparse.Namespace, where: Path) -> str:
    """A random Llama of ``--random-init HIDDEN:LAYERS`` (head dim 64, MLP 4× wide) saved
    with ``--model``'s tokenizer to ``where``; every rank builds the same one (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from verirl.models import load_tokenizer

    hidden, layers = (int(x) for x in args.random_init.split(":"))
    tokenizer = load_tokenizer(args.model)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(where)
    tokenizer.save_pretrained(where)
    return str(where)


def measure(args: argparse.Namespace) -> None:
    import torch

    from verirl.config import config_from_mapping
    from verirl.metrics import peak_rss_mb
    from verirl.trainer import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    parallel = args.parallel if world > 1 else "none"
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args, Path(tmp) / "model") if args.random_init else args.model
        config = config_from_mapping({
            "model": {"name_or_path": model, "dtype": args.dtype, "fp32_master_weights": args.fp32_master},
            "data": {"train": args.data, "eval": None},
            "rollout": {"prompts_per_step": args.prompts, "group_size": args.group_size,
                        "max_new_tokens": max(args.max_new_tokens, args.completion_tokens)},
            "rewards": [{"verifier": "math_answer", "workers": 1}],
            "algo": {"beta": 0.0, "micro_batch_size": args.micro_batch_size,
                     "micro_batch_tokens": args.micro_batch_tokens, "skip_zero_advantage": False},
            "train": {"steps": max(args.steps, 1), "output_dir": f"{tmp}/run", "eval_every": 0, "save_every": 0,
                      "progress": False, "threads": args.threads, "parallel": parallel, "device": args.device,
                      "show_samples_every": 0, "log_samples": 0},
        })
        trainer = Trainer(config)
        try:
            batch, adv, tokens = synthetic_batch(trainer, args)
            cuda = trainer.device.type == "cuda"

            def update() -> float:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                trainer.update(batch, adv, None, None, batch.completion_mask)
                if cuda:
                    torch.cuda.synchronize()
                return time.perf_counter() - t0

            update()  # warm-up
            times = [update() for _ in range(args.repeats)]
            # the slowest rank sets the pace
            update_s = max(trainer.dist.gather(statistics.median(times)))
            step_s = None
            if args.steps:
                step_s = statistics.median(trainer.train_step()["perf/step_s"] for _ in range(args.steps))
            mem = torch.cuda.max_memory_allocated(trainer.device) / 2**20 if cuda else peak_rss_mb()
            mem = max(trainer.dist.gather(mem))
            params = sum(p.numel() for p in trainer.infer_model.parameters())
            flops = 6 * params * tokens / update_s
            name = f"random {args.random_init} ({params / 1e6:.0f} M)" if args.random_init else args.model
            row = {"model": name, "dtype": args.dtype + (" (fp32 master)" if args.fp32_master else ""),
                   "world": world, "parallel": parallel, "micro_batch_tokens": args.micro_batch_tokens,
                   "rows": args.prompts * args.group_size, "tokens": tokens, "params": params,
                   "update_s": update_s, "train_tok_s": tokens / update_s,
                   "mfu": flops / (args.peak_flops * world) if args.peak_flops else None,
                   "step_s": step_s, "peak_mem_mb": mem, "mem_kind": "CUDA allocated" if cuda else "RSS"}
            if trainer.dist.is_main:
                if args.json:
                    Path(args.json).write_text(json.dumps(row))
                else:
                    print(table([row]))
        finally:
            trainer.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worlds:
        compare_worlds(args, argv)
    else:
        measure(args)


if __name__ == "__main__":
    main()
