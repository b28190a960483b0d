"""Run by tests/test_distributed.py, in one process or under torchrun: trains with a
*fixed* rollout per step, so N processes and one train on the same completions.

Sampling uses each rank's own RNG (``train.seed + rank``), so two runs of different world
sizes would sample different completions and their updates could not be compared. Here
every rank samples the whole global batch with the same seed (``1000 + step``), scores it,
and keeps its share of the groups; the update then sees exactly the 1-process batch, split.

    python tests/dist_worker.py OUT.pt CONFIG.yaml [key=value ...]
"""

from __future__ import annotations

import sys

import torch

import verirl
from verirl.config import load_config
from verirl.data import build_prompt
from verirl.rollout.base import SamplingConfig, select_rows
from verirl.trainer import Rollout, Trainer, _slice_rewards


class FixedRolloutTrainer(Trainer):
    def rollout(self) -> Rollout:
        c = self.config
        G, W = c.rollout.group_size, self.dist.world_size
        problems = self.stream.take(c.rollout.prompts_per_step)  # the global prompts, on every rank
        prompts = [build_prompt(self.tokenizer, p.question, c.data.prompt_template, c.data.system_prompt)
                   for p in problems]
        rng = torch.get_rng_state()
        torch.manual_seed(1000 + self.step)
        batch = self.engine.generate(prompts, SamplingConfig(G, c.rollout.max_new_tokens, c.rollout.temperature,
                                                             c.rollout.top_p))
        torch.set_rng_state(rng)
        scored = self.reward_fn(self._samples(prompts, problems, batch, G))
        share = len(problems) // W
        first, last = self.dist.rank * share * G, (self.dist.rank + 1) * share * G
        rows = list(range(first, last))
        samples = self._samples(prompts, problems, batch, G)[first:last]
        return Rollout(select_rows(batch, rows), problems[first // G : last // G], samples,
                       _slice_rewards(scored, first, last), 0.0, 0, 0.0, 0.0, len(rows))


def main() -> None:
    out, config_path, *overrides = sys.argv[1:]
    trainer = FixedRolloutTrainer(load_config(config_path, overrides))
    try:
        records = trainer.train()
        model = trainer.infer_model
        if trainer.dist.is_main:
            print("verirl from", verirl.__file__, file=sys.stderr)
            params = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
            torch.save({"records": records, "params": params}, out)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
