"""Training on several processes: torchrun's environment, DDP and FSDP2 (``train.parallel``).

``torchrun --nproc_per_node N -m verirl train CONFIG.yaml`` starts N copies of the
trainer. Each one (a *rank*) reads torchrun's environment here, joins the process group
(gloo on CPU, nccl on CUDA) and then, every step:

- takes the same ``rollout.prompts_per_step`` problems from an identically seeded
  problem stream and keeps its slice of ``B / N`` of them (a group never spans ranks,
  so group-relative advantages stay local); samples them with its own RNG
  (``train.seed + rank``), and scores them;
- trains on its rows with the policy wrapped by torch's own engine: DDP
  (``DistributedDataParallel``) or FSDP2 (``fully_shard`` on each decoder layer and on
  the root). Both *average* gradients over ranks; the loss of every micro-batch is
  divided by the counts of the *global* minibatch (:meth:`Dist.global_scale`, the
  sequence and token counts summed over ranks) and multiplied by N
  (:attr:`Dist.grad_factor`), so the averaged gradient is exactly that of one process
  holding the whole global batch;
- reduces its metrics (:func:`reduce_metrics`); rank 0 alone evaluates, prints and
  writes ``metrics.jsonl``, samples and checkpoints.

``train.parallel: none`` is the single-process trainer, untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from verirl.losses import LossScale
from verirl.verifier import ConfigError

PARALLEL = ("none", "ddp", "fsdp2")
#: the variables torchrun sets for every process it starts
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: advantage estimators whose statistics span the whole batch (whitening, batch std): per
#: rank they would be computed on a slice, so they are refused with train.parallel for now
BATCH_STAT_ESTIMATORS = ("reinforce_plus_plus", "reinforce_plus_plus_baseline", "gdpo")


def launch_world(parallel: str, prompts_per_step: int, minibatch_size: int = 0,
                 env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment, checked against
    ``train.parallel`` before anything loads: a parallel run needs torchrun's variables,
    torchrun with more than one process needs ``train.parallel``, and the step's prompts
    (and each minibatch) must split evenly over the ranks."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if parallel == "none":
        if world > 1:
            raise ConfigError(f"train.parallel=none, but torchrun started WORLD_SIZE={world} processes: set "
                              "train.parallel=ddp (or fsdp2) so they train one model together, or run one process")
        return 0, 1, 0
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing:
        raise ConfigError(f"train.parallel={parallel} needs the process group torchrun sets up ({', '.join(missing)} "
                          "not set): launch with `torchrun --nproc_per_node N -m verirl train CONFIG.yaml`, or set "
                          "train.parallel=none")
    if prompts_per_step % world:
        raise ConfigError(f"rollout.prompts_per_step={prompts_per_step} must divide by the world size {world} "
                          f"(train.parallel={parallel}): each rank samples an equal share of whole groups")
    if minibatch_size % world:
        raise ConfigError(f"algo.minibatch_size={minibatch_size} must divide by the world size {world} "
                          f"(train.parallel={parallel}): each rank holds an equal share of every minibatch")
    return int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0"))


@dataclass
class Dist:
    """This process's place in the run; ``parallel == "none"`` is a single process and
    every method is then a no-op returning its input."""

    parallel: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.parallel != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_factor(self) -> float:
        """DDP and FSDP2 average gradients over ranks; each rank's loss (already over the
        global counts) is multiplied by this so the average is the global batch's gradient."""
        return float(self.world_size) if self.enabled else 1.0

    def sum(self, values: Sequence[float], device: torch.device | None = None) -> list[float]:
        """``values`` summed element-wise over ranks (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device or self.comm_device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_sum(self, total: torch.Tensor) -> torch.Tensor:
        """A tensor summed over ranks (a new tensor; :data:`verirl.advantages.AllSum`)."""
        if not self.enabled:
            return total
        out = total.detach().clone()
        torch.distributed.all_reduce(out)
        return out

    def max_int(self, value: int) -> int:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    @property
    def comm_device(self) -> torch.device:
        if self.enabled and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def global_scale(self, scale: LossScale) -> LossScale:
        """A minibatch's loss denominators summed over ranks: each rank holds its share
        of the global minibatch, and every share is divided by the global counts."""
        if not self.enabled:
            return scale
        seqs, tokens = self.sum([scale.num_seqs or 0.0, scale.num_tokens or 0.0])
        return LossScale(seqs, tokens, scale.max_len)

    def share(self, items: Sequence[Any]) -> list[Any]:
        """This rank's contiguous slice of ``items`` (whose length divides by the world size)."""
        n = len(items) // self.world_size
        return list(items[self.rank * n : (self.rank + 1) * n])

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(parallel: str, prompts_per_step: int, minibatch_size: int, device_name: str) -> tuple[Dist, str]:
    """Join torchrun's process group when ``parallel`` is set; returns the :class:`Dist`
    and the device name to train on (``cuda:LOCAL_RANK`` for a CUDA run)."""
    rank, world, local_rank = launch_world(parallel, prompts_per_step, minibatch_size)
    dist = Dist(parallel, rank, world, local_rank)
    if not dist.enabled:
        return dist, device_name
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return dist, device_name


# --------------------------------------------------------------------------- wrapping


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in torch's DistributedDataParallel (its gradients all-reduced, averaged,
    in the backward of the last micro-batch: see :func:`micro_batches`)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # the buffers (rotary tables) are the same on every rank: no broadcast at each forward
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"  # the newer name
    no_buffer_sync = {key: False}
    return DistributedDataParallel(module, device_ids=ids, **no_buffer_sync)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (the classes it, or a transformers
    model inside it such as a critic's backbone, names in ``_no_split_modules``), the
    units FSDP2 shards and gathers one at a time."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard_fsdp2(model: nn.Module, mp_dtype: torch.dtype | None = None) -> nn.Module:
    """``fully_shard`` on each decoder layer, then on the root (which takes the rest:
    embeddings, final norm, LM head). With ``mp_dtype`` the compute runs in it while the
    sharded parameters, gradients and optimizer state stay float32 (FSDP2's
    ``MixedPrecisionPolicy``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


class CallModule(nn.Module):
    """A module whose forward is ``fn(*modules, *args, **kwargs)``: lets DDP wrap a whole
    micro-batch computation (a shared-prompt pass and the completions on its cache, or
    the policy and the critic together) as one forward, so its hooks see one forward per
    backward."""

    def __init__(self, fn: Any, *modules: nn.Module):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*self.parts, *args, **kwargs)


def micro_batches(dist: Dist, chunks: list[list[int]]) -> list[tuple[list[int], float]]:
    """The micro-batches this rank runs, as ``(rows, weight)``: ``chunks`` with weight 1,
    then, so that every rank runs as many forwards and backwards as the busiest one
    (FSDP2 gathers parameters at every forward; DDP reduces at the last backward), extra
    passes over its first row with weight 0 (they add nothing to the gradient)."""
    out = [(rows, 1.0) for rows in chunks]
    most = dist.max_int(len(out))
    out += [(chunks[0][:1], 0.0)] * (most - len(out))
    return out


@contextlib.contextmanager
def sync_on_last(module: nn.Module, last: bool) -> Iterator[None]:
    """DDP: no gradient all-reduce in the backward of any micro-batch but the last
    (``no_sync``); other modules: nothing (FSDP2 reduce-scatters each backward, which is
    correct, only more traffic)."""
    no_sync = getattr(module, "no_sync", None)
    if last or no_sync is None:
        yield
    else:
        with no_sync():
            yield


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP2 model's whole state dict on every rank (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """An FSDP2 optimizer's whole state in the plain ``optimizer.state_dict()`` format
    (parameters numbered in the order of the model's trainable parameters), so the
    checkpoint resumes on any world size or in one process (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The inverse of :func:`full_optimizer_state`: a plain optimizer state dict loaded
    into an FSDP2 model's sharded optimizer (every rank holds the whole dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _trainable_names(model)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    by_name = {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- metrics

#: per-rank values that add up to the global value: losses over the global counts, counts
SUM_KEYS = frozenset({"policy/loss", "policy/pg_loss", "critic/value_loss", "policy/entropy_bonus",
                      "rollout/samples_drawn"})


def reduce_metrics(dist: Dist, metrics: dict[str, Any], rewards: Sequence[float]) -> dict[str, Any]:
    """One step's metrics over all ranks, the same on every rank: sums for the losses
    (each rank's part is over the global counts), counts (``SUM_KEYS``, verifier
    timeouts and errors) and throughputs (``*_tok_s``), the max for ``*_max`` keys, ``perf/*`` times and ``mem/*``
    (the slowest rank, the largest process), and the mean over ranks for the rest (every
    rank holds the same number of completions). ``reward/mean`` and ``reward/std`` are
    recomputed from all ranks' rewards."""
    if not dist.enabled:
        return metrics
    gathered = dist.gather((metrics, list(rewards)))
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for m, _ in gathered for k in m))
    for key in keys:
        values = [m[key] for m, _ in gathered if key in m and m[key] is not None]
        if not values or not all(isinstance(v, (int, float)) for v in values):
            out[key] = values[0] if values else None
        elif key in SUM_KEYS or key.startswith("verifier/") or key.endswith("_tok_s"):
            out[key] = sum(values)
        elif key.endswith("_max") or key.startswith(("perf/", "mem/")) or key == "optim/skipped_updates":
            out[key] = max(values)
        else:  # an int the same on every rank (a count of rounds) stays that int
            out[key] = values[0] if len(set(values)) == 1 else sum(values) / len(values)
    every = [r for _, rs in gathered for r in rs]
    if every:
        mean = sum(every) / len(every)
        out["reward/mean"] = mean
        out["reward/std"] = math.sqrt(sum((r - mean) ** 2 for r in every) / (len(every) - 1)) if len(every) > 1 else 0.0
    return out
