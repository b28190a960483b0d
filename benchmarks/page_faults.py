"""Page faults and time of the trainer's rollout and update, with glibc keeping freed
memory (``train.keep_freed_memory``, the default) and without, side by side.

    python benchmarks/page_faults.py                  # configs/tiny.yaml, 12 timed steps each
    python benchmarks/page_faults.py --steps 20 --rounds 3

Each setting trains in its own interpreter (the allocator setting is process-wide),
``--rounds`` times, alternating; each child runs 3 untimed steps, then counts the minor
page faults (``getrusage``) and seconds inside ``Trainer.rollout`` and
``Trainer._grpo_update`` over ``--steps`` steps. Printed: per-step medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]


def child(config: str, keep: bool, steps: int, out_dir: str) -> dict[str, float]:
    """Train ``steps`` timed steps; faults and seconds per step of rollout and update."""
    import torch

    from verirl.config import load_config
    from verirl.trainer import Trainer

    torch.set_num_threads(1)
    cfg = load_config(config, [f"train.steps={steps + 3}", "train.eval_every=0", "train.save_every=0",
                               "train.progress=false", "train.overwrite=true", f"train.output_dir={out_dir}",
                               "train.device=cpu", f"train.keep_freed_memory={str(keep).lower()}"])
    trainer = Trainer(cfg)
    for _ in range(3):
        trainer.train_step()
    totals = {"rollout_faults": 0.0, "rollout_s": 0.0, "update_faults": 0.0, "update_s": 0.0}

    def counted(fn: Any, name: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[f"{name}_faults"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                totals[f"{name}_s"] += time.perf_counter() - start
        return wrapper

    trainer.rollout = counted(trainer.rollout, "rollout")
    trainer._grpo_update = counted(trainer._grpo_update, "update")
    try:
        for _ in range(steps):
            trainer.train_step()
    finally:
        trainer.close()
    return {k: v / steps for k, v in totals.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"), help="GRPO config to train")
    p.add_argument("--steps", type=int, default=12, help="timed steps per child")
    p.add_argument("--rounds", type=int, default=2, help="children per setting, alternating")
    p.add_argument("--child", choices=["keep", "os"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            result = child(args.config, args.child == "keep", args.steps, tmp)
        Path(args.child_out).write_text(json.dumps(result))
        return 0
    results: dict[str, list[dict[str, float]]] = {"keep": [], "os": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in (("keep", "os") if r % 2 == 0 else ("os", "keep")):
                out = Path(tmp) / f"{mode}{r}.json"
                subprocess.run([sys.executable, __file__, "--child", mode, "--child-out", str(out), "--config",
                                args.config, "--steps", str(args.steps)], check=True)
                results[mode].append(json.loads(out.read_text()))
    print(f"{args.config}: {args.steps} steps × {args.rounds} rounds per setting, medians per step\n")
    print("| train.keep_freed_memory | update faults | update s | rollout faults | rollout s |")
    print("|---|---:|---:|---:|---:|")
    for mode, label in (("keep", "true (default)"), ("os", "false")):
        med = {k: statistics.median(r[k] for r in results[mode]) for k in results[mode][0]}
        print(f"| {label} | {med['update_faults']:.0f} | {med['update_s']:.3f} | {med['rollout_faults']:.0f} | "
              f"{med['rollout_s']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
