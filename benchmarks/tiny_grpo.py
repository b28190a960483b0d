"""The main job as a benchmark: GRPO on the embedded tiny model, eval accuracy over time.

Runs ``configs/tiny.yaml`` (or ``--config PATH``, e.g. ``configs/tiny_ppo.yaml``; plus
any ``key=value`` overrides) and prints a table of ``eval/accuracy`` at each eval step
with the wall-clock time since the start (model loading and evals included, no
checkpoints written), then the gain from step 0 and the time it took. The targets:
+15 points within 10 minutes for GRPO, +10 within 15 minutes for PPO, on a 2-core CPU.

    python benchmarks/tiny_grpo.py [--config configs/tiny_ppo.yaml] [key=value ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    from verirl.config import load_config
    from verirl.trainer import Trainer

    path = ROOT / "configs" / "tiny.yaml"
    if argv[:1] == ["--config"]:
        if len(argv) < 2:
            raise SystemExit("--config needs a path to a YAML config")
        path, argv = Path(argv[1]), argv[2:]
    # every run of the benchmark starts afresh in the same directory
    config = load_config(path, [f"train.output_dir=runs/bench_{path.stem}", "train.overwrite=true", *argv])
    start = time.perf_counter()
    trainer = Trainer(config)
    rows = []
    step_times = []
    try:
        # the trainer's loop, one step at a time, to timestamp the evals as they happen
        c = config.train
        rows.append((0, trainer.evaluate()["eval/accuracy"], time.perf_counter() - start))
        while trainer.step < c.steps:
            metrics = trainer.train_step()
            trainer.step += 1
            step_times.append(metrics["perf/step_s"])
            if trainer.step % c.eval_every == 0 or trainer.step == c.steps:
                rows.append((trainer.step, trainer.evaluate()["eval/accuracy"], time.perf_counter() - start))
                print(f"step {rows[-1][0]:4d}  eval/accuracy {rows[-1][1]:.3f}  t={rows[-1][2]:.0f}s", flush=True)
    finally:
        trainer.close()
    print("\n| step | eval/accuracy | wall time (s) |\n| ---: | ---: | ---: |")
    for step, acc, t in rows:
        print(f"| {step} | {acc:.3f} | {t:.0f} |")
    best = max(rows, key=lambda r: r[1])
    print(f"\nstart {rows[0][1]:.3f} → end {rows[-1][1]:.3f} ({100 * (rows[-1][1] - rows[0][1]):+.1f} points) "
          f"in {rows[-1][2]:.0f} s; best {best[1]:.3f} at step {best[0]} ({best[2]:.0f} s); "
          f"median step {sorted(step_times)[len(step_times) // 2]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
